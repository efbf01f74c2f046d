import json

import numpy as np
import pytest

from regl.errors import ReglError
from regl.fill.plan import SOURCES, parse_source_mix, plan_fill, split_exactly

DIFFUSION = {"diffusion": 1.0}


def _assert_counts(plan, expected):
    for source in SOURCES:
        assert plan.counts[source].dtype == np.int64
        assert plan.counts[source].tolist() == expected.get(source, [0] * len(plan.per_class())), source


def test_balanced_client_is_filled_evenly_under_a_uniform_target():
    # n = 40, S = 20, desired 15 per class, shortfall 5 each; 5 split 3:1 → 3.75 / 1.25 → 4 / 1.
    plan = plan_fill(np.array([10, 10, 10, 10]), 0.5, {"diffusion": 3, "noise": 1})
    _assert_counts(plan, {"diffusion": [4, 4, 4, 4], "noise": [1, 1, 1, 1]})
    assert plan.total() == 20


def test_balanced_client_is_filled_by_the_target():
    # n = 12, S = 12, desired 6, 6, 12 → shortfalls 2, 2, 8.
    assert plan_fill(np.array([4, 4, 4]), 1.0, DIFFUSION, np.array([1, 1, 2])).per_class().tolist() == [2, 2, 8]
    # desired 30, 10 → only class 0 falls short.
    assert plan_fill(np.array([10, 10]), 1.0, DIFFUSION, np.array([3, 1])).per_class().tolist() == [20, 0]


def test_single_class_client_fills_only_the_other_classes():
    # n = 30, S = 6, desired 12 each → shortfalls 0, 12, 12.
    _assert_counts(plan_fill(np.array([30, 0, 0]), 0.2, DIFFUSION), {"diffusion": [0, 3, 3]})


@pytest.mark.parametrize(
    "counts, supplement",
    [([10, 20], 0.0), ([3, 0], 0.1), ([0, 0, 0], 1.0)],
    ids=["no-supplement", "rounds-to-zero", "no-images"],
)
def test_nothing_to_add_gives_an_empty_plan(counts, supplement):
    plan = plan_fill(np.array(counts), supplement, DIFFUSION)
    _assert_counts(plan, {})
    assert plan.total() == 0
    assert plan.per_class().tolist() == [0] * len(counts)


def test_rounding_gives_exact_totals():
    # S = 7; desired 14/3 each → shortfalls 0, 4.67, 4.67 → quotas 3.5, 3.5; the tie goes to class 1.
    assert plan_fill(np.array([7, 0, 0]), 1.0, DIFFUSION).per_class().tolist() == [0, 4, 3]
    # S = 4.5 rounded half up = 5; desired 14/3 → shortfalls 0, 5/3, 11/3 → quotas 1.5625, 3.4375.
    assert plan_fill(np.array([5, 3, 1]), 0.5, DIFFUSION).per_class().tolist() == [0, 2, 3]


def test_source_split_is_exact():
    # S = 5 all to class 1; 5 split 1:1:1 → 1.67 each → the two lowest-indexed sources get the extra.
    plan = plan_fill(np.array([10, 0]), 0.5, {"diffusion": 1, "noise": 1, "mixup": 1})
    _assert_counts(plan, {"diffusion": [0, 2], "noise": [0, 2], "mixup": [0, 1]})


def test_random_plans_add_up_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(0, 50, size=rng.integers(1, 8))
        supplement = float(rng.choice([0.1, 0.2, 0.37, 1.0, 2.5]))
        mix = {"diffusion": float(rng.integers(0, 4)), "noise": float(rng.integers(0, 4)), "mixup": 1.0}
        plan = plan_fill(counts, supplement, mix)
        assert plan.total() == int(np.floor(supplement * counts.sum() + 0.5))
        assert (plan.per_class() >= 0).all()
        for source, weight in mix.items():
            if weight == 0:
                assert plan.counts[source].sum() == 0


def test_plan_to_json_is_plain():
    plan = plan_fill(np.array([30, 0, 0]), 0.2, {"diffusion": 1, "mixup": 1})
    assert json.loads(json.dumps(plan.to_json())) == {
        "counts": {"diffusion": [0, 2, 2], "noise": [0, 0, 0], "mixup": [0, 1, 1], "public-equal": [0, 0, 0]},
        "per_class": [0, 3, 3],
        "total": 6,
    }


def test_split_exactly():
    assert split_exactly(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert split_exactly(7, np.array([0, 2, 0, 5])).tolist() == [0, 2, 0, 5]
    assert split_exactly(0, np.array([1, 2])).tolist() == [0, 0]
    assert split_exactly(3, np.array([0.1, 0.2, 0.7])).tolist() == [0, 1, 2]  # 0.3, 0.6, 2.1


@pytest.mark.parametrize(
    "target",
    [[], [1, 1], [1, -1, 1], [0, 0, 0], [1, np.nan, 1]],
    ids=["empty", "wrong-length", "negative", "all-zero", "nan"],
)
def test_bad_target_is_an_error(target):
    with pytest.raises(ReglError, match="target"):
        plan_fill(np.array([1, 2, 3]), 0.5, DIFFUSION, np.array(target, dtype=float))


@pytest.mark.parametrize(
    "mix",
    [{}, {"gan": 1.0}, {"diffusion": -1.0, "noise": 2.0}, {"diffusion": 0.0}],
    ids=["empty", "unknown", "negative", "all-zero"],
)
def test_bad_source_mix_is_an_error(mix):
    with pytest.raises(ReglError, match="source"):
        plan_fill(np.array([1, 2, 3]), 0.5, mix)


def test_bad_counts_or_supplement_are_errors():
    with pytest.raises(ReglError, match="supplement"):
        plan_fill(np.array([1, 2]), -0.1, DIFFUSION)
    with pytest.raises(ReglError, match="class counts"):
        plan_fill(np.array([1, -2]), 0.5, DIFFUSION)
    with pytest.raises(ReglError, match="class counts"):
        plan_fill(np.array([], dtype=np.int64), 0.5, DIFFUSION)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("diffusion=3,noise=1", {"diffusion": 3.0, "noise": 1.0, "mixup": 0.0, "public-equal": 0.0, "oracle": 0.0}),
        (
            " mixup = 0.5 , diffusion=75 ",
            {"diffusion": 75.0, "noise": 0.0, "mixup": 0.5, "public-equal": 0.0, "oracle": 0.0},
        ),
        ("noise=1", {"diffusion": 0.0, "noise": 1.0, "mixup": 0.0, "public-equal": 0.0, "oracle": 0.0}),
    ],
)
def test_parse_source_mix(text, expected):
    assert parse_source_mix(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "diffusion",
        "diffusion=",
        "=3",
        "diffusion=x",
        "gan=1",
        "diffusion=1,diffusion=2",
        "diffusion=-1",
        "diffusion=0",
        "diffusion:noise=3:1",
        "diffusion=inf",
        "diffusion=nan",
        "diffusion=1,",
    ],
)
def test_parse_source_mix_rejects(text):
    with pytest.raises(ReglError, match="source mix"):
        parse_source_mix(text)


def test_a_plan_names_the_oracle_only_when_it_uses_it():
    without = plan_fill(np.array([5, 0]), 1.0, {"diffusion": 1.0})
    assert "oracle" not in without.to_json()["counts"]  # store keys of plans made before the oracle stay
    oracle = plan_fill(np.array([5, 0]), 1.0, {"oracle": 1.0})
    assert oracle.to_json()["counts"]["oracle"] == [0, 5]
