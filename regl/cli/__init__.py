"""The `regl` command: one module per group of subcommands, each adding its options and running them.

- options.py: what the commands share (parser, help, the experiment's declared options, --config)
- data.py: partition
- federated.py: fl, bench, deploy, centralized, sandbox
- generation.py: generate, bench-generator
- evaluation.py: eval-generator
- training.py: finetune, pretrain-base
- serving.py: serve, bench-service

Only the options of the command being run are added, and heavy imports (torch, Flower,
FastAPI) happen inside the commands, so `regl --help` and `regl partition --help` are fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from regl.cli import data, evaluation, federated, generation, serving, training
from regl.cli.options import Command, CommandListFormatter, HelpFormatter, Parser, config_defaults
from regl.errors import ReglError
from regl.stopping import stop_on_signals, stop_reason


class ConfigFile(argparse.ArgumentParser):
    """Reads `--config FILE` alone, before the command's parser exists."""

    def __init__(self) -> None:
        super().__init__(add_help=False)
        self.add_argument("--config", default="")


START_HERE = """start here:
  regl fl --fill diffusion          a federated run on the shipped data, each client filled (minutes)
  regl bench --arms none,diffusion  the same with and without the fill, side by side
  regl generate --class 7 -n 16 --out samples/
                                    images of one class from the shipped base
  regl serve                        a node's local generation service, its page at http://127.0.0.1:8000/
`regl COMMAND --help` explains each command's options."""

GROUPS = (data, federated, generation, evaluation, training, serving)
COMMANDS: dict[str, Command] = {command.name: command for group in GROUPS for command in group.COMMANDS}


def build_parser(command: str | None = None, config: str = "") -> argparse.ArgumentParser:
    """The `regl` parser with the options of `command` alone; the others list their name and help only.

    `config`: a run-config file whose values become the command's defaults (`--config`).
    """
    parser = Parser(
        prog="regl",
        formatter_class=CommandListFormatter,
        description="ReGL: recover the global label distribution on skewed federated clients.",
        epilog=START_HERE,
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for spec in COMMANDS.values():
        subparser = sub.add_parser(
            spec.name, help=spec.help, description=spec.description, formatter_class=HelpFormatter
        )
        if spec.name == command:
            spec.add_options(subparser)
            subparser.set_defaults(run=spec.run)
            if config and "config" in {action.dest for action in subparser._actions}:
                config_defaults(subparser, config)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `regl NAME` on its own."""
    spec = COMMANDS[name]
    parser = Parser(prog=f"regl {name}", description=spec.description, formatter_class=HelpFormatter)
    spec.add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `regl ARGV` (default: sys.argv[1:]) and return its exit code; bad input gives 2 and one line.

    SIGTERM stops a command as Ctrl-C does (regl/stopping.py): one line, and 128 + the signal's number.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its torchvision notice is noise here
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    config, _ = ConfigFile().parse_known_args(argv)
    try:
        args = build_parser(command, config.config).parse_args(argv)
    except SystemExit as stop:  # --help, or a parser error already printed
        return int(stop.code or 0)
    except ReglError as exc:  # an unreadable --config
        print(f"regl: error: {exc}", file=sys.stderr)
        return 2
    args.argv = argv  # a command that re-runs itself in the sandbox passes these on
    try:
        with stop_on_signals():  # SIGTERM stops a command as Ctrl-C does: regl/stopping.py
            return args.run(args)
    except ReglError as exc:
        print(f"regl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        name, code = stop_reason(stop)
        print(f"regl: stopped ({name})", file=sys.stderr)
        return code
