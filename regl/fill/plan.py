"""How many synthetic images of each class a client adds, and from which source.

A client with n real images adds S = supplement·n synthetic ones (rounded half up). They
go to the classes furthest below the target composition after the fill, target·(n + S),
in proportion to each class's shortfall; each class's share is then split among the
sources by the source mix. Every split uses largest remainders, so the integers always
add up exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from regl.errors import ReglError

# public-equal is no generator: real public-pool images at exactly the planned counts, the
# reference a generator is measured against at equal count. oracle: the base's images passed
# through the client's true domain transform, a ceiling no real client can reach.
SOURCES = ("diffusion", "noise", "mixup", "public-equal", "oracle")
# Sources newer than the synthetic stores already made: a plan names them only when it uses
# them, so the store keys of plans without them stay what they were.
NAMED_WHEN_USED = ("oracle",)


@dataclass(frozen=True)
class FillPlan:
    """Per-class counts for every source in SOURCES (int64 arrays of one length)."""

    counts: dict[str, np.ndarray]

    def total(self) -> int:
        return int(self.per_class().sum())

    def per_class(self) -> np.ndarray:
        return sum(self.counts[source] for source in SOURCES)

    def to_json(self) -> dict:
        """Plain lists, for manifests and run summaries."""
        return {
            "counts": {
                source: self.counts[source].tolist()
                for source in SOURCES
                if source not in NAMED_WHEN_USED or self.counts[source].any()
            },
            "per_class": self.per_class().tolist(),
            "total": self.total(),
        }


def split_exactly(total: int, weights: np.ndarray) -> np.ndarray:
    """Non-negative integers proportional to `weights` that sum to exactly `total`.

    Largest remainder method; ties go to the lower index. Quotas are rounded to 9
    decimals first so that float noise (2.9999999 against 3) cannot reorder them.
    `weights` must be non-negative with a positive sum; a zero weight always gets 0.
    """
    weights = np.asarray(weights, dtype=np.float64)
    quotas = np.round(total * weights / weights.sum(), 9)
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def parse_source_mix(text: str) -> dict[str, float]:
    """Parse 'diffusion=3,noise=1': comma-separated source=weight pairs.

    Weights are relative (75:25 and 3:1 mean the same); a source left out gets 0.
    Returns a weight for every source in SOURCES.
    """
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name or not value:
            raise ReglError(
                f"source mix {text!r}: write source=weight pairs separated by commas, e.g. diffusion=3,noise=1"
            )
        if name in mix:
            raise ReglError(f"source mix {text!r} names {name!r} twice")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ReglError(f"source mix {text!r}: weight {value!r} of {name!r} is not a number") from None
    check_source_mix(mix)
    return {source: mix.get(source, 0.0) for source in SOURCES}


def check_source_mix(mix: dict[str, float]) -> None:
    unknown = sorted(set(mix) - set(SOURCES))
    if unknown:
        raise ReglError(f"unknown source {unknown[0]!r} in the source mix; use {', '.join(SOURCES)}")
    if not all(math.isfinite(w) and w >= 0 for w in mix.values()):
        raise ReglError(f"source mix weights must be finite and non-negative, got {mix}")
    if sum(mix.values()) <= 0:
        raise ReglError("the source mix needs at least one source with a positive weight")


def plan_fill(
    class_counts: np.ndarray, supplement: float, source_mix: dict[str, float], target: np.ndarray | None = None
) -> FillPlan:
    """Synthetic images per source and class for a client holding `class_counts`.

    `supplement` is the fraction of the client's real image count to add; `target` is
    the wanted composition over classes after the fill (default uniform, normalised here).
    """
    class_counts = np.asarray(class_counts)
    if class_counts.ndim != 1 or len(class_counts) == 0 or (class_counts < 0).any():
        raise ReglError(f"class counts must be a non-empty list of non-negative counts, got {class_counts}")
    if not (math.isfinite(supplement) and supplement >= 0):
        raise ReglError(f"supplement must be a non-negative fraction of the real data, got {supplement}")
    check_source_mix(source_mix)
    target = _normalised_target(target, len(class_counts))

    n = int(class_counts.sum())
    fill = math.floor(supplement * n + 0.5)
    per_class = np.zeros(len(class_counts), dtype=np.int64)
    if fill > 0:
        # The shortfalls add up to at least `fill` (the desired counts sum to n + fill), so
        # they are never all zero here and no class gets more than it lacks.
        shortfall = np.maximum(0.0, target * (n + fill) - class_counts)
        per_class = split_exactly(fill, shortfall)

    weights = np.array([source_mix.get(source, 0.0) for source in SOURCES])
    by_class = np.array([split_exactly(int(c), weights) for c in per_class])
    return FillPlan({source: by_class[:, i].copy() for i, source in enumerate(SOURCES)})


def _normalised_target(target: np.ndarray | None, num_classes: int) -> np.ndarray:
    if target is None:
        return np.full(num_classes, 1 / num_classes)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (num_classes,):
        raise ReglError(f"the target composition needs one weight per class ({num_classes}), got {target.shape}")
    if not np.isfinite(target).all() or (target < 0).any() or target.sum() <= 0:
        raise ReglError(f"the target composition must be non-negative and not all zero, got {target.tolist()}")
    return target / target.sum()
