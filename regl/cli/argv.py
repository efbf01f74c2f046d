"""Command lines for child runs: the exact inverse of parsing, so no option is dropped on the way.

`regl bench` starts one `regl fl` per arm and seed, `regl deploy` one `regl serve` per node;
both build those command lines here from settings objects rather than by hand.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from regl.cli.options import EXPERIMENT_OPTIONS

if TYPE_CHECKING:
    from regl.fl.settings import ExperimentSettings


def settings_to_argv(settings: ExperimentSettings, command: str = "fl", **run_options: Any) -> list[str]:
    """`[command, options...]` that parse back to `settings`: how child runs are started.

    Options at their defaults are left out; `run_options` are the command's other options by
    dest (e.g. cpus=4). Settings the command has no option for raise ValueError.
    """
    from regl.cli import command_parser
    from regl.fl.settings import ExperimentSettings

    if settings.partition.seed != settings.seed:
        raise ValueError(
            f"the partition seed ({settings.partition.seed}) is --seed ({settings.seed}) on the "
            "command line; they cannot differ"
        )
    config, default = settings.to_config(), ExperimentSettings().to_config()
    changed = {key for key in config if config[key] != default[key]}
    inexpressible = changed - set(EXPERIMENT_OPTIONS.values())
    if inexpressible:
        raise ValueError(f"regl {command} has no option for {', '.join(sorted(inexpressible))}")
    values = {dest: config[key] for dest, key in EXPERIMENT_OPTIONS.items() if key in changed}
    return [command, *options_to_argv(command_parser(command), {**values, **run_options})]


def options_to_argv(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> list[str]:
    """The options that make `parser` parse to `values` (by dest), leaving out those at their default.

    A dest the parser has no option for raises ValueError.
    """
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"{parser.prog} has no option for {', '.join(unknown)}")
    argv: list[str] = []
    for dest, value in values.items():
        action = actions[dest]
        if value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a flag (store_true / store_false) not at its default
            argv.append(flag)
        else:
            text = str(value)
            argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return argv
