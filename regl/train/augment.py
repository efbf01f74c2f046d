"""Client-side image augmentation (kornia): shifts and small rotations, brightness and contrast, mirror flips.

Flips are only for data whose classes survive a mirror (clothes do, digits do not:
`regl.data.datasets.mirror_safe`). The seed article's time-series augmentations (jitter,
scaling, time warping, permutation) are for 1-D signals and have no counterpart here.
"""

from __future__ import annotations

import torch

MAX_DEGREES = 10.0
MAX_SHIFT = 0.1  # of the image side
SCALE = (0.9, 1.1)
BRIGHTNESS = CONTRAST = 0.2


class Augment:
    """A random transform of a batch in [-1, 1] (N×C×H×W), the same for the same seed."""

    def __init__(self, mirror: bool) -> None:
        import kornia.augmentation as K

        steps = [
            K.RandomAffine(degrees=MAX_DEGREES, translate=(MAX_SHIFT, MAX_SHIFT), scale=SCALE, p=1.0),
            K.ColorJiggle(brightness=BRIGHTNESS, contrast=CONTRAST, p=1.0),
        ]
        if mirror:
            steps.append(K.RandomHorizontalFlip(p=0.5))
        self.pipeline = K.AugmentationSequential(*steps)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        # kornia draws from torch's global generator: fork it so the seed decides alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.pipeline((x + 1.0) / 2.0) * 2.0 - 1.0
