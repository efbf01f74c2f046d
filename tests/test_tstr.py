"""Precision/recall, train-on-synthetic-test-on-real and saved generated sets, on cases with known answers."""

import json

import numpy as np
import pytest

from regl.cli import main
from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate import fidelity, generated_sets
from regl.generate.fidelity import class_precision_recall, knn_radii, precision_recall
from regl.generate.generated_sets import first_per_class, load_generated, save_generated, saved_part
from regl.generate.tstr import draw_per_class, parse_counts, train_on_synthetic

SETTINGS = {"base": "b", "lora": "", "lora_scale": None, "steps": 2, "guidance": 3.0, "scheduler": "dpm", "seed": 0}


def column(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None]


def test_identical_sets_have_precision_and_recall_one():
    points = np.random.default_rng(0).normal(size=(50, 4))
    assert precision_recall(points, points.copy()) == (1.0, 1.0)


def test_disjoint_far_apart_sets_have_precision_and_recall_zero():
    rng = np.random.default_rng(0)
    assert precision_recall(rng.normal(size=(40, 3)), 1000 + rng.normal(size=(40, 3))) == (0.0, 0.0)


def test_one_dimensional_cases_worked_by_hand():
    real = column(0, 1, 2, 3)  # k = 1: every ball has radius 1, the real manifold is [-1, 4]
    assert knn_radii(real, k=1).tolist() == [1, 1, 1, 1]
    # mode collapse: every generated sample is realistic, but only 0 and 1 of the real ones are drawn
    assert precision_recall(real, column(0, 0.5, 1), k=1) == (1.0, 0.5)
    # an outlier at 10 falls outside the real manifold; its own ball (radius 9.6) covers every real sample
    assert precision_recall(real, column(0, 0.2, 0.4, 10), k=1) == (0.75, 1.0)


def test_two_dimensional_case_worked_by_hand():
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)  # k = 1: radius 1 each
    generated = np.array([[0.5, 0.5], [3, 3], [2, 0], [0, 3]], dtype=np.float32)
    # inside: the centre, and (2, 0) on the rim of (1, 0)'s ball; (3, 3) and (0, 3) are too far
    # every corner is 0.71 from the centre, whose ball reaches (2, 0) at 1.58
    assert precision_recall(corners, generated, k=1) == (0.5, 1.0)


def test_distances_in_slices_match_all_at_once(monkeypatch):
    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(60, 5)), rng.normal(size=(45, 5)) + 0.5
    whole = knn_radii(real), precision_recall(real, generated)
    monkeypatch.setattr(fidelity, "CHUNK_ELEMENTS", 7)  # one row of distances at a time
    np.testing.assert_array_equal(knn_radii(real), whole[0])
    assert precision_recall(real, generated) == whole[1]


def test_per_class_figures_use_equal_numbers_of_each_side():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(30, 3)) + np.repeat([0, 100], [10, 20])[:, None]
    real_labels = np.repeat([0, 1], [10, 20])
    generated = np.concatenate([real[:10], 500 + rng.normal(size=(12, 3))])  # class 0 exact, class 1 far away
    generated_labels = np.repeat([0, 1], [10, 12])
    result = class_precision_recall(real, real_labels, generated, generated_labels, ("a", "b"))
    assert result.samples_per_class == [10, 12]
    assert result.per_class_precision == [1.0, 0.0] and result.per_class_recall == [1.0, 0.0]
    assert result.precision == pytest.approx(10 / 22) and result.recall == pytest.approx(10 / 22)
    with pytest.raises(ReglError, match="class 'b'"):
        class_precision_recall(real, real_labels, generated[:13], generated_labels[:13], ("a", "b"))


def labelled(labels: list[int], names=("a", "b")) -> ImageDataset:
    """Images whose first pixel is their index, so a test can tell which were picked."""
    x = np.zeros((len(labels), 28, 28, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(len(labels))
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), names)


def test_first_per_class_takes_the_first_n_of_each_class_in_order():
    data = labelled([1, 0, 1, 1, 0, 0, 1])
    picked = first_per_class(data, 2)
    assert picked.x[:, 0, 0, 0].tolist() == [0, 1, 2, 4]
    assert picked.y.tolist() == [1, 0, 1, 0]
    assert first_per_class(data, 3).x[:, 0, 0, 0].tolist()[:4] == [0, 1, 2, 3]  # nested: the 2 are among the 3
    with pytest.raises(ReglError, match="3 images of class 'a', 4 are needed"):
        first_per_class(data, 4)


def test_tstr_counts_are_parsed_in_ascending_order():
    assert parse_counts("1000, 100,500") == [100, 500, 1000]
    assert parse_counts("") == []


def test_real_draws_are_seeded_and_nested():
    pool = labelled([0, 1] * 20)
    small, large = draw_per_class(pool, 3, seed=5), draw_per_class(pool, 8, seed=5)
    for c in (0, 1):
        assert set(small.x[small.y == c, 0, 0, 0]) <= set(large.x[large.y == c, 0, 0, 0])
    np.testing.assert_array_equal(draw_per_class(pool, 3, seed=5).x, small.x)
    assert not np.array_equal(draw_per_class(pool, 3, seed=6).x, small.x)


def separable(per_class: int, seed: int) -> ImageDataset:
    """Dark and light 28×28 images: any classifier worth the name separates them."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], per_class)
    x = np.where(y == 0, 0, 255)[:, None, None, None] + rng.integers(-10, 11, (len(y), 28, 28, 1))
    return ImageDataset(np.clip(x, 0, 255).astype(np.uint8), y, ("dark", "light"))


def test_tstr_on_copies_of_real_images_matches_real_training():
    public = separable(64, seed=0)
    # 20 epochs: at 32 per class an epoch is one step, and 10 left some seeds' starts at chance (0.5) on both sides
    rows = train_on_synthetic(public, public, separable(20, seed=1), [32, 64], epochs=20, seed=0)
    assert [(r.per_class, r.real_per_class) for r in rows] == [(32, 32), (64, 64)]
    assert all(r.generated_accuracy == r.real_accuracy == 1.0 and r.ratio == 1.0 for r in rows)


def test_tstr_caps_the_real_side_at_what_the_public_pool_holds(monkeypatch):
    from regl.generate import tstr

    trained = []

    def fake_train_and_test(train_set, test, epochs, seed):
        trained.append(len(train_set))
        return len(train_set) / 100

    monkeypatch.setattr(tstr, "train_and_test", fake_train_and_test)
    rows = train_on_synthetic(labelled([0, 1] * 10), labelled([0, 1] * 3), labelled([0, 1]), [5, 2, 4], 1, 0)
    assert [(r.per_class, r.real_per_class) for r in rows] == [(2, 2), (4, 3), (5, 3)]
    assert [r.ratio for r in rows] == pytest.approx([1.0, 8 / 6, 10 / 6])
    assert trained == [4, 4, 6, 8, 10]  # one real run at the pool's 3 per class serves 4 and 5
    with pytest.raises(ReglError, match="holds 10 images of class 'a', 11 are needed"):
        train_on_synthetic(labelled([0, 1] * 10), labelled([0, 1] * 3), labelled([0, 1]), [11], 1, 0)
    with pytest.raises(ReglError, match="public pool holds no images of b"):
        train_on_synthetic(labelled([0, 1] * 10), labelled([0, 0]), labelled([0, 1]), [2], 1, 0)


def test_saved_generated_sets_load_back_and_mismatches_are_refused(tmp_path):
    data = labelled([0, 1, 0, 1])
    save_generated(tmp_path / "set.npz", data, SETTINGS)
    loaded, settings = load_generated(tmp_path / "set.npz", ("a", "b"), 28, 1)
    np.testing.assert_array_equal(loaded.x, data.x)
    assert loaded.y.tolist() == [0, 1, 0, 1] and settings == SETTINGS
    with pytest.raises(ReglError, match="holds 2 classes, the dataset has 3"):
        load_generated(tmp_path / "set.npz", ("a", "b", "c"), 28, 1)
    with pytest.raises(ReglError, match="is of classes a, b, not a, z"):
        load_generated(tmp_path / "set.npz", ("a", "z"), 28, 1)
    with pytest.raises(ReglError, match=r"shape \(28, 28, 1\), the dataset's are uint8 \(32, 32, 3\)"):
        load_generated(tmp_path / "set.npz", ("a", "b"), 32, 3)
    with pytest.raises(ReglError, match="holds 2 images of class 'a', 3 are needed"):
        load_generated(tmp_path / "set.npz", ("a", "b"), 28, 1, per_class=3)
    with pytest.raises(ReglError, match="does not exist"):
        load_generated(tmp_path / "missing.npz", ("a", "b"), 28, 1)
    (tmp_path / "junk.npz").write_text("not an npz")
    with pytest.raises(ReglError, match="cannot read generated set"):
        load_generated(tmp_path / "junk.npz", ("a", "b"), 28, 1)


def test_a_saved_set_is_continued_only_with_its_own_settings(tmp_path):
    settings = {**SETTINGS, "base_fingerprint": "f", "template": "a {}", "seeds": 2, "per_class": 3}
    assert saved_part(tmp_path / "set.npz", settings, ("a", "b"), 28, 1) is None
    save_generated(tmp_path / "set.npz", labelled([0, 0]), settings)
    part, saved = saved_part(tmp_path / "set.npz", settings, ("a", "b"), 28, 1)
    assert part.y.tolist() == [0, 0] and saved == settings
    with pytest.raises(ReglError, match=r"other settings \(guidance 3.0, not 1.5\); choose another file"):
        saved_part(tmp_path / "set.npz", {**settings, "guidance": 1.5}, ("a", "b"), 28, 1)
    with pytest.raises(ReglError, match=r"other settings \(per_class 3, not 4\)"):
        saved_part(tmp_path / "set.npz", {**settings, "per_class": 4}, ("a", "b"), 28, 1)
    with pytest.raises(ReglError, match=r"is unfinished \(2 of 6 images\): rerun the command"):
        load_generated(tmp_path / "set.npz", ("a", "b"), 28, 1, per_class=1)
    save_generated(tmp_path / "old.npz", labelled([0, 1]), SETTINGS)  # saved before sets could be continued
    with pytest.raises(ReglError, match=r"base_fingerprint '\(not recorded\)', not 'f'"):
        saved_part(tmp_path / "old.npz", settings, ("a", "b"), 28, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tstr", "100,0"], "between 1 and"),
        (["--tstr", "-5"], "between 1 and"),
        (["--tstr", "10,1.5"], "whole numbers"),
        (["--tstr", "10,ten"], "whole numbers"),
        (["--tstr", "10,,20"], "whole numbers"),
        (["--tstr", "10,10"], "list 10 twice"),
        (["--per-class", "3", "--pr-k", "3"], "need more than 3"),
        (["--tstr", "10", "--epochs", "0"], "--epochs must be at least 1"),
        (["--load-generated", "nowhere.npz"], "nowhere.npz does not exist"),
        (["--load-generated", "a.npz", "--save-generated", "b.npz"], "exclude each other"),
    ],
)
def test_bad_eval_generator_input_is_one_line_and_exit_2(capsys, options, message):
    code = main(["eval-generator", "--dataset", "mnist-10k", "--threads", "1", *options])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("regl: error: ") and message in err and err.count("\n") == 1


@pytest.mark.slow
def test_eval_generator_saves_then_reloads_its_set_and_writes_every_figure(capsys, tmp_path, monkeypatch):
    import torch

    from regl.data.datasets import load_split
    from regl.generate import evaluate
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline
    from regl.train.models import SmallCNN

    names = load_split("mnist-10k").test.class_names
    words = prompt_words(class_prompts(names, "a handwritten digit {}"))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    untrained = SmallCNN()  # the reference classifier's training is not under test here; 9 s saved
    monkeypatch.setattr(evaluate, "reference_classifier", lambda dataset, look="none": (untrained, 0.1))
    common = ["eval-generator", "--dataset", "mnist-10k", "--per-class", "4", "--tstr", "2,5", "--epochs", "1"]
    common += ["--threads", "1"]
    generate = ["--base", str(tmp_path / "model"), "--steps", "1", "--guidance", "3"]
    generate += ["--save-generated", str(tmp_path / "set.npz")]
    assert main([*common, *generate, "--out", str(tmp_path / "first.json")]) == 0, capsys.readouterr().err
    first_output = capsys.readouterr().out
    assert "precision" in first_output and "generated/real" in first_output
    assert main([*common, "--load-generated", str(tmp_path / "set.npz"), "--out", str(tmp_path / "again.json")]) == 0
    first, again = (json.loads((tmp_path / name).read_text()) for name in ("first.json", "again.json"))
    assert again["generation"] == {**first["generation"], "loaded_from": str(tmp_path / "set.npz")}
    assert first["generation"]["steps"] == 1 and first["generation"]["per_class"] == 5
    assert again["quality"] == first["quality"] and again["tstr"] == first["tstr"]  # seeded: the same figures
    assert first["tstr"]["train"] == {"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.9}
    assert [row["per_class"] for row in first["tstr"]["rows"]] == [2, 5]
    assert set(first["quality"]["precision_recall"]["precision"]) == set(names)
    assert "packages" in first["environment"]

    # an interrupted generation left the first 13 of its 50 images: the same command continues it
    full, settings = load_generated(tmp_path / "set.npz", names, 28, 1)
    save_generated(tmp_path / "set.npz", full.subset(np.arange(13)), {**settings, "images_per_second": None})
    monkeypatch.setattr(generated_sets, "CHUNK", 16)
    assert main([*common, *generate]) == 0, capsys.readouterr().err
    assert "13 of 50 images are there" in capsys.readouterr().out
    continued, _ = load_generated(tmp_path / "set.npz", names, 28, 1, per_class=5)
    assert continued.y.tolist() == full.y.tolist()
    assert np.abs(continued.x.astype(int) - full.x.astype(int)).max() <= 1  # batch-independent up to rounding
    assert main([*common, *generate]) == 0  # finished: reused, nothing drawn
    assert "already finished" in capsys.readouterr().out
    before = (tmp_path / "set.npz").read_bytes()
    assert main([*common, *generate, "--guidance", "2"]) == 2  # another set's file is not overwritten
    assert "other settings (guidance 3.0, not 2.0)" in capsys.readouterr().err
    assert (tmp_path / "set.npz").read_bytes() == before
