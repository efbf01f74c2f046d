"""Precision and recall of generated images (Kynkäänniemi et al. 2019): fidelity and diversity apart.

The Fréchet distance folds both into one number: a generator that draws one perfect pose of
each class can score like one that draws every pose a little blurred. Here each set's
manifold is the union of balls around its samples, each ball reaching the sample's k-th
nearest neighbour in the same set. Precision is the fraction of generated samples inside
the real manifold (are they realistic?); recall is the fraction of real samples inside the
generated manifold (is every kind of real image drawn?).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from regl.errors import ReglError

if TYPE_CHECKING:  # torch loads only when distances are computed: `regl eval-generator --help` reads DEFAULT_K
    import torch

DEFAULT_K = 3  # the paper's choice
CHUNK_ELEMENTS = 1 << 22  # distances held at once (16 MiB): 10,000 × 10,000 goes through in slices


def _distance_slices(queries: np.ndarray, points: np.ndarray) -> Iterator[torch.Tensor]:
    """Euclidean distances from slices of `queries` to all `points`.

    Computed directly rather than through ‖a‖² + ‖b‖² − 2ab, whose rounding makes a point's
    distance to itself slightly positive and could put it outside a ball of radius 0.
    """
    import torch

    q, p = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (queries, points))
    rows = max(1, CHUNK_ELEMENTS // len(p))
    for start in range(0, len(q), rows):
        yield torch.cdist(q[start : start + rows], p, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(points: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Each point's distance to its k-th nearest other point: the radius of its ball."""
    if len(points) <= k:
        raise ReglError(f"k-nearest-neighbour balls with k = {k} need more than {k} samples, got {len(points)}")
    # the nearest of the k + 1 is the point itself, at distance 0
    slices = _distance_slices(points, points)
    return np.concatenate([d.topk(k + 1, dim=1, largest=False).values[:, k].numpy() for d in slices])


def fraction_inside(queries: np.ndarray, points: np.ndarray, radii: np.ndarray) -> float:
    """The fraction of `queries` within `radii[i]` of some `points[i]`: inside the union of the balls."""
    if len(queries) == 0 or len(points) == 0:
        raise ReglError(f"precision and recall need samples on both sides, got {len(queries)} and {len(points)}")
    inside = [(d <= d.new_tensor(radii)).any(dim=1).numpy() for d in _distance_slices(queries, points)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = DEFAULT_K) -> tuple[float, float]:
    """(precision, recall) of `generated` against `real`, both N×D feature arrays."""
    precision = fraction_inside(generated, real, knn_radii(real, k))
    recall = fraction_inside(real, generated, knn_radii(generated, k))
    return precision, recall


@dataclass(frozen=True)
class PrecisionRecall:
    k: int
    samples_per_class: list[int]  # real and generated alike
    per_class_precision: list[float]
    per_class_recall: list[float]
    precision: float  # over the samples of every class pooled
    recall: float


def class_precision_recall(
    real: np.ndarray,
    real_labels: np.ndarray,
    generated: np.ndarray,
    generated_labels: np.ndarray,
    class_names: tuple[str, ...],
    k: int = DEFAULT_K,
) -> PrecisionRecall:
    """Per class, and over all classes pooled, on equal numbers of real and generated samples.

    Each class uses the first n of its samples on each side, n the smaller count, as the
    paper compares equal-sized sets: more generated than real samples would cover more of
    the real manifold and raise recall with no better generator.
    """
    counts, precisions, recalls, real_picks, generated_picks = [], [], [], [], []
    for c, name in enumerate(class_names):
        real_idx, generated_idx = np.flatnonzero(real_labels == c), np.flatnonzero(generated_labels == c)
        n = min(len(real_idx), len(generated_idx))
        if n <= k:
            raise ReglError(
                f"precision and recall with k = {k} need more than {k} real and generated samples of class "
                f"{name!r}, got {len(real_idx)} real and {len(generated_idx)} generated"
            )
        real_picks.append(real_idx[:n])
        generated_picks.append(generated_idx[:n])
        precision, recall = precision_recall(real[real_idx[:n]], generated[generated_idx[:n]], k)
        counts.append(n)
        precisions.append(precision)
        recalls.append(recall)
    precision, recall = precision_recall(
        real[np.concatenate(real_picks)], generated[np.concatenate(generated_picks)], k
    )
    return PrecisionRecall(k, counts, precisions, recalls, precision, recall)
