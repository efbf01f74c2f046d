"""Balanced sets of generated images: drawn once, cut into nested subsets, kept as npz for later calls.

Generating 10,000 images of each class takes hours on a small CPU, so one generation at the
largest count serves every smaller one (the first n of each class), and `save_generated`
keeps it, with the settings that drew it, for a later evaluation to load. A set being drawn
is saved every CHUNK images, so a stopped generation resumes where it was cut off.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate.generator import Generator, image_seed, to_dataset_format

# what a saved set records of the generation that drew it; an evaluation of the set reports them
SETTINGS_KEYS = ("base", "lora", "lora_scale", "steps", "guidance", "scheduler", "seed")
# what must agree for a saved, unfinished set to be continued: image i's seed depends on per_class, and on
# the seed derivation (`seeds`, regl.seeds.SEED_DERIVATION) that turns the set's seed into image seeds
RESUME_KEYS = (
    "base_fingerprint",
    "lora",
    "lora_scale",
    "template",
    "steps",
    "guidance",
    "scheduler",
    "seed",
    "seeds",
    "per_class",
)
# images drawn between two saves: ~3 minutes on a 2-core CPU
CHUNK = 5_000


def generated_set(
    generator: Generator,
    classes: list[int],
    per_class: int,
    seed: int,
    like: ImageDataset,
    done: ImageDataset | None = None,
    keep: Callable[[ImageDataset], None] | None = None,
    **options: Any,
) -> tuple[ImageDataset, float]:
    """`per_class` images of each class in the dataset's format, and the speed of this call in images/s.

    `done` is what an interrupted call with the same settings drew (its first images): it is
    kept and the rest is drawn. `keep(set so far)` is called after every CHUNK images but the
    last. Progress on stderr (a bar on a terminal, a line every few percent elsewhere) counts
    the images: a large set takes an hour or more on a CPU.
    """
    from regl.progress import progress

    labels = [c for c in classes for _ in range(per_class)]
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    have = 0 if done is None else len(done.y)
    if have > len(labels) or (done is not None and done.y.tolist() != labels[:have]):
        raise ReglError(f"the set to continue holds {have} images that are not the first of this one")
    parts = [] if done is None else [done.x]
    started = time.perf_counter()
    with progress(total=len(labels), initial=have, desc="generating", unit="image") as bar:
        for start in range(have, len(labels), CHUNK):
            stop = min(start + CHUNK, len(labels))
            images = generator.generate(
                labels[start:stop],
                seeds[start:stop],
                on_batch=lambda n, start=start: bar.update(start + n - bar.n),
                **options,
            )
            parts.append(to_dataset_format(images, like.resolution, like.channels))
            if keep is not None and stop < len(labels):  # the caller saves the whole set itself
                keep(ImageDataset(np.concatenate(parts), np.asarray(labels[:stop], dtype=np.int64), like.class_names))
    speed = (len(labels) - have) / (time.perf_counter() - started)
    x = np.concatenate(parts) if parts else np.zeros((0, like.resolution, like.resolution, like.channels), np.uint8)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), like.class_names), speed


def saved_part(
    path: Path, settings: dict[str, Any], class_names: tuple[str, ...], resolution: int, channels: int
) -> tuple[ImageDataset, dict[str, Any]] | None:
    """What an earlier generation with the same settings left at `path` (finished or cut off),
    with its settings; None if there is no file. A set of other settings is refused, not overwritten."""
    if not path.exists():
        return None
    data, saved = load_generated(path, class_names, resolution, channels)
    wanted = json.loads(json.dumps(settings))  # as it reads back from the file
    differing = [key for key in RESUME_KEYS if saved.get(key) != wanted[key]]
    if differing:
        key = differing[0]
        raise ReglError(
            f"{path} holds a set drawn with other settings ({key} {saved.get(key, '(not recorded)')!r}, "
            f"not {wanted[key]!r}); choose another file to save to"
        )
    return data, saved


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
    planned = settings.get("per_class", 0) * len(names)
    if per_class and len(y) < planned:
        raise ReglError(
            f"generated set {path} is unfinished ({len(y)} of {planned} images): "
            "rerun the command that saved it (--save-generated) to finish it"
        )
    for name, count in zip(class_names, data.class_counts()):
        if count < per_class:
            raise ReglError(f"generated set {path} holds {count} images of class {name!r}, {per_class} are needed")
    return data, settings
