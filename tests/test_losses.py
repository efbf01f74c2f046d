"""Every local loss against a value worked out by hand on a two-sample, three-class batch; FedProx's term."""

import math

import numpy as np
import pytest
import torch

from regl.errors import ReglError
from regl.train.losses import effective_number_weights, make_loss, proximal_term, ratio_weights

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LABELS = torch.tensor([0, 1])
COUNTS = np.array([90.0, 10.0, 0.0])  # the client lacks class 2


def _ce(rows: list[list[float]], labels: list[int]) -> list[float]:
    """-log softmax by hand, one value per row."""
    return [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels)]


def _value(name: str, ratio=None) -> float:
    return float(make_loss(name, COUNTS, ratio)(LOGITS, LABELS))


def test_cross_entropy():
    assert _value("ce") == pytest.approx(np.mean(_ce(LOGITS.tolist(), [0, 1])), rel=1e-6)


def test_focal():
    ce = _ce(LOGITS.tolist(), [0, 1])
    expected = np.mean([(1 - math.exp(-c)) ** 2 * c for c in ce])
    assert _value("focal") == pytest.approx(expected, rel=1e-6)


def test_class_balanced():
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**90), (1 - beta) / (1 - beta**10)]
    w = [2 * r / sum(raw) for r in raw]  # the two held classes average 1
    ce = _ce(LOGITS.tolist(), [0, 1])
    assert _value("class-balanced") == pytest.approx((w[0] * ce[0] + w[1] * ce[1]) / 2, rel=1e-6)


def test_balanced_softmax_adds_log_counts():
    shift = [math.log(90), math.log(10), math.log(1)]  # an absent class counts as 1
    rows = [[v + s for v, s in zip(row, shift)] for row in LOGITS.tolist()]
    assert _value("balanced-softmax") == pytest.approx(np.mean(_ce(rows, [0, 1])), rel=1e-6)


def test_fedlc_subtracts_tau_over_fourth_root():
    shift = [-(90**-0.25), -(10**-0.25), -1.0]
    rows = [[v + s for v, s in zip(row, shift)] for row in LOGITS.tolist()]
    assert _value("fedlc") == pytest.approx(np.mean(_ce(rows, [0, 1])), rel=1e-6)


def test_fedrs_scales_the_missing_class():
    rows = [[v * s for v, s in zip(row, [1.0, 1.0, 0.5])] for row in LOGITS.tolist()]
    assert _value("fedrs") == pytest.approx(np.mean(_ce(rows, [0, 1])), rel=1e-6)


def test_ratio_loss_weights_by_class():
    ratio = np.array([0.5, 4.0, 20.0])
    ce = _ce(LOGITS.tolist(), [0, 1])
    assert _value("ratio", ratio) == pytest.approx(((1 + 0.05) * ce[0] + (1 + 0.4) * ce[1]) / 2, rel=1e-6)
    assert _value("ratio") == pytest.approx(_value("ce"))  # before the monitor sees imbalance
    assert ratio_weights(ratio).tolist() == pytest.approx([1.05, 1.4, 3.0])
    with pytest.raises(ReglError, match="2 classes"):
        make_loss("ratio", COUNTS, np.ones(2))


def test_unknown_loss_is_named():
    with pytest.raises(ReglError, match="unknown loss 'hinge'"):
        make_loss("hinge", COUNTS)


def test_class_balanced_weights_leave_absent_classes_out():
    weights = effective_number_weights(np.array([5000.0, 5.0, 0.0]))
    assert weights[2] == 0 and weights[:2].mean() == pytest.approx(1.0)
    assert weights[1] > 100 * weights[0]  # the rare class counts far more


def test_fedprox_term_is_zero_at_the_global_model_and_pulls_towards_it():
    model = torch.nn.Linear(3, 2)
    anchor = [p.detach().clone() for p in model.parameters()]
    term = proximal_term(model, anchor, mu=0.3)
    assert term.item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.zero_grad()
    term = proximal_term(model, anchor, mu=0.3)
    expected = 0.15 * sum(((p - a) ** 2).sum().item() for p, a in zip(model.parameters(), anchor))
    assert term.item() == pytest.approx(expected, rel=1e-6)
    term.backward()
    for p, a in zip(model.parameters(), anchor):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - a))
