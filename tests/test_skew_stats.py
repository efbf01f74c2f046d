import math

import numpy as np
import pytest

from regl.data.skew_stats import format_table, save_heatmap, skew_stats


def test_statistics_match_hand_computed_values(tmp_path):
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 2])
    clients = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])]
    stats = skew_stats(clients, labels, num_classes=3)
    assert stats.histogram.tolist() == [[3, 1, 0], [1, 2, 1]]
    assert math.isinf(stats.local_imbalance[0])
    assert stats.local_imbalance[1] == 2.0
    assert stats.global_imbalance == 4.0  # totals [4, 3, 1]
    # CS_0 = (3*4 + 1*3) / (sqrt(10) * sqrt(26)); CS_1 = (4 + 6 + 1) / (sqrt(6) * sqrt(26))
    assert stats.cosine_similarity[0] == pytest.approx(15 / math.sqrt(260))
    assert stats.cosine_similarity[1] == pytest.approx(11 / math.sqrt(156))
    assert stats.unassigned == 0
    table = format_table(stats, ("a", "b", "c"))
    assert "inf" in table and "Γ = 4.0" in table
    save_heatmap(stats, ("a", "b", "c"), tmp_path / "h.png", "t")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unassigned_samples_are_counted():
    stats = skew_stats([np.array([0])], np.array([0, 1, 1]), num_classes=2)
    assert stats.unassigned == 2
