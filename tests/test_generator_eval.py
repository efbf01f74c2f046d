import numpy as np
import pytest

from regl.generator_eval import frechet_distance


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-3)
    # same mean, variance 4 vs 1 per dimension: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, 2 * rng.normal(size=(20000, 3))) == pytest.approx(3.0, rel=0.05)
