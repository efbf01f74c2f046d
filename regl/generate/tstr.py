"""Train on synthetic, test on real (TSTR): can the federation's classifier learn from generated images?

A classifier trained on real data may recognise generated images and still a classifier
trained on them may learn little: they can lack the variety within a class and the hard
cases near other classes. The direct test trains the federated arms' model, optimiser and
batch size on N generated images per class and measures it on the real test set, beside
the same training on N real images per class from the public pool (the data a fill could
have used instead).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate.generated_sets import first_per_class
from regl.generate.generator import MAX_IMAGES
from regl.seeds import derive_seed
from regl.train.loop import evaluate, train
from regl.train.models import build_model, default_model_name
from regl.train.settings import TrainSettings


@dataclass(frozen=True)
class TstrRow:
    per_class: int  # generated images per class
    generated_accuracy: float
    real_per_class: int  # real images per class: per_class, or all the public pool holds of its smallest class
    real_accuracy: float

    @property
    def ratio(self) -> float:
        return self.generated_accuracy / self.real_accuracy if self.real_accuracy > 0 else float("nan")


def parse_counts(spec: str) -> list[int]:
    """`100,500,1000` → [100, 500, 1000], ascending; empty: no TSTR."""
    counts: list[int] = []
    for part in spec.split(",") if spec.strip() else []:
        try:
            n = int(part)
        except ValueError:
            raise ReglError(
                f"TSTR counts are whole numbers of images per class, e.g. 100,500,1000; got {part!r}"
            ) from None
        if not 1 <= n <= MAX_IMAGES:
            raise ReglError(f"TSTR counts must be between 1 and {MAX_IMAGES} images per class, got {n}")
        if n in counts:
            raise ReglError(f"TSTR counts list {n} twice")
        counts.append(n)
    return sorted(counts)


def draw_per_class(pool: ImageDataset, n: int, seed: int) -> ImageDataset:
    """`n` images of each class drawn at random; with one seed the draw for n is nested in that for any larger n."""
    order = np.random.default_rng(derive_seed(seed, "tstr-real")).permutation(len(pool))
    return first_per_class(pool.subset(order), n)


def balanced_capacity(pool: ImageDataset) -> int:
    """The most images per class a balanced draw from `pool` can hold: its smallest class's count."""
    return int(pool.class_counts().min())


def check_public_pool(public: ImageDataset) -> None:
    """TSTR's real side needs public images of every class (an image folder has no public pool)."""
    missing = [name for name, n in zip(public.class_names, public.class_counts()) if n == 0]
    if missing:
        raise ReglError(f"the public pool holds no images of {', '.join(missing)}: TSTR has no real side to compare")


def tstr_train_settings(epochs: int) -> TrainSettings:
    """The federated arms' optimiser and batch size, for `epochs` passes."""
    return replace(TrainSettings(), epochs=epochs)


def train_and_test(train_set: ImageDataset, test: ImageDataset, epochs: int, seed: int) -> float:
    """Test accuracy of the dataset's default model trained from a seeded start as the federated arms train it."""
    torch.manual_seed(derive_seed(seed, "model-init"))
    model = build_model(default_model_name(test.channels), test.channels, test.num_classes, test.resolution)
    train(model, train_set, tstr_train_settings(epochs), seed=seed)
    return float(evaluate(model, test)["accuracy"])


def train_on_synthetic(
    generated: ImageDataset, public: ImageDataset, test: ImageDataset, counts: list[int], epochs: int, seed: int
) -> list[TstrRow]:
    """One row per N in `counts`, ascending: generated and real accuracy on `test`.

    Generated sets are the first N of each class of `generated`; real ones N per class
    drawn from `public`, or its balanced capacity where that is smaller (counts above it
    share one real run). Both sides start from the same weights and batch order seed.
    """
    check_public_pool(public)
    first_per_class(generated, max(counts, default=0))  # a set too small is refused before any training
    capacity = balanced_capacity(public)
    real_accuracy: dict[int, float] = {}
    rows = []
    for n in sorted(counts):
        real_n = min(n, capacity)
        if real_n not in real_accuracy:
            real_accuracy[real_n] = train_and_test(draw_per_class(public, real_n, seed), test, epochs, seed)
        generated_accuracy = train_and_test(first_per_class(generated, n), test, epochs, seed)
        rows.append(TstrRow(n, generated_accuracy, real_n, real_accuracy[real_n]))
    return rows


def format_tstr(rows: list[TstrRow], test: ImageDataset, epochs: int, seed: int) -> str:
    """The table: per N, accuracy on real test images after training on generated and on real images."""
    settings = tstr_train_settings(epochs)
    lines = [
        f"Train on synthetic, test on real: {default_model_name(test.channels)}, SGD lr {settings.lr} "
        f"momentum {settings.momentum} batch {settings.batch_size}, {epochs} epoch{'s' * (epochs != 1)}, seed {seed}; "
        f"accuracy on the {len(test)} real test images",
        f"{'per class':>10} {'generated':>10} {'real':>10} {'generated/real':>15}",
    ]
    for row in rows:
        capped = "" if row.real_per_class == row.per_class else f" ({row.real_per_class})*"
        lines.append(
            f"{row.per_class:>10} {100 * row.generated_accuracy:9.1f}% {100 * row.real_accuracy:9.1f}%"
            f" {capped:<8}{row.ratio:>7.3f}"
        )
    capped_rows = [row for row in rows if row.real_per_class < row.per_class]
    if capped_rows:
        lines.append(
            f"* the public pool holds {capped_rows[0].real_per_class} images of its smallest class: "
            "the real side trains on that many per class"
        )
    return "\n".join(lines)


def tstr_record(rows: list[TstrRow], test: ImageDataset, epochs: int, seed: int) -> dict[str, Any]:
    """The table's figures with the model, optimiser and seed that produced them, for JSON."""
    return {
        "model": default_model_name(test.channels),
        "train": asdict(tstr_train_settings(epochs)),
        "seed": seed,
        "test_images": len(test),
        "rows": [{**asdict(row), "ratio": row.ratio} for row in rows],
    }
