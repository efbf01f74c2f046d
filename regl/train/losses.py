"""Local losses for a client with skewed classes; each is built from the client's class counts.

The counts are those of the set the client trains on: its real images, plus its synthetic
fill when one is on. A loss that re-weights by class then corrects only the skew the fill
left, instead of correcting a skew the fill already removed a second time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from regl.errors import ReglError
from regl.train.settings import LOSSES

FOCAL_GAMMA = 2.0  # Lin et al. 2017
CLASS_BALANCED_BETA = 0.9999  # Cui et al. 2019, effective number of samples
FEDLC_TAU = 1.0  # Zhang et al. 2022
FEDRS_ALPHA = 0.5  # Li & Zhan 2021: the scale of a missing class's logit
RATIO_ALPHA, RATIO_BETA = 1.0, 0.1  # Wang et al. 2021's official code

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ReglError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")


def effective_number_weights(counts: np.ndarray, beta: float = CLASS_BALANCED_BETA) -> np.ndarray:
    """(1 − β) / (1 − β^n_c), scaled so the classes the client holds average 1; 0 for classes it lacks."""
    counts = np.asarray(counts, dtype=np.float64)
    held = counts > 0
    weights = np.zeros_like(counts)
    weights[held] = (1.0 - beta) / (1.0 - np.power(beta, counts[held]))
    return weights * held.sum() / weights.sum()


def ratio_weights(ratio: np.ndarray, alpha: float = RATIO_ALPHA, beta: float = RATIO_BETA) -> np.ndarray:
    """Ratio Loss's class weights α + β·Ra_c from the monitor's Ra (regl/fl/monitor.py)."""
    return alpha + beta * np.asarray(ratio, dtype=np.float64)


def _weighted_ce(weights: np.ndarray) -> Loss:
    """Per-sample weights w_{y_i}, mean over the batch (not divided by Σw, so a weight scales its class's step)."""
    w = torch.tensor(weights, dtype=torch.float32)
    return lambda logits, y: (w[y] * F.cross_entropy(logits, y, reduction="none")).mean()


def _focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return (-((1.0 - log_p.exp()) ** FOCAL_GAMMA) * log_p).mean()


def _shifted_ce(shift: np.ndarray) -> Loss:
    """Cross-entropy on logits + a per-class shift (balanced softmax, FedLC's calibration)."""
    s = torch.tensor(shift, dtype=torch.float32)
    return lambda logits, y: F.cross_entropy(logits + s, y)


def _scaled_ce(scale: np.ndarray) -> Loss:
    """Cross-entropy on logits × a per-class scale (FedRS's restricted softmax)."""
    s = torch.tensor(scale, dtype=torch.float32)
    return lambda logits, y: F.cross_entropy(logits * s, y)


def proximal_term(model: torch.nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's μ/2·‖w − w_global‖², `anchor` being the global model's parameters in `model.parameters()` order."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))


def make_loss(name: str, counts: np.ndarray, ratio: np.ndarray | None = None) -> Loss:
    """The loss `name` for a client whose training set has `counts` images of each class.

    `ratio` is the Ratio Loss's Ra from the server's monitor; None (no imbalance detected
    yet) makes the Ratio Loss plain cross-entropy.
    """
    check_loss(name)
    counts = np.asarray(counts, dtype=np.float64)
    clamped = np.maximum(counts, 1.0)  # log and powers of 0 have no meaning here
    if name == "ce" or (name == "ratio" and ratio is None):
        return F.cross_entropy
    if name == "focal":
        return _focal
    if name == "class-balanced":
        return _weighted_ce(effective_number_weights(counts))
    if name == "balanced-softmax":
        return _shifted_ce(np.log(clamped))
    if name == "fedlc":
        return _shifted_ce(-FEDLC_TAU * clamped**-0.25)
    if name == "fedrs":
        return _scaled_ce(np.where(counts > 0, 1.0, FEDRS_ALPHA))
    if len(ratio) != len(counts):
        raise ReglError(f"the monitor's ratio has {len(ratio)} classes, the client {len(counts)}")
    return _weighted_ce(ratio_weights(ratio))
