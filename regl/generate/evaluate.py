"""`regl eval-generator`: how recognisable and how realistic generated images are.

(a) accuracy, per class, of a classifier trained on real data only, on generated images;
(b) the Fréchet distance between generated and real test images in that classifier's
feature space (its 84-d penultimate layer: an FID with a task-specific network).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from regl.data.datasets import ImageDataset, load_split
from regl.generate.generator import Generator, image_seed, to_dataset_format
from regl.train.loop import TrainSettings, evaluate, to_tensor, train
from regl.train.models import SmallCNN

CLASSIFIER_EPOCHS = 5


def reference_classifier(dataset: str, seed: int = 0) -> tuple[SmallCNN, float]:
    """The NIID-Bench CNN trained on the private pool; returns it and its real test accuracy."""
    split = load_split(dataset)
    torch.manual_seed(seed)
    model = SmallCNN(split.private.channels, split.private.num_classes, split.private.resolution)
    train(model, split.private, TrainSettings(epochs=CLASSIFIER_EPOCHS, lr=0.05), seed=seed)
    return model, evaluate(model, split.test)["accuracy"]


@torch.no_grad()
def features(model: SmallCNN, x: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model.features(to_tensor(x[i : i + 1024])).numpy() for i in range(0, len(x), 1024)])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # few samples or dead ReLU features make the product singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


@dataclass(frozen=True)
class GeneratorQuality:
    per_class_accuracy: list[float]
    frechet: float
    real_test_accuracy: float
    images_per_second: float
    group_frechet: dict[str, float]

    def mean_accuracy(self, classes: list[int] | None = None) -> float:
        picked = self.per_class_accuracy if classes is None else [self.per_class_accuracy[c] for c in classes]
        return float(np.mean(picked))


def generated_set(
    generator: Generator, classes: list[int], per_class: int, seed: int, like: ImageDataset, **options
) -> tuple[ImageDataset, float]:
    """`per_class` images of each class in the dataset's format, and the generation speed."""
    labels = [c for c in classes for _ in range(per_class)]
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    started = time.perf_counter()
    images = generator.generate(labels, seeds, **options)
    speed = len(labels) / (time.perf_counter() - started)
    x = to_dataset_format(images, like.resolution, like.channels)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), like.class_names), speed


def evaluate_generator(
    generator: Generator,
    dataset: str,
    per_class: int,
    seed: int,
    classifier: tuple[SmallCNN, float] | None = None,
    groups: dict[str, list[int]] | None = None,
    **options,
) -> tuple[GeneratorQuality, ImageDataset]:
    """The quality figures and the generated images they were measured on.

    `groups` (e.g. a client's own and missing classes) get a Fréchet distance of their own,
    between the generated and the real test images of just those classes.
    """
    model, real_accuracy = classifier or reference_classifier(dataset)
    test = load_split(dataset).test
    fake, speed = generated_set(generator, list(range(test.num_classes)), per_class, seed, test, **options)
    result = evaluate(model, fake)
    fake_features, test_features = features(model, fake.x), features(model, test.x)
    group_frechet = {
        name: frechet_distance(fake_features[np.isin(fake.y, classes)], test_features[np.isin(test.y, classes)])
        for name, classes in (groups or {}).items()
        if classes
    }
    quality = GeneratorQuality(
        per_class_accuracy=[float(a) for a in result["per_class_accuracy"]],
        frechet=frechet_distance(fake_features, test_features),
        real_test_accuracy=real_accuracy,
        images_per_second=speed,
        group_frechet=group_frechet,
    )
    return quality, fake


def save_grid(real: ImageDataset, fake: ImageDataset, path, per_row: int = 8) -> None:
    """One row per class: `per_row` real test images, a gap, then `per_row` generated ones."""
    from PIL import Image

    side, gap = real.resolution, 4
    rows = []
    for c in range(real.num_classes):
        picks = [real.x[real.y == c][:per_row], fake.x[fake.y == c][:per_row]]
        halves = [np.concatenate(list(p), axis=1) for p in picks]
        spacer = np.full((side, gap, real.channels), 255, np.uint8)
        rows.append(np.concatenate([halves[0], spacer, halves[1]], axis=1))
    grid = np.concatenate(rows, axis=0)
    image = Image.fromarray(grid[..., 0] if real.channels == 1 else grid)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)


def format_quality(
    quality: GeneratorQuality, class_names: tuple[str, ...], title: str, groups: dict[str, list[int]] | None = None
) -> str:
    lines = [title, f"{'class':>12} accuracy on generated"]
    lines += [f"{name:>12} {100 * acc:6.1f}%" for name, acc in zip(class_names, quality.per_class_accuracy)]
    lines.append(
        f"{'mean':>12} {100 * quality.mean_accuracy():6.1f}%   (the classifier scores "
        f"{100 * quality.real_test_accuracy:.1f}% on real test images)"
    )
    lines.append(f"Fréchet distance to the real test set (classifier features): {quality.frechet:.2f}")
    for name, classes in (groups or {}).items():
        if classes:
            lines.append(
                f"{name} {classes}: accuracy {100 * quality.mean_accuracy(classes):.1f}%, "
                f"Fréchet distance {quality.group_frechet[name]:.2f}"
            )
    lines.append(f"generation speed: {quality.images_per_second:.1f} images/s")
    return "\n".join(lines)
