"""`regl eval-generator`: how recognisable, realistic and varied generated images are.

(a) accuracy, per class, of a classifier trained on real data only, on generated images;
(b) the Fréchet distance between generated and real test images in that classifier's
feature space (its 84-d penultimate layer: an FID with a task-specific network);
(c) precision and recall in the same space (`fidelity.py`): realism and variety apart.
Whether a classifier can *learn* from generated images is `tstr.py`'s question.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regl.data.datasets import ImageDataset, load_split
from regl.data.looks import split_in_look
from regl.generate.fidelity import DEFAULT_K, PrecisionRecall, class_precision_recall
from regl.generate.generated_sets import first_per_class
from regl.seeds import derive_seed
from regl.train.loop import TrainSettings, evaluate, to_tensor, train
from regl.train.models import SmallCNN

CLASSIFIER_EPOCHS = 5


def reference_classifier(dataset: str, seed: int = 0, look: str = "none") -> tuple[SmallCNN, float]:
    """The NIID-Bench CNN trained on the private pool (in the shared `look`); returns it and its real test
    accuracy."""
    split = split_in_look(load_split(dataset), look)
    torch.manual_seed(derive_seed(seed, "model-init"))
    model = SmallCNN(split.private.channels, split.private.num_classes, split.private.resolution)
    train(model, split.private, TrainSettings(epochs=CLASSIFIER_EPOCHS, lr=0.05), seed=seed)
    return model, evaluate(model, split.test)["accuracy"]


@torch.no_grad()
def features(model: SmallCNN, x: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model.features(to_tensor(x[i : i + 1024])).numpy() for i in range(0, len(x), 1024)])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # few samples or dead ReLU features make the product singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


@dataclass(frozen=True)
class GeneratorQuality:
    per_class: int  # generated images of each class measured
    per_class_accuracy: list[float]
    frechet: float
    real_test_accuracy: float
    images_per_second: float | None  # None: not measured
    group_frechet: dict[str, float]
    fidelity: PrecisionRecall

    def mean_accuracy(self, classes: list[int] | None = None) -> float:
        picked = self.per_class_accuracy if classes is None else [self.per_class_accuracy[c] for c in classes]
        return float(np.mean(picked))


def measure_generated(
    fake: ImageDataset,
    dataset: str,
    per_class: int,
    classifier: tuple[SmallCNN, float] | None = None,
    groups: dict[str, list[int]] | None = None,
    k: int = DEFAULT_K,
    images_per_second: float | None = None,
    look: str = "none",
) -> GeneratorQuality:
    """The quality figures of the first `per_class` generated images of each class.

    `groups` (e.g. a client's own and missing classes) get a Fréchet distance of their own,
    between the generated and the real test images of just those classes. With a shared `look`, the real
    images (the classifier's training and the test set) are in it.
    """
    model, real_accuracy = classifier or reference_classifier(dataset, look=look)
    test = split_in_look(load_split(dataset), look).test
    measured = first_per_class(fake, per_class)
    result = evaluate(model, measured)
    fake_features, test_features = features(model, measured.x), features(model, test.x)
    group_frechet = {
        name: frechet_distance(fake_features[np.isin(measured.y, classes)], test_features[np.isin(test.y, classes)])
        for name, classes in (groups or {}).items()
        if classes
    }
    return GeneratorQuality(
        per_class=per_class,
        per_class_accuracy=[float(a) for a in result["per_class_accuracy"]],
        frechet=frechet_distance(fake_features, test_features),
        real_test_accuracy=real_accuracy,
        images_per_second=images_per_second,
        group_frechet=group_frechet,
        fidelity=class_precision_recall(test_features, test.y, fake_features, measured.y, test.class_names, k),
    )


def quality_record(
    quality: GeneratorQuality, class_names: tuple[str, ...], groups: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Every figure of `quality`, classes by name, for JSON."""
    fidelity = quality.fidelity
    return {
        "measured_per_class": quality.per_class,
        "reference_classifier_test_accuracy": quality.real_test_accuracy,
        "accuracy_on_generated": dict(zip(class_names, quality.per_class_accuracy)),
        "mean_accuracy_on_generated": quality.mean_accuracy(),
        "frechet": quality.frechet,
        "groups": {
            name: {
                "classes": classes,
                "accuracy": quality.mean_accuracy(classes),
                "frechet": quality.group_frechet[name],
            }
            for name, classes in (groups or {}).items()
            if classes
        },
        "precision_recall": {
            "k": fidelity.k,
            "samples_per_class": dict(zip(class_names, fidelity.samples_per_class)),
            "precision": dict(zip(class_names, fidelity.per_class_precision)),
            "recall": dict(zip(class_names, fidelity.per_class_recall)),
            "all_precision": fidelity.precision,
            "all_recall": fidelity.recall,
        },
        "images_per_second": quality.images_per_second,
    }


def save_grid(real: ImageDataset, fake: ImageDataset, path: Path, per_row: int = 8) -> None:
    """One row per class: `per_row` real test images, a gap, then `per_row` generated ones.

    Written to a temporary sibling, then renamed; a missing folder is made.
    """
    from regl.atomic import write_bytes_atomically

    write_bytes_atomically(Path(path), class_grid_png(real, fake, per_row))


def class_grid_png(real: ImageDataset, fake: ImageDataset, per_row: int = 8) -> bytes:
    rows = [[real.x[real.y == c][:per_row], fake.x[fake.y == c][:per_row]] for c in range(real.num_classes)]
    return image_rows_png(rows)


def image_rows_png(rows: list[list[np.ndarray]], gap: int = 4) -> bytes:
    """PNG of rows of image groups (each N×H×W×C uint8) side by side, a white gap between groups, drawn at 2×.

    A row shorter than the widest is padded with white.
    """
    import io

    from PIL import Image

    side, channels = rows[0][0].shape[1], rows[0][0].shape[3]
    lines = []
    for row in rows:
        parts = []
        for number, group in enumerate(row):
            if number:
                parts.append(np.full((side, gap, channels), 255, np.uint8))
            parts.append(np.concatenate(list(group), axis=1) if len(group) else np.zeros((side, 0, channels), np.uint8))
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    grid = np.concatenate(
        [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    )
    image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    buffer = io.BytesIO()
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def format_quality(
    quality: GeneratorQuality, class_names: tuple[str, ...], title: str, groups: dict[str, list[int]] | None = None
) -> str:
    fidelity = quality.fidelity
    lines = [title, f"{'class':>12} {'accuracy':>9} {'precision':>10} {'recall':>7}"]
    for name, acc, precision, recall in zip(
        class_names, quality.per_class_accuracy, fidelity.per_class_precision, fidelity.per_class_recall
    ):
        lines.append(f"{name:>12} {100 * acc:8.1f}% {precision:10.3f} {recall:7.3f}")
    lines.append(f"{'all':>12} {100 * quality.mean_accuracy():8.1f}% {fidelity.precision:10.3f} {fidelity.recall:7.3f}")
    low, high = min(fidelity.samples_per_class), max(fidelity.samples_per_class)
    samples = f"{low}" if low == high else f"{low}-{high}"
    lines += [
        f"accuracy: of a CNN trained on real images only, on {quality.per_class} generated images per class "
        f"(it scores {100 * quality.real_test_accuracy:.1f}% on the real test set)",
        f"precision (realistic) and recall (varied): k-NN manifolds with k = {fidelity.k} in that CNN's features,",
        f"  on {samples} real test and as many generated images per class; all: the classes pooled",
        f"Fréchet distance to the real test set (classifier features): {quality.frechet:.2f}",
    ]
    for name, classes in (groups or {}).items():
        if classes:
            lines.append(
                f"{name} {classes}: accuracy {100 * quality.mean_accuracy(classes):.1f}%, "
                f"Fréchet distance {quality.group_frechet[name]:.2f}"
            )
    if quality.images_per_second is not None:
        lines.append(f"generation speed: {quality.images_per_second:.1f} images/s")
    return "\n".join(lines)
