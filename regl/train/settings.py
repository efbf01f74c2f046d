"""Local training settings, kept free of torch so the `regl` command can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    """NIID-Bench's local optimiser: SGD with momentum 0.9, lr 0.01, batch 64."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
