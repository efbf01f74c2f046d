"""DP-LabelHide mixup: a client that holds a label makes images of it for clients that lack it.

Each image is mostly (weight λ0 ~ U(0.5, 0.75)) one of the producer's images of the
requested label, blended with k−1 other local images of any class (weights summing to
1−λ0), plus Laplace noise in [0, 1] pixel space. The label stays the requested one and
is never mixed, so the other labels in the blend stay hidden from the receiver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.fill.plan import split_exactly


@dataclass(frozen=True)
class MixupSettings:
    """k images per mix, Laplace scale b (pixel units in [0, 1]), range of the target image's weight."""

    ways: int = 4
    noise_scale: float = 0.1
    target_weight: tuple[float, float] = (0.5, 0.75)

    def __post_init__(self) -> None:
        if self.ways < 1:
            raise ReglError(f"mixup needs at least 1 image per mix, got k={self.ways}")
        if not self.noise_scale >= 0:
            raise ReglError(f"the mixup noise scale must be non-negative, got {self.noise_scale}")
        low, high = self.target_weight
        if not 0 <= low <= high <= 1:
            raise ReglError(f"the target weight range must satisfy 0 ≤ low ≤ high ≤ 1, got {self.target_weight}")


def label_hide_mixup(
    data: ImageDataset, requests: dict[int, int], settings: MixupSettings, seed: int
) -> tuple[ImageDataset, dict[str, np.ndarray]]:
    """Mixed images for each requested label (label → count) from this client's data.

    Images come in ascending label order. The record holds `indices` (N×k into `data`,
    column 0 the target image) and `weights` (N×k, column 0 is λ0, rows sum to 1), so
    the mix can be checked. With k = 1 there is nothing to blend with and λ0 = 1.
    """
    _check_requests(data, requests, settings)
    rng = np.random.default_rng(seed)
    labels = np.array([label for label, n in sorted(requests.items()) for _ in range(n)], dtype=np.int64)
    k = settings.ways
    by_label = {label: np.flatnonzero(data.y == label) for label in set(labels.tolist())}
    indices = np.empty((len(labels), k), dtype=np.int64)
    weights = np.ones((len(labels), k))
    for i, label in enumerate(labels):
        target = rng.choice(by_label[label])
        others = rng.choice(len(data) - 1, size=k - 1, replace=False)
        indices[i] = [target, *(others + (others >= target))]  # any image but the target
        if k > 1:
            weight = rng.uniform(*settings.target_weight)
            weights[i] = [weight, *((1 - weight) * rng.dirichlet(np.ones(k - 1)))]

    mixed = np.zeros((len(labels), *data.x.shape[1:]))
    for j in range(k):
        mixed += weights[:, j, None, None, None] * data.x[indices[:, j]]
    mixed = mixed / 255 + rng.laplace(0.0, settings.noise_scale, mixed.shape)
    x = np.rint(np.clip(mixed, 0, 1) * 255).astype(np.uint8)
    return ImageDataset(x, labels, data.class_names), {"indices": indices, "weights": weights}


def _check_requests(data: ImageDataset, requests: dict[int, int], settings: MixupSettings) -> None:
    if settings.ways > len(data):
        raise ReglError(
            f"mixup of k={settings.ways} images needs at least {settings.ways} local images, "
            f"this client holds {len(data)}"
        )
    held = data.class_counts()
    for label, n in requests.items():
        if n < 0:
            raise ReglError(f"cannot make a negative number ({n}) of images of class {label}")
        if n > 0 and not (0 <= label < data.num_classes and held[label] > 0):
            raise ReglError(f"this client holds no images of class {label} to make mixup images from")


def assign_requests(
    requests: dict[int, dict[int, int]], holdings: dict[int, np.ndarray]
) -> tuple[dict[int, dict[int, dict[int, int]]], dict[int, dict[int, int]]]:
    """requests[client][label] = n; holdings[client] = class counts → (assignments, unserved).

    assignments[producer][requester][label] = n. Each label's request is split among the
    *other* clients holding it, in proportion to how many images of it each holds (exact
    totals, largest remainder). A label no other client holds cannot be served: it goes
    to unserved[requester][label] = n for the caller to report. Zero counts are left out.
    """
    num_classes = _check_holdings(holdings)
    assignments: dict[int, dict[int, dict[int, int]]] = {}
    unserved: dict[int, dict[int, int]] = {}
    for requester, wanted in sorted(requests.items()):
        producers = [client for client in sorted(holdings) if client != requester]
        for label, n in sorted(wanted.items()):
            if n < 0:
                raise ReglError(f"client {requester} requested a negative number ({n}) of class {label}")
            if not 0 <= label < num_classes:
                raise ReglError(f"client {requester} requested class {label}, but there are {num_classes} classes")
            if n == 0:
                continue
            held = np.array([holdings[producer][label] for producer in producers], dtype=np.int64)
            if held.sum() == 0:
                unserved.setdefault(requester, {})[label] = n
                continue
            for producer, share in zip(producers, split_exactly(n, held)):
                if share > 0:
                    assignments.setdefault(producer, {}).setdefault(requester, {})[label] = int(share)
    return assignments, unserved


def _check_holdings(holdings: dict[int, np.ndarray]) -> int:
    """The number of classes all holdings agree on (0 when there are none)."""
    lengths = {len(counts) for counts in holdings.values()}
    if len(lengths) > 1:
        raise ReglError(f"clients report class counts of different lengths: {sorted(lengths)}")
    if any((np.asarray(counts) < 0).any() for counts in holdings.values()):
        raise ReglError("class counts cannot be negative")
    return lengths.pop() if lengths else 0
