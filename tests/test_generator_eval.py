import numpy as np
import pytest

from regl.generate.evaluate import frechet_distance


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-3)
    # same mean, variance 4 vs 1 per dimension: 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, 2 * rng.normal(size=(20000, 3))) == pytest.approx(3.0, rel=0.05)


def test_evaluate_generator_end_to_end_on_a_tiny_pipeline(tmp_path):
    from regl.data.datasets import load_split
    from regl.generate.evaluate import evaluate_generator, format_quality, save_grid
    from regl.generate.generator import Generator
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    names = load_split("mnist-10k").test.class_names
    words = prompt_words(class_prompts(names, "a handwritten digit {}"))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(tmp_path / "model")
    generator = Generator(tmp_path / "model", names, "a handwritten digit {}")
    groups = {"own": [0, 1], "missing": list(range(2, 10))}
    quality, fake = evaluate_generator(generator, "mnist-10k", per_class=3, seed=0, groups=groups, steps=2)
    assert fake.x.shape == (30, 28, 28, 1)
    assert len(quality.per_class_accuracy) == 10
    assert quality.real_test_accuracy > 0.9  # the reference classifier itself is sound
    assert np.isfinite(quality.frechet) and quality.frechet > 0
    assert set(quality.group_frechet) == {"own", "missing"}
    assert all(np.isfinite(v) and v > 0 for v in quality.group_frechet.values())
    report = format_quality(quality, names, "t", groups)
    assert "mean" in report and "own [0, 1]: accuracy" in report
    save_grid(load_split("mnist-10k").test, fake, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
