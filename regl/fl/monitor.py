"""The Ratio Loss paper's class-composition monitor (Wang et al., AAAI 2021), on the server.

Each round the server trains copies of the incoming global model on a few auxiliary images
of one class at a time; the change each copy makes to the output layer is that class's
direction. The round's aggregated change of the output layer is, to first order, a
non-negative mix of those directions weighted by how much of each class the clients trained
on, so a non-negative least-squares fit of it estimates the round's class composition.
Once the estimate is imbalanced, Ra (each class's estimated shortfall: mean share / own
share) goes to the clients for the Ratio Loss (regl/train/losses.py). Under partial
participation (`--clients-per-round`) a round's composition is its participants': the
estimate, its true value (their class counts) and Ra follow the clients sampled, as in the
paper's own setting of 20 of 100 clients per round.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from scipy.optimize import nnls

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.train.loop import train
from regl.train.models import output_layer
from regl.train.settings import TrainSettings

AUX_PER_CLASS = 32  # auxiliary images of each class the server holds (from the public pool)
AUX_EPOCHS = 5  # full-batch steps on one class's auxiliary images
DETECTION_COSINE = 0.95  # an estimate less aligned than this with the uniform composition is imbalanced
MAX_RATIO = 100.0  # Ra's cap: a class the fit puts at 0 would weigh without bound (Γ = 100 gives Ra ≈ 50)


def auxiliary_set(pool: ImageDataset, seed: int, per_class: int = AUX_PER_CLASS) -> ImageDataset:
    """`per_class` images of every class from `pool` (all it holds of a class with fewer), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(pool.num_classes):
        indices = np.flatnonzero(pool.y == c)
        if len(indices) == 0:
            raise ReglError(f"the monitor needs public images of every class; the pool has none of class {c}")
        picks.append(rng.choice(indices, size=min(per_class, len(indices)), replace=False))
    return pool.subset(np.sort(np.concatenate(picks)))


def _head(model: torch.nn.Module) -> np.ndarray:
    layer = output_layer(model)
    return torch.cat([layer.weight.detach().flatten(), layer.bias.detach().flatten()]).numpy().astype(np.float64)


def class_directions(model: torch.nn.Module, aux: ImageDataset, settings: TrainSettings) -> np.ndarray:
    """C × P: the output-layer change a few full-batch steps on each class's auxiliary images make."""
    start = _head(model)
    one_class = replace(settings, epochs=AUX_EPOCHS, batch_size=AUX_PER_CLASS * aux.num_classes)
    rows = []
    for c in range(aux.num_classes):
        trained = copy.deepcopy(model)
        train(trained, aux.subset(np.flatnonzero(aux.y == c)), one_class, seed=c)
        rows.append(_head(trained) - start)
    return np.stack(rows)


def estimate_composition(directions: np.ndarray, update: np.ndarray) -> np.ndarray:
    """Shares summing to 1: the non-negative mix of the class directions closest to `update`."""
    weights, _ = nnls(directions.T, update)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ratio_from(composition: np.ndarray) -> np.ndarray:
    """Ra_c = mean share / class c's share: 1 for a balanced class, large for a rare one (capped)."""
    floor = composition.mean() / MAX_RATIO
    return np.minimum(composition.mean() / np.maximum(composition, floor), MAX_RATIO)


class CompositionMonitor:
    """Round by round: `start_round` with the incoming global weights, `end_round` with the aggregated ones."""

    def __init__(self, aux: ImageDataset, settings: TrainSettings, model: torch.nn.Module) -> None:
        """`model`: a model of the run's architecture, which the monitor loads each round's global weights into."""
        self.aux, self.settings, self.model = aux, settings, model
        self.estimates: list[np.ndarray] = []
        self.detected_round: int | None = None
        self._start: np.ndarray | None = None
        self._directions: np.ndarray | None = None

    @property
    def ratio(self) -> np.ndarray | None:
        """Ra from the mean of every round's estimate (the clients' data do not change), once imbalance is detected."""
        return None if self.detected_round is None else ratio_from(np.mean(self.estimates, axis=0))

    def start_round(self, weights: dict[str, torch.Tensor]) -> None:
        """`weights`: the state dict of the global model the round starts from."""
        self.model.load_state_dict(weights)
        self._start = _head(self.model)
        self._directions = class_directions(self.model, self.aux, self.settings)

    def end_round(self, server_round: int, weights: dict[str, torch.Tensor], true_counts: np.ndarray | None) -> dict:
        """This round's estimate from the aggregated `weights` (and its cosine to `true_counts`' composition)."""
        self.model.load_state_dict(weights)
        composition = estimate_composition(self._directions, _head(self.model) - self._start)
        self.estimates.append(composition)
        uniform = np.full(len(composition), 1.0 / len(composition))
        if self.detected_round is None and cosine(composition, uniform) < DETECTION_COSINE:
            self.detected_round = server_round
        record = {"monitor_composition": composition.tolist(), "monitor_imbalance_detected": self.detected_round}
        if true_counts is not None and true_counts.sum() > 0:
            record["monitor_cosine"] = cosine(composition, true_counts / true_counts.sum())
        return record
