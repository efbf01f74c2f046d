"""Near-copies of training images among generated ones: the privacy audit of a fill's generator.

A generator fine-tuned on a client's images (its LoRA, the federation's adapter) may draw some
of them back, and its images go into every round's training, where they are no more private
than the images they copy. The criterion is Carlini et al. 2023 ("Extracting Training Data
from Diffusion Models", USENIX Security; §5.1, their CIFAR-10 models): a generated image x̂
is a near-copy of its nearest training image x when

    ℓ(x̂) = ‖x̂ − x‖₂ / (α · mean over y in S(x̂) of ‖x̂ − y‖₂) < δ,

S(x̂) being the n training images nearest x̂ (x among them), with their α = 0.5 and n = 50,
and δ = 1 here: x̂ is flagged when it is more than twice as close to one training image as to
the 50 around it on average. An image in a dense region (one of many similar shirts) is not
flagged for being close to all of them; one that sits on a single training image is. Distances
are L2 in pixel space on [0, 1] images, which is reasonable for 28×28 images.

The same rule scores real held-out images that were never trained on against the same training
images: their flagged fraction is the rule's false-positive floor on this data (duplicates
within a dataset exist), the number a generated fraction is read against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from regl.errors import ReglError

ALPHA = 0.5  # Carlini et al. 2023
NEIGHBOURS = 50  # n, ibid.
THRESHOLD = 1.0  # δ: flagged when ℓ < δ
CHUNK_ELEMENTS = 1 << 24  # distances held at once (64 MiB of float32): 60,000 training images, ~280 rows a slice
SAMPLE_STRIDE = 8  # see _smallest
CRITERION = (
    "Carlini et al. 2023 (Extracting Training Data from Diffusion Models, §5.1): flagged when the L2 distance "
    "to the nearest training image is below α × threshold × the mean L2 distance to the n nearest (pixels in [0, 1])"
)


def _flat(images: np.ndarray, name: str) -> np.ndarray:
    """`images` (uint8 N×H×W×C) as float32 rows in [0, 1]."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ReglError(f"{name} images must be uint8 N×H×W×C, got {images.dtype} {images.shape}")
    if not len(images):
        raise ReglError(f"the near-copy audit needs {name} images, got none")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@dataclass(frozen=True)
class NearCopyScores:
    """Per image of a set scored against training images: the nearest distance and the criterion's ratio ℓ,
    with the α and n it was taken with."""

    nearest: np.ndarray
    ratio: np.ndarray
    alpha: float
    neighbours: int

    @staticmethod
    def pooled(parts: Sequence[NearCopyScores]) -> NearCopyScores:
        """Several sets' scores as one (each client's images against its own training images)."""
        if not parts:
            raise ReglError("no near-copy scores to pool")
        if len({(p.alpha, p.neighbours) for p in parts}) > 1:
            raise ReglError("near-copy scores taken with different α or n do not pool")
        return NearCopyScores(
            np.concatenate([p.nearest for p in parts]),
            np.concatenate([p.ratio for p in parts]),
            parts[0].alpha,
            parts[0].neighbours,
        )


def _smallest(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's n smallest values, ascending, and the column of the smallest.

    A full partition of every 60,000-long row costs as much as the matrix product; the n-th
    smallest of every SAMPLE_STRIDE-th column bounds the row's n-th smallest from above, so only
    the few hundred columns under that bound are sorted.
    """
    stride = max(1, min(SAMPLE_STRIDE, values.shape[1] // n))
    bound = np.partition(values[:, ::stride], n - 1, axis=1)[:, n - 1]
    rows, columns = np.nonzero(values <= bound[:, None])  # at least n in every row
    order = np.lexsort((values[rows, columns], rows))
    counts = np.bincount(rows, minlength=len(values))
    firsts = np.cumsum(counts) - counts
    picked = order[firsts[:, None] + np.arange(n)]
    return values[rows[picked], columns[picked]], columns[order[firsts]]


def near_copy_scores(
    images: np.ndarray, training: np.ndarray, alpha: float = ALPHA, neighbours: int = NEIGHBOURS
) -> NearCopyScores:
    """Each image's nearest training distance and ℓ, the ratio the criterion thresholds.

    Slices of images go through one matrix product each (‖a‖² + ‖b‖² − 2ab); the distance to the
    nearest training image is then recomputed directly, so an exact copy reads 0 rather than the
    product's rounding. With fewer than n training images all of them are the n; an image on n training
    images at once (duplicates) has ℓ = 0/0, read as 0: a copy.
    """
    if not alpha > 0 or neighbours < 2:
        raise ReglError(f"the near-copy criterion needs α > 0 and n ≥ 2, got α = {alpha}, n = {neighbours}")
    queries, points = _flat(images, "generated or reference"), _flat(training, "training")
    if images.shape[1:] != training.shape[1:]:
        raise ReglError(f"images of {images.shape[1:]} cannot be compared with training images of {training.shape[1:]}")
    n = min(neighbours, len(points))
    point_norms = np.einsum("ij,ij->i", points, points)
    rows = max(1, CHUNK_ELEMENTS // len(points))
    nearest, ratio = [], []
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        squared = chunk @ points.T
        squared *= -2.0
        squared += point_norms
        smallest, closest = _smallest(squared, n)
        smallest += np.einsum("ij,ij->i", chunk, chunk)[:, None]
        mean = np.sqrt(np.maximum(smallest, 0.0)).mean(axis=1)
        exact = np.linalg.norm(points[closest] - chunk, axis=1)
        nearest.append(exact)
        ratio.append(np.divide(exact, alpha * mean, out=np.zeros_like(mean), where=mean > 0))
    return NearCopyScores(np.concatenate(nearest), np.concatenate(ratio), alpha, neighbours)


def audit_record(generated: NearCopyScores, reference: NearCopyScores, threshold: float = THRESHOLD) -> dict[str, Any]:
    """The audit's summary: the fraction of generated images flagged beside the reference's (the floor)."""
    if (generated.alpha, generated.neighbours) != (reference.alpha, reference.neighbours):
        raise ReglError("generated and reference images must be scored with the same α and n")
    return {
        "criterion": CRITERION,
        "alpha": generated.alpha,
        "neighbours": generated.neighbours,
        "threshold": threshold,
        "generated": len(generated.ratio),
        "reference": len(reference.ratio),
        "flagged": float(np.mean(generated.ratio < threshold)),
        "reference_flagged": float(np.mean(reference.ratio < threshold)),
        "median_nearest": float(np.median(generated.nearest)),
        "reference_median_nearest": float(np.median(reference.nearest)),
        "median_ratio": float(np.median(generated.ratio)),
        "reference_median_ratio": float(np.median(reference.ratio)),
    }


def near_copy_audit(
    generated: np.ndarray,
    training: np.ndarray,
    reference: np.ndarray,
    alpha: float = ALPHA,
    neighbours: int = NEIGHBOURS,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Which generated images are near-copies of `training` images, against real `reference` images
    (held out, in the same look) scored by the same rule; all uint8 N×H×W×C."""
    return audit_record(
        near_copy_scores(generated, training, alpha, neighbours),
        near_copy_scores(reference, training, alpha, neighbours),
        threshold,
    )
