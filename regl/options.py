"""Options declared once: a settings field's metadata names its flag, help, choices and range.

Every run option is a field of a torch-free settings dataclass (`ExperimentSettings` and the
`PartitionSpec`, `TrainSettings`, `FillSettings`, `LoraSettings` inside it or beside it),
declared with `option(...)`. From that one declaration come the `regl` command's argparse
options (regl/cli/options.py), the flat kebab-case Flower run config (`config_fields`), the
range checks every entry point applies (`check_ranges`) and the service's request models
(service/schemas.py). A field declared without `option` is not an option: it is set by code.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from regl.errors import ReglError


@dataclass(frozen=True)
class Option:
    """How a settings field is offered: `flag` None keeps it out of the command line (run config only).

    `negate`: a bool option whose flag turns it off. `legacy`: values older run configs
    wrote for it, and what they mean now. `group`: the argparse group it is listed under.
    `request`: a node's service takes it in its request body. `ge`/`gt`/`le`: the range
    every entry point enforces.
    """

    help: str
    flag: str | None = ""
    short: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    negate: bool = False
    group: str = ""
    request: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    pattern: str | None = None
    legacy: dict | None = None


def option(default: Any, help: str, **how: Any) -> Any:
    """A dataclass field with its option declaration; `how` are `Option`'s fields."""
    return field(default=default, metadata={"option": Option(help=help, **how)})


def declaration(f: Field) -> Option | None:
    return f.metadata.get("option")


def default_of(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


@dataclass(frozen=True)
class ConfigField:
    """One option as it travels: `key` in the flat run config, `path` into the nested settings."""

    key: str
    path: tuple[str, ...]
    field: Field
    option: Option

    @property
    def flag(self) -> str | None:
        """The command-line flag; the config key as a flag unless the declaration names another (or None)."""
        if self.option.flag is None:
            return None
        return self.option.flag or f"--{self.key}"

    @property
    def dest(self) -> str:
        return (self.flag or f"--{self.key}").removeprefix("--").replace("-", "_")

    def value_in(self, settings: Any) -> Any:
        for name in self.path:
            settings = getattr(settings, name)
        return settings

    @property
    def kind(self) -> type:
        return type(default_of(self.field))


def config_fields(cls: type) -> Iterator[ConfigField]:
    """Every option of `cls`, nested settings included, with its flat key.

    A nested settings field named N contributes its options as `N-<option>`; the nested
    class's BARE_KEY option takes N alone (FillSettings.mode is `fill`).
    """
    for f in fields(cls):
        if f.default_factory is not MISSING and is_dataclass(nested := f.default_factory()):
            for inner in config_fields(type(nested)):
                key = f.name if inner.key == getattr(nested, "BARE_KEY", None) else f"{f.name}-{inner.key}"
                yield ConfigField(key, (f.name, *inner.path), inner.field, inner.option)
        elif (declared := declaration(f)) is not None:
            yield ConfigField(f.name.replace("_", "-"), (f.name,), f, declared)


def request_options(cls: type) -> list[str]:
    """The fields of `cls` declared `request=True`: what a request to a node's service carries of them."""
    return [cf.field.name for cf in config_fields(cls) if cf.option.request]


def check_ranges(settings: Any) -> None:
    """Raise on the first option outside its declared range or choices, naming its flag (or config key)."""
    for cf in config_fields(type(settings)):
        check_value(cf, cf.value_in(settings))


def check_value(cf: ConfigField, value: Any) -> None:
    name = cf.flag or cf.key
    o = cf.option
    if o.choices is not None and value not in o.choices:
        raise ReglError(f"unknown {name} {value!r}; use one of {', '.join(map(str, o.choices))}")
    if o.pattern is not None and not re.fullmatch(o.pattern, value):
        raise ReglError(f"{name} {value!r} does not match {o.pattern}")
    bounds = [(o.ge, "≥", lambda v, b: v >= b), (o.gt, ">", lambda v, b: v > b), (o.le, "≤", lambda v, b: v <= b)]
    for bound, sign, holds in bounds:
        if bound is not None and not holds(value, bound):  # NaN fails every comparison
            raise ReglError(f"{name} must be {sign} {bound:g}, got {value}")


def cast(cf: ConfigField, value: Any) -> Any:
    """A run-config or file value as the field's type: "true" is a bool, "3" an int where the field is one."""
    if cf.option.legacy and value in cf.option.legacy:
        return cf.option.legacy[value]
    if cf.kind is bool and isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    try:
        return cf.kind(value)
    except (TypeError, ValueError):
        raise ReglError(f"{cf.key}: {value!r} is not a {cf.kind.__name__}") from None


def add_arguments(
    container: argparse._ActionsContainer,
    options: list[ConfigField],
    defaults: dict[str, Any],
    on_add: Callable[[ConfigField], None] | None = None,
) -> None:
    """One argparse option per declared field with a flag; `defaults` by config key."""
    for cf in options:
        if cf.flag is None:
            continue
        o, default = cf.option, defaults[cf.key]
        if cf.kind is bool:
            action = "store_false" if o.negate else "store_true"
            container.add_argument(cf.flag, *o.short, dest=cf.dest, action=action, default=default, help=o.help)
        else:
            container.add_argument(
                cf.flag,
                *o.short,
                dest=cf.dest,
                type=cf.kind,
                default=default,
                choices=o.choices,
                metavar=o.metavar,
                help=o.help,
            )
        if on_add is not None:
            on_add(cf)
