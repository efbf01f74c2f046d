"""One cell of a bench: an arm at a seed, run as its own `regl` child in its own folder."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from regl.fl.settings import ExperimentSettings


@dataclass(frozen=True)
class Cell:
    """One arm × seed: the child run's settings (its folder is their out_dir) and command line."""

    arm: str
    seed: int
    settings: ExperimentSettings
    argv: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return Path(self.settings.out_dir)

    @property
    def command(self) -> str:
        return "regl " + shlex.join(self.argv)
