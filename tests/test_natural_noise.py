"""The training-free natural-noise generator: deterministic, well-formed, natural-looking spectrum."""

import numpy as np
import pytest

from regl.errors import ReglError
from regl.generate.generator import MAX_IMAGES
from regl.generate.natural_noise import natural_noise, spectrum_slope


def test_same_seed_same_images_other_seed_other_images():
    a = natural_noise(8, seed=3, resolution=28, channels=1)
    assert np.array_equal(a, natural_noise(8, seed=3, resolution=28, channels=1))
    assert not np.array_equal(a, natural_noise(8, seed=4, resolution=28, channels=1))


def test_image_depends_only_on_seed_and_index():
    a = natural_noise(8, seed=5, resolution=32, channels=3, batch_size=3)
    b = natural_noise(12, seed=5, resolution=32, channels=3, batch_size=64)
    assert np.array_equal(a, b[:8])


@pytest.mark.parametrize("resolution,channels", [(28, 1), (32, 3), (16, 1)])
def test_shape_and_dtype(resolution, channels):
    images = natural_noise(4, seed=0, resolution=resolution, channels=channels)
    assert images.shape == (4, resolution, resolution, channels)
    assert images.dtype == np.uint8


def test_zero_images_is_an_empty_array():
    images = natural_noise(0, seed=0, resolution=28, channels=1)
    assert images.shape == (0, 28, 28, 1) and images.dtype == np.uint8


def test_images_are_not_degenerate():
    images = natural_noise(16, seed=1, resolution=32, channels=3)
    assert images.reshape(16, -1).std(axis=1).min() > 15  # targets are std 24–56
    flat = images.reshape(16, -1).astype(np.int16)
    assert min(np.abs(flat[i] - flat[j]).mean() for i in range(16) for j in range(i)) > 10
    assert np.isin(images, (0, 255)).mean() < 0.05


def test_power_spectrum_falls_like_natural_images():
    # Measured over seeds 0–4: slopes −2.0 to −2.3 (natural images ≈ −2, white noise 0).
    for seed, (resolution, channels) in enumerate([(28, 1), (32, 3)]):
        assert -3.0 < spectrum_slope(natural_noise(16, seed, resolution, channels)) < -1.5


def test_spectrum_slope_of_white_noise_is_flat():
    white = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    assert abs(spectrum_slope(white)) < 0.2


@pytest.mark.parametrize(
    "n,resolution,channels,batch_size,word",
    [
        (-1, 28, 1, 64, "n must"),
        (MAX_IMAGES + 1, 28, 1, 64, "n must"),
        (4, 7, 1, 64, "resolution"),
        (4, 28, 2, 64, "channels"),
        (4, 28, 1, 0, "batch_size"),
    ],
)
def test_bad_arguments_raise(n, resolution, channels, batch_size, word):
    with pytest.raises(ReglError, match=word):
        natural_noise(n, seed=0, resolution=resolution, channels=channels, batch_size=batch_size)
