"""Balanced sets of generated images: drawn once, cut into nested subsets, kept as npz for later calls.

Generating 10,000 images of each class takes hours on a small CPU, so one generation at the
largest count serves every smaller one (the first n of each class), and `save_generated`
keeps it, with the settings that drew it, for a later evaluation to load.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate.generator import Generator, image_seed, to_dataset_format

# what a saved set records of the generation that drew it; an evaluation of the set reports them
SETTINGS_KEYS = ("base", "lora", "lora_scale", "steps", "guidance", "scheduler", "seed")


def generated_set(
    generator: Generator, classes: list[int], per_class: int, seed: int, like: ImageDataset, **options: Any
) -> tuple[ImageDataset, float]:
    """`per_class` images of each class in the dataset's format, and the generation speed in images/s.

    A progress bar (stderr) counts the images: a large set takes an hour or more on a CPU.
    """
    from tqdm import tqdm

    labels = [c for c in classes for _ in range(per_class)]
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    started = time.perf_counter()
    with tqdm(total=len(labels), desc="generating", unit="image") as bar:
        images = generator.generate(labels, seeds, on_batch=lambda done: bar.update(done - bar.n), **options)
    speed = len(labels) / (time.perf_counter() - started)
    x = to_dataset_format(images, like.resolution, like.channels)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), like.class_names), speed


def first_per_class(data: ImageDataset, n: int) -> ImageDataset:
    """The first `n` images of each class, in the set's order: the subsets for growing `n` are nested."""
    picks = []
    for c, name in enumerate(data.class_names):
        idx = np.flatnonzero(data.y == c)
        if len(idx) < n:
            raise ReglError(f"the set holds {len(idx)} images of class {name!r}, {n} are needed")
        picks.append(idx[:n])
    return data.subset(np.sort(np.concatenate(picks)))


def save_generated(path: Path, data: ImageDataset, settings: dict[str, Any]) -> None:
    """Images, labels, class names and the settings that drew them; written to a temporary sibling, then renamed."""
    missing = [key for key in SETTINGS_KEYS if key not in settings]
    if missing:
        raise ValueError(f"the settings of a saved set lack {', '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as tmp:
        np.savez_compressed(
            tmp,
            x=data.x,
            y=data.y,
            class_names=np.asarray(data.class_names),
            settings=np.asarray(json.dumps(settings)),
        )
    os.chmod(tmp.name, 0o644)  # a temporary file is private; the saved set is not
    os.replace(tmp.name, path)


def load_generated(
    path: Path, class_names: tuple[str, ...], resolution: int, channels: int, per_class: int = 0
) -> tuple[ImageDataset, dict[str, Any]]:
    """A set `save_generated` wrote, and its settings.

    One drawn for other classes or another image shape is refused, and so is one with
    fewer than `per_class` images of some class.
    """
    if not path.is_file():
        raise ReglError(f"generated set {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as saved:
            x, y = saved["x"], saved["y"]
            names = tuple(str(name) for name in saved["class_names"])
            settings = json.loads(str(saved["settings"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ReglError(f"cannot read generated set {path}: {exc}") from exc
    if not isinstance(settings, dict) or any(key not in settings for key in SETTINGS_KEYS):
        raise ReglError(f"generated set {path} does not record its settings ({', '.join(SETTINGS_KEYS)})")
    if len(names) != len(class_names):
        raise ReglError(f"generated set {path} holds {len(names)} classes, the dataset has {len(class_names)}")
    if names != class_names:
        raise ReglError(f"generated set {path} is of classes {', '.join(names)}, not {', '.join(class_names)}")
    expected = (resolution, resolution, channels)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != expected:
        raise ReglError(
            f"generated set {path} holds {x.dtype} images of shape {x.shape[1:]}, the dataset's are uint8 {expected}"
        )
    if (
        y.shape != (len(x),)
        or not np.issubdtype(y.dtype, np.integer)
        or y.min(initial=0) < 0
        or y.max(initial=0) >= len(names)
    ):
        raise ReglError(
            f"generated set {path} has {y.shape} {y.dtype} labels for {len(x)} images of {len(names)} classes"
        )
    data = ImageDataset(x, y.astype(np.int64), class_names)
    for name, count in zip(class_names, data.class_counts()):
        if count < per_class:
            raise ReglError(f"generated set {path} holds {count} images of class {name!r}, {per_class} are needed")
    return data, settings
