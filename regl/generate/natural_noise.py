"""Training-free "natural noise" images from an untrained, randomly wired StyleGAN2.

This is the "StyleGAN-Oriented" generator of Baradad et al., "Learning to see by looking
at noise" (NeurIPS 2021): a StyleGAN2 synthesis network whose weights are never learned
but re-drawn for every image from a bank of oriented filters. Its images have no
semantics yet share low-level statistics with natural images (a power spectrum falling
roughly as 1/f^2, oriented edges). In ReGL they are the cheap synthetic fill: labelled
with a client's missing classes, they cost no model, no download and no GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from regl.errors import ReglError
from regl.generate.generator import MAX_IMAGES, image_seed

SIDE = 32  # images are synthesised at 32 px, then cropped or resized
WIDTH = 32  # channels of every synthesis layer
LEVELS = (4, 8, 16, 32)


def _filter_bank() -> torch.Tensor:
    """40×3×3 unit-norm filters: 8 edges, 8 lines, 4 sparse, and their negatives."""
    y, x = np.mgrid[-1:2, -1:2].astype(np.float64)
    gauss = np.exp(-(x**2 + y**2) / 2)
    filters = []
    for k in range(8):  # orientations at 22.5° steps
        t = k * np.pi / 8
        along, across = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
        filters.append(along * gauss)  # first derivative: an oriented edge
        line = (across**2 - 1) * gauss  # second derivative across a bar along `t`
        filters.append(line - line.mean())
    for points in (((1, 1),), ((1, 0), (1, 2)), ((0, 1), (2, 1)), ((0, 0), (2, 2))):
        sparse = np.zeros((3, 3))
        for p in points:
            sparse[p] = 1
        filters.append(sparse)
    bank = np.stack([f / np.linalg.norm(f) for f in filters])
    return torch.from_numpy(np.concatenate([bank, -bank])).float()


BANK = _filter_bank()


def _conv_weight(gen: torch.Generator, out_ch: int, in_ch: int) -> torch.Tensor:
    """weight[o, i] = sign[o] * subset[choice[i]], the subset being 5–40 filters of the bank."""
    size = int(torch.randint(5, len(BANK) + 1, (), generator=gen))
    subset = BANK[torch.randperm(len(BANK), generator=gen)[:size]]
    choice = torch.randint(0, size, (in_ch,), generator=gen)
    sign = torch.randint(0, 2, (out_ch,), generator=gen).float() * 2 - 1
    return sign[:, None, None, None] * subset[choice][None]


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _draw(gen: torch.Generator, channels: int) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    """All random parameters of one image, in a fixed order so that the seed alone decides them."""
    p: dict[str, list[tuple[torch.Tensor, ...]]] = {k: [] for k in ("const", "conv", "rgb", "target")}
    p["const"].append((torch.randn(WIDTH, LEVELS[0], LEVELS[0], generator=gen),))
    for level in LEVELS:
        for _ in range(1 if level == LEVELS[0] else 2):
            p["conv"].append(
                (
                    _conv_weight(gen, WIDTH, WIDTH),
                    _uniform(gen, (WIDTH,), 0.5, 1.5),  # style per input channel
                    _uniform(gen, (WIDTH,), -0.2, 0.2),  # bias
                    torch.randn(level, level, generator=gen),  # white noise, made pink below
                    _uniform(gen, (), 0.5, 1.5),  # spectral exponent alpha of that noise
                    _uniform(gen, (WIDTH,), 0.0, 0.5),  # noise strength per channel
                )
            )
        p["rgb"].append(
            (
                torch.randn(channels, WIDTH, generator=gen) / math.sqrt(WIDTH),
                _uniform(gen, (WIDTH,), 0.5, 1.5),
                _uniform(gen, (channels,), -0.2, 0.2),
            )
        )
    # Target pixel statistics per channel: mean in [96, 160], std in [24, 56] (uint8 units),
    # so that few pixels clip at 0 or 255.
    p["target"].append((_uniform(gen, (channels,), 96, 160), _uniform(gen, (channels,), 24, 56)))
    return p


def _pink(white: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """B×H×W white noise → standardised noise with power spectrum ∝ 1/f^alpha."""
    fy, fx = torch.meshgrid(torch.fft.fftfreq(white.shape[1]), torch.fft.fftfreq(white.shape[2]), indexing="ij")
    f = torch.sqrt(fx**2 + fy**2).clamp(min=1 / white.shape[1])
    noise = torch.fft.ifft2(torch.fft.fft2(white) * f ** (-alpha[:, None, None] / 2)).real
    noise = noise - noise.mean(dim=(1, 2), keepdim=True)
    return noise / noise.std(dim=(1, 2), keepdim=True)


def _modulated_conv(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """StyleGAN2 modulated conv, one weight per image via a grouped conv over the batch."""
    b, i, h, w = x.shape
    weight = weight * style[:, None, :, None, None]
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    out = F.conv2d(
        x.reshape(1, b * i, h, w), weight.reshape(-1, i, *weight.shape[3:]), padding=weight.shape[-1] // 2, groups=b
    )
    return out.reshape(b, -1, h, w)


def _synthesise(params: list[dict[str, list[tuple[torch.Tensor, ...]]]], resolution: int) -> torch.Tensor:
    """Run the network on a batch of drawn parameters: float B×C×R×R, standardised then rescaled."""

    def stacked(key: str, index: int) -> list[torch.Tensor]:
        return [torch.stack(parts) for parts in zip(*(p[key][index] for p in params))]

    (x,) = stacked("const", 0)
    image, conv = None, 0
    for n, level in enumerate(LEVELS):
        if level != LEVELS[0]:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        for _ in range(1 if level == LEVELS[0] else 2):
            weight, style, bias, white, alpha, strength = stacked("conv", conv)
            x = _modulated_conv(x, weight, style, demodulate=True)
            x = x + _pink(white, alpha)[:, None] * strength[:, :, None, None] + bias[:, :, None, None]
            x, conv = F.relu(x), conv + 1
        weight, style, bias = stacked("rgb", n)
        rgb = _modulated_conv(x, weight[..., None, None], style, demodulate=False) + bias[:, :, None, None]
        image = (
            rgb if image is None else F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False) + rgb
        )
    margin = SIDE - resolution
    if 0 < margin <= 4 and margin % 2 == 0:  # 28 px: the centre crop, as for padded 28×28 data
        image = image[:, :, margin // 2 : margin // 2 + resolution, margin // 2 : margin // 2 + resolution]
    elif margin != 0:
        image = F.interpolate(image, size=(resolution, resolution), mode="bilinear", antialias=margin > 0)
    mean, std = stacked("target", 0)
    image = (image - image.mean(dim=(2, 3), keepdim=True)) / (image.std(dim=(2, 3), keepdim=True) + 1e-8)
    return image * std[:, :, None, None] + mean[:, :, None, None]


def natural_noise(n: int, seed: int, resolution: int, channels: int, batch_size: int = 64) -> np.ndarray:
    """n uint8 N×R×R×C noise images; image i depends only on (seed, i), not on n or batch_size."""
    if not 0 <= n <= MAX_IMAGES:
        raise ReglError(f"n must be between 0 and {MAX_IMAGES}, got {n}")
    if resolution < 8:
        raise ReglError(f"resolution must be at least 8, got {resolution}")
    if channels not in (1, 3):
        raise ReglError(f"channels must be 1 or 3, got {channels}")
    if batch_size < 1:
        raise ReglError(f"batch_size must be at least 1, got {batch_size}")
    out = [np.zeros((0, resolution, resolution, channels), dtype=np.uint8)]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            params = [
                _draw(torch.Generator().manual_seed(image_seed(seed, i)), channels)
                for i in range(start, min(start + batch_size, n))
            ]
            images = _synthesise(params, resolution).permute(0, 2, 3, 1)
            out.append(images.round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def spectrum_slope(images: np.ndarray) -> float:
    """Slope of the log–log radially averaged power spectrum (natural images: about −2)."""
    x = images.astype(np.float64).transpose(0, 3, 1, 2)  # N×C×H×W
    x = x - x.mean(axis=(2, 3), keepdims=True)
    h, w = x.shape[2:]
    x = x * np.outer(np.hanning(h), np.hanning(w))  # no spurious edges from the image border
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=(0, 1))
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    radius = np.rint(np.hypot(fx, fy)).astype(int)
    bins = np.arange(1, min(h, w) // 2 + 1)
    radial = np.array([power[radius == r].mean() for r in bins])
    return float(np.polyfit(np.log(bins), np.log(radial), 1)[0])
