"""The near-copy audit flags generated images that sit on a training image, and real held-out ones rarely."""

import numpy as np
import pytest

from regl.data.datasets import load_split
from regl.errors import ReglError
from regl.generate import near_copies
from regl.generate.near_copies import audit_record, near_copy_audit, near_copy_scores


@pytest.fixture(scope="module")
def digits():
    """Real digits of every class (the split is sorted by class): 3,000 to train on, 500 held out as the
    reference, 500 more held out as 'generated'."""
    split, rng = load_split("mnist-10k"), np.random.default_rng(0)
    training, test = (data.x[rng.permutation(len(data))] for data in (split.private, split.test))
    return training[:3000], test[:500], test[500:1000]


def brute_force(images: np.ndarray, training: np.ndarray, alpha: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    q, p = (a.reshape(len(a), -1).astype(np.float64) / 255 for a in (images, training))
    distances = np.sort(np.sqrt(((q[:, None, :] - p[None]) ** 2).sum(axis=2)), axis=1)[:, :n]
    mean = distances.mean(axis=1)
    return distances[:, 0], np.divide(distances[:, 0], alpha * mean, out=np.zeros_like(mean), where=mean > 0)


def test_planted_copies_are_flagged_and_held_out_images_are_not(digits):
    training, reference, held_out = digits
    rng = np.random.default_rng(0)
    copied = training[rng.choice(len(training), 100, replace=False)].astype(np.int16)
    copied = np.clip(copied + rng.integers(-3, 4, copied.shape), 0, 255).astype(np.uint8)  # tiny noise
    generated = np.concatenate([copied, held_out[:300]])
    audit = near_copy_audit(generated, training, reference)
    floor = audit["reference_flagged"]  # 1.6% of these held-out digits: real look-alikes exist
    assert floor <= 0.05
    assert 100 / 400 <= audit["flagged"] <= (100 + 300 * (floor + 0.03)) / 400
    assert audit["median_nearest"] < audit["reference_median_nearest"]
    assert (audit["generated"], audit["reference"], audit["alpha"], audit["neighbours"]) == (400, 500, 0.5, 50)

    disjoint = near_copy_audit(held_out, training, reference)
    assert disjoint["flagged"] <= floor + 0.03
    assert disjoint["median_ratio"] == pytest.approx(disjoint["reference_median_ratio"], rel=0.1)


def test_scores_match_a_brute_force_search_in_slices_and_with_duplicates(monkeypatch):
    rng = np.random.default_rng(1)
    training = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    training[100:110] = training[0]  # ties at the neighbours' bound; image 0 sits on 11 training images
    images = np.concatenate([training[:5], rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)])
    monkeypatch.setattr(near_copies, "CHUNK_ELEMENTS", 7 * len(training))  # slices of 7 images
    for n in (2, 20, 500):  # n above the training set's size: all of it
        scores = near_copy_scores(images, training, alpha=0.5, neighbours=n)
        nearest, ratio = brute_force(images, training, 0.5, n)
        np.testing.assert_allclose(scores.nearest, nearest, atol=1e-5)
        np.testing.assert_allclose(scores.ratio, ratio, atol=1e-4)
        assert ratio[0] == 0  # every one of its n nearest at distance 0: a copy
    assert (scores.nearest[:5] == 0).all()  # an exact copy reads 0, not the product's rounding


@pytest.mark.parametrize(
    ("generated", "training", "message"),
    [
        (np.zeros((0, 28, 28, 1), np.uint8), np.zeros((5, 28, 28, 1), np.uint8), "needs generated or reference"),
        (np.zeros((3, 28, 28, 1), np.uint8), np.zeros((0, 28, 28, 1), np.uint8), "needs training images"),
        (np.zeros((3, 28, 28, 3), np.uint8), np.zeros((5, 28, 28, 1), np.uint8), r"images of \(28, 28, 3\)"),
        (np.zeros((3, 28, 28), np.uint8), np.zeros((5, 28, 28, 1), np.uint8), "must be uint8 N×H×W×C"),
        (np.zeros((3, 28, 28, 1), np.float32), np.zeros((5, 28, 28, 1), np.uint8), "must be uint8 N×H×W×C"),
    ],
)
def test_bad_input_is_named(generated, training, message):
    with pytest.raises(ReglError, match=message):
        near_copy_audit(generated, training, training)


def test_bad_criterion_is_named():
    images = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(ReglError, match="α > 0 and n ≥ 2"):
        near_copy_scores(images, images, alpha=0.0)
    with pytest.raises(ReglError, match="α > 0 and n ≥ 2"):
        near_copy_scores(images, images, neighbours=1)  # the nearest compared with itself alone
    with pytest.raises(ReglError, match="same α and n"):
        audit_record(near_copy_scores(images, images), near_copy_scores(images, images, neighbours=2))
