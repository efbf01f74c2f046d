"""What the `regl` commands share: the parser and help classes, and the experiment's options.

The experiment's options are not written here: each is declared once on its settings field
(regl/options.py), and `add_experiment_options` lists the declared groups a command takes.
What is here is about the command line alone: group titles, run options, `--config`.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from regl.errors import ReglError

if TYPE_CHECKING:
    from regl.data.partitions import PartitionSpec
    from regl.fl.settings import ExperimentSettings
    from regl.options import ConfigField

CPUS = 2  # Ray workers of `regl fl` and `regl bench`: one client at a time on each
# the declared groups as the command line lists them; "data" and "training" stay at the top level
GROUP_TITLES = {
    "fill": ("synthetic fill", "what each client adds to its real data before round 1"),
    "warm start": ("warm start", "the server trains the initial global model on balanced images before round 1"),
    "methods": ("imbalance methods", "the clients' loss, the server's strategy, privacy"),
    "node-local data": ("node-local data", "every node trains, fills and evaluates on its own images"),
}


class Parser(argparse.ArgumentParser):
    """Bad input ends in one line, `regl: error: ...`, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"regl: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default except for flags and unset options (empty, none): their help says what they mean."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or str(action.default) in ("", "None"):
            return action.help
        return super()._get_help_string(action)


class CommandListFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """`regl --help`: its epilog's lines (where to start) kept as written."""


@dataclass(frozen=True)
class Command:
    """One subcommand. Its options are added only when it runs, so `regl --help` imports nothing heavy."""

    name: str
    help: str
    description: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def experiment_options() -> list[ConfigField]:
    from regl.fl.settings import ExperimentSettings
    from regl.options import config_fields

    return list(config_fields(ExperimentSettings))


def add_experiment_options(
    parser: argparse.ArgumentParser, groups: tuple[str, ...], skip: tuple[str, ...] = ()
) -> dict[str, argparse._ActionsContainer]:
    """The declared options of `groups` (minus the config keys in `skip`); returns the argparse groups made."""
    from regl.fl.settings import ExperimentSettings
    from regl.options import add_arguments

    defaults = ExperimentSettings().to_config()
    made: dict[str, argparse._ActionsContainer] = {}
    for group in groups:
        options = [cf for cf in experiment_options() if cf.option.group == group and cf.key not in skip]
        if group in GROUP_TITLES:
            made[group] = parser.add_argument_group(*GROUP_TITLES[group])
        add_arguments(made.get(group, parser), options, defaults)
    return made


def add_partition_options(parser: argparse.ArgumentParser) -> None:
    """The label skew and seed, without the dataset: for commands that name their data otherwise."""
    add_experiment_options(parser, ("data",), skip=("dataset",))


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """Where the generator and LoRA run and in what precision; the rules are in regl/compute.py."""
    from regl.compute import DEVICE_HELP, DEVICES, DTYPE_HELP, DTYPES

    parser.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How a simulated run uses the machine and what it prints; not part of the experiment."""
    parser.add_argument("--cpus", type=int, default=CPUS, help="CPUs Ray may use; one client per CPU")
    parser.add_argument(
        "--verbose", action="store_true", help="also show Flower's and Ray's logs (always kept in OUT_DIR/flower.log)"
    )
    parser.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="do not log the run to MLflow (by default: OUT_DIR/mlflow.db, or the server MLFLOW_TRACKING_URI names)",
    )


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="",
        metavar="FILE",
        help="a run config (JSON, or TOML as [tool.flwr.app.config]: kebab-case keys such as num-rounds, "
        "fill-lora-steps) read first; options given beside it win. What `regl bench` starts each run with",
    )


def read_config_file(path: str) -> dict[str, Any]:
    """A run-config file's keys and values; an unknown key or an unreadable file is an error naming it."""
    try:
        text = Path(path).read_text()
        config = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ReglError(f"--config {path}: {exc}") from None
    known = {cf.key for cf in experiment_options()}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ReglError(f"--config {path}: unknown keys {', '.join(unknown)}")
    return config


def config_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the file's values the parser's defaults, so options given on the command line still win.

    Keys without a flag (train-momentum, fill-service) travel as `config_only`.
    """
    from regl.fl.settings import ExperimentSettings

    config = read_config_file(path)
    dests = {action.dest for action in parser._actions}
    options, defaults = {cf.key: cf for cf in experiment_options()}, ExperimentSettings().to_config()
    lacking = [key for key, value in config.items() if options[key].flag and options[key].dest not in dests]
    if changed := [key for key in lacking if config[key] != defaults[key]]:
        raise ReglError(f"--config {path}: {parser.prog} has no option for {', '.join(changed)}")
    given = {options[key].dest: value for key, value in config.items() if options[key].dest in dests}
    flagless = {key: value for key, value in config.items() if options[key].flag is None}
    parser.set_defaults(**given, config_only=flagless)


def partition_spec(args: argparse.Namespace) -> PartitionSpec:
    from regl.data.partitions import PartitionSpec
    from regl.options import config_fields

    return PartitionSpec(
        **{cf.field.name: getattr(args, cf.dest) for cf in config_fields(PartitionSpec)}, seed=args.seed
    )


def experiment_settings(args: argparse.Namespace, out_suffix: str = "") -> ExperimentSettings:
    """The settings the parsed options ask for, checked; options a command lacks keep their defaults.

    The fill store and base become absolute paths (child runs may start elsewhere), and an
    empty --out-dir becomes runs/<run name><out_suffix>.
    """
    from regl.fl.settings import ExperimentSettings

    given = {cf.key: getattr(args, cf.dest) for cf in experiment_options() if cf.flag and hasattr(args, cf.dest)}
    settings = ExperimentSettings.from_config({**getattr(args, "config_only", {}), **given})
    fill = settings.fill
    settings = replace(
        settings,
        fill=replace(
            fill, store=str(Path(fill.store).resolve()), base=str(Path(fill.base).resolve()) if fill.base else ""
        ),
    )
    settings.check()
    if "oracle" in settings.fill.sources and settings.partition.domain == settings.partition.look == "none":
        raise ReglError("--fill oracle passes base images through the true look: give a --domain or a --look")
    if "diffusion" in settings.fill.sources or (settings.warm_start_per_class and settings.init == "synthetic"):
        from regl.generate.generator import check_model_folder

        check_model_folder(settings.fill.base_folder())
        settings.fill.compute()  # --fill-device cuda without a GPU is named here, not in every client
        settings.fill.compute("training")
    if not settings.out_dir:
        settings = replace(settings, out_dir=f"runs/{settings.name}{out_suffix}")
    return settings
