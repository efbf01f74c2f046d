"""The `regl` command: one module per group of subcommands, each adding its options and running them.

- options.py: what the commands share (parser, help, the experiment's options)
- argv.py: the inverse of parsing, which starts child runs
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
from regl.cli.options import Command, HelpFormatter, Parser
from regl.errors import ReglError

GROUPS = (data, federated, generation, evaluation, training, serving)
COMMANDS: dict[str, Command] = {command.name: command for group in GROUPS for command in group.COMMANDS}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `regl` parser with the options of `command` alone; the others list their name and help only."""
    parser = Parser(
        prog="regl",
        formatter_class=HelpFormatter,
        description="ReGL: recover the global label distribution on skewed federated clients.",
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for spec in COMMANDS.values():
        subparser = sub.add_parser(
            spec.name, help=spec.help, description=spec.description, formatter_class=HelpFormatter
        )
        if spec.name == command:
            spec.add_options(subparser)
            subparser.set_defaults(run=spec.run)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `regl NAME` on its own: what child command lines are built against."""
    spec = COMMANDS[name]
    parser = Parser(prog=f"regl {name}", description=spec.description, formatter_class=HelpFormatter)
    spec.add_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `regl ARGV` (default: sys.argv[1:]) and return its exit code; bad input gives 2 and one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its torchvision notice is noise here
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as stop:  # --help, or a parser error already printed
        return int(stop.code or 0)
    args.argv = argv  # a command that re-runs itself in the sandbox passes these on
    try:
        return args.run(args)
    except ReglError as exc:
        print(f"regl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regl: interrupted", file=sys.stderr)
        return 130
