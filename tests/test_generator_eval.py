import json

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


@pytest.mark.slow
def test_generate_then_measure_end_to_end_on_a_tiny_pipeline(tmp_path):
    from regl.data.datasets import load_split
    from regl.generate.evaluate import format_quality, measure_generated, save_grid
    from regl.generate.generated_sets import generated_set
    from regl.generate.generator import Generator
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    test = load_split("mnist-10k").test
    names = test.class_names
    words = prompt_words(class_prompts(names, "a handwritten digit {}"))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(tmp_path / "model")
    generator = Generator(tmp_path / "model", names, "a handwritten digit {}")
    groups = {"own": [0, 1], "missing": list(range(2, 10))}
    fake, speed = generated_set(generator, list(range(10)), 5, 0, test, steps=2)
    assert fake.x.shape == (50, 28, 28, 1)
    quality = measure_generated(fake, "mnist-10k", per_class=4, groups=groups, images_per_second=speed)
    assert quality.per_class == 4 and len(quality.per_class_accuracy) == 10
    assert quality.real_test_accuracy > 0.9  # the reference classifier itself is sound
    assert np.isfinite(quality.frechet) and quality.frechet > 0
    assert set(quality.group_frechet) == {"own", "missing"}
    assert all(np.isfinite(v) and v > 0 for v in quality.group_frechet.values())
    assert quality.fidelity.k == 3 and quality.fidelity.samples_per_class == [4] * 10
    figures = [*quality.fidelity.per_class_precision, *quality.fidelity.per_class_recall]
    assert all(0 <= v <= 1 for v in figures)
    report = format_quality(quality, names, "t", groups)
    assert "all" in report and "own [0, 1]: accuracy" in report and "k = 3" in report
    save_grid(test, fake, tmp_path / "new" / "grid.png")  # its folder is made
    assert (tmp_path / "new" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert [f.name for f in (tmp_path / "new").iterdir()] == ["grid.png"]  # no temporary file left


@pytest.mark.slow
def test_sampler_sweep_measures_each_row_once_and_resumes(tmp_path, monkeypatch):
    from regl.compute import Compute
    from regl.data.datasets import load_split
    from regl.generate import sampler_sweep
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    names = load_split("mnist-10k").test.class_names
    words = prompt_words(class_prompts(names, "a handwritten digit {}"))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(tmp_path / "model")
    rows = sampler_sweep.sweep_rows(["dpm", "unipc"], [2], [1.0, 1.5])
    assert [r.name for r in rows] == ["dpm-s2-g1", "dpm-s2-g1.5", "unipc-s2-g1", "unipc-s2-g1.5"]
    out = tmp_path / "sweep"
    table = sampler_sweep.run_sweep(tmp_path / "model", "mnist-10k", rows[:2], 5, 0, 1, out, Compute("cpu"))
    assert sorted(p.name for p in out.iterdir()) == ["dpm-s2-g1.5.json", "dpm-s2-g1.json", "sweep.json", "table.md"]
    assert table == (out / "table.md").read_text() and table.count("\n| dpm | ") == 2
    row = json.loads((out / "dpm-s2-g1.json").read_text())
    assert row["images_per_second"] > 0 and 0 <= row["tstr_accuracy"] <= 1 and 0 <= row["recall"] <= 1

    measured = []
    real = sampler_sweep._measure_row
    monkeypatch.setattr(
        sampler_sweep, "_measure_row", lambda g, d, row, *a: measured.append(row.name) or real(g, d, row, *a)
    )
    sampler_sweep.run_sweep(tmp_path / "model", "mnist-10k", rows, 5, 0, 1, out, Compute("cpu"))
    assert measured == ["unipc-s2-g1", "unipc-s2-g1.5"]  # the dpm rows were kept
    assert (out / "table.md").read_text().count("\n| ") == 4


def test_sampler_sweep_refuses_bad_rows():
    from regl.errors import ReglError
    from regl.generate.sampler_sweep import sweep_rows

    with pytest.raises(ReglError, match="unknown sampler heun"):
        sweep_rows(["heun"], [4], [1.0])
    with pytest.raises(ReglError, match="guidance ≥ 1"):
        sweep_rows(["dpm"], [4], [0.5])
