"""Shared looks: the whole federation's images, every client's and the global test set, in one look.

A client domain (regl/data/domains.py) gives each client a look of its own; a shared look is
the federation's, and one the base model never saw (it was trained on the plain public
pools). It is what a generator fitted to the federation should learn and a generator fitted
to the base's data cannot draw. Looks:
- `negative`: from the style family of the client domains: thick strokes (3×3 dilation),
  γ 0.5, inverted: dark shapes on a light background;
- `outline`: outside that family: the morphological gradient (3×3 dilation minus 3×3
  erosion), so every shape is a hollow contour. No pixel-wise map of the base's filled
  shapes gives it, and its one- to two-pixel lines sit at the resolution the frozen
  autoencoder (4× downsampling) reconstructs worst: the hard one.
Labels and shapes are unchanged, and a look is deterministic: training and test images,
and any image passed through it later (the oracle, the real reference), look alike.
"""

from __future__ import annotations

import numpy as np

from regl.data.datasets import DatasetSplit, ImageDataset
from regl.errors import ReglError

LOOKS = ("none", "negative", "outline")


def check_look(look: str) -> None:
    if look not in LOOKS:
        raise ReglError(f"unknown look {look!r}; use one of {', '.join(LOOKS)}")


def apply_look(data: ImageDataset, look: str) -> ImageDataset:
    """`data` in the shared `look`; the same object when there is none."""
    check_look(look)
    if look == "none" or not len(data):
        return data
    return ImageDataset(_transform(data.x, look), data.y, data.class_names)


def split_in_look(split: DatasetSplit, look: str) -> DatasetSplit:
    """A dataset's split as the federation sees it: its private pool and test set in the shared `look`;
    the public pool, the base's pretraining data, as it is."""
    return DatasetSplit(apply_look(split.private, look), split.public, apply_look(split.test, look))


def _transform(x: np.ndarray, look: str) -> np.ndarray:
    from scipy.ndimage import grey_dilation, grey_erosion

    window = (1, 3, 3, 1)  # N×H×W×C: each image and channel on its own
    if look == "negative":
        pixels = (grey_dilation(x, size=window) / 255.0) ** 0.5
        return np.rint((1.0 - pixels) * 255).astype(np.uint8)
    gradient = grey_dilation(x, size=window).astype(np.int16) - grey_erosion(x, size=window)
    return gradient.astype(np.uint8)
