"""Local training settings, kept free of torch so the `regl` command can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass

from regl.options import option

LOSSES = ("ce", "focal", "class-balanced", "balanced-softmax", "fedlc", "fedrs", "ratio")


@dataclass(frozen=True)
class TrainSettings:
    """NIID-Bench's local optimiser: SGD with momentum 0.9, lr 0.01, batch 64."""

    epochs: int = option(1, "local epochs per round", flag="--local-epochs", ge=1, group="training")
    batch_size: int = option(64, "local batch size", flag="--batch-size", ge=1, group="training")
    lr: float = option(0.01, "SGD learning rate", flag="--lr", gt=0, group="training")
    momentum: float = option(0.9, "SGD momentum", flag=None, ge=0)
