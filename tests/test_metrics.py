import numpy as np
import pytest

from regl.train import metrics

LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # right
        [0.3, 0.6, 0.1],  # wrong (1)
        [0.2, 0.7, 0.1],  # right
        [0.1, 0.8, 0.1],  # right
        [0.5, 0.1, 0.4],  # wrong (0)
        [0.1, 0.2, 0.7],  # right
    ]
)


def test_accuracy_and_per_class():
    assert metrics.accuracy(LABELS, PROBS) == pytest.approx(4 / 6)
    assert metrics.per_class_accuracy(LABELS, PROBS, 4)[:3].tolist() == [0.5, 1.0, 0.5]
    assert np.isnan(metrics.per_class_accuracy(LABELS, PROBS, 4)[3])


def test_minority_accuracy():
    per_class = np.array([0.5, 1.0, 0.25])
    assert metrics.minority_accuracy(per_class, (0, 2)) == pytest.approx(0.375)
    assert metrics.minority_accuracy(per_class, ()) is None


def test_macro_auc_matches_hand_computation():
    # class 0 scores: positives {0.8, 0.3}, negatives {0.2, 0.1, 0.5, 0.1}: pairs won 4 + 3 = 7 of 8
    # class 1 scores: positives {0.7, 0.8}, negatives {0.1, 0.6, 0.1, 0.2}: 8 of 8
    # class 2 scores: positives {0.4, 0.7}, negatives {0.1, 0.1, 0.1, 0.1}: 8 of 8
    assert metrics.macro_auc(LABELS, PROBS) == pytest.approx((7 / 8 + 1 + 1) / 3)


def test_personalized_subset_follows_client_distribution():
    test_labels = np.repeat(np.arange(4), 100)
    idx = metrics.personalized_test_indices(test_labels, np.array([30, 10, 0, 0]), size=80, seed=0)
    counts = np.bincount(test_labels[idx], minlength=4)
    assert counts.tolist() == [60, 20, 0, 0]
    assert len(np.unique(idx)) == len(idx)
