"""A tiny random SD base and a skewed 3-class client folder, for the service tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "owl")


def build_base(folder: Path) -> Path:
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    pipe = build_pipeline(TEST_SD, prompt_words(class_prompts(CLASSES, "a photo of a {}")), folder / "work", seed=0)
    pipe.save_pretrained(folder / "model")
    return folder / "model"


def build_client_folder(root: Path, per_class: tuple[int, ...] = (6, 3, 1)) -> Path:
    """20×20 grayscale PNGs, a skewed client: 6 cats, 3 dogs, 1 owl."""
    rng = np.random.default_rng(0)
    for name, count in zip(CLASSES, per_class):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root
