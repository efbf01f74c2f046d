import numpy as np
import pytest

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.fill.mixup import MixupSettings, assign_requests, label_hide_mixup

NAMES = ("a", "b", "c", "d")


def _client(labels, channels=1, side=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (len(labels), side, side, channels), dtype=np.uint8)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), NAMES)


CLIENT = _client([0] * 5 + [1] * 3 + [2] * 8)


def _weighted_mix(data, record):
    """The noise-free mix, in 0..255, rebuilt from the record."""
    sources = data.x[record["indices"]].astype(np.float64)  # N×k×H×W×C
    return np.einsum("nk,nkhwc->nhwc", record["weights"], sources)


def test_weights_follow_the_algorithm():
    _, record = label_hide_mixup(CLIENT, {0: 40, 1: 30}, MixupSettings(), seed=1)
    weights = record["weights"]
    assert weights.shape == (70, 4)
    assert ((weights[:, 0] >= 0.5) & (weights[:, 0] <= 0.75)).all()
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_indices_pick_a_target_of_the_label_and_distinct_others():
    images, record = label_hide_mixup(CLIENT, {0: 40, 2: 30}, MixupSettings(ways=3), seed=2)
    indices = record["indices"]
    assert indices.shape == (70, 3)
    assert np.array_equal(CLIENT.y[indices[:, 0]], images.y)
    assert all(len(set(row)) == 3 for row in indices.tolist())
    assert len(np.unique(CLIENT.y[indices[:, 1:]])) > 1  # the others come from any class


def test_labels_are_exactly_the_requested_ones():
    images, _ = label_hide_mixup(CLIENT, {2: 3, 0: 5, 1: 0}, MixupSettings(), seed=0)
    assert images.y.dtype == np.int64
    assert images.y.tolist() == [0] * 5 + [2] * 3
    assert images.class_names == NAMES
    assert images.x.shape == (8, 6, 6, 1)


def test_without_noise_the_output_is_the_weighted_mix():
    client = _client([0] * 4 + [3] * 6, channels=3, seed=5)
    images, record = label_hide_mixup(client, {0: 20, 3: 10}, MixupSettings(noise_scale=0.0), seed=3)
    assert images.x.shape == (30, 6, 6, 3)
    assert np.abs(images.x - _weighted_mix(client, record)).max() <= 0.5 + 1e-9


def test_noise_has_laplace_scale():
    grey = ImageDataset(np.full((10, 8, 8, 1), 128, np.uint8), np.repeat(np.arange(2), 5), NAMES[:2])
    images, record = label_hide_mixup(grey, {0: 200}, MixupSettings(noise_scale=0.05), seed=4)
    residual = images.x / 255 - _weighted_mix(grey, record) / 255
    assert np.mean(np.abs(residual)) == pytest.approx(0.05, rel=0.05)  # mean |Laplace(b)| = b
    assert abs(np.mean(residual)) < 0.005


def test_single_way_keeps_the_target_image():
    images, record = label_hide_mixup(CLIENT, {1: 5}, MixupSettings(ways=1, noise_scale=0.0), seed=0)
    assert (record["weights"] == 1).all()
    assert np.array_equal(images.x, CLIENT.x[record["indices"][:, 0]])


def test_mixup_is_deterministic_per_seed():
    a, _ = label_hide_mixup(CLIENT, {0: 10, 2: 5}, MixupSettings(), seed=7)
    b, _ = label_hide_mixup(CLIENT, {0: 10, 2: 5}, MixupSettings(), seed=7)
    c, _ = label_hide_mixup(CLIENT, {0: 10, 2: 5}, MixupSettings(), seed=8)
    assert np.array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


def test_empty_request_gives_no_images():
    images, record = label_hide_mixup(CLIENT, {}, MixupSettings(), seed=0)
    assert images.x.shape == (0, 6, 6, 1)
    assert record["weights"].shape == (0, 4)


@pytest.mark.parametrize(
    "requests, settings, message",
    [
        ({3: 2}, MixupSettings(), "holds no images of class 3"),
        ({9: 2}, MixupSettings(), "holds no images of class 9"),
        ({0: -1}, MixupSettings(), "negative"),
        ({0: 2}, MixupSettings(ways=17), "k=17"),
    ],
    ids=["not-held", "out-of-range", "negative", "too-many-ways"],
)
def test_mixup_errors(requests, settings, message):
    with pytest.raises(ReglError, match=message):
        label_hide_mixup(CLIENT, requests, settings, seed=0)


@pytest.mark.parametrize("options", [{"ways": 0}, {"noise_scale": -0.1}, {"target_weight": (0.8, 0.5)}])
def test_bad_settings_are_errors(options):
    with pytest.raises(ReglError):
        MixupSettings(**options)


HOLDINGS = {
    0: np.array([10, 0, 5, 0]),
    1: np.array([30, 4, 0, 0]),
    2: np.array([0, 4, 5, 0]),
}


def test_requests_are_split_in_proportion_to_holdings():
    assignments, unserved = assign_requests({2: {0: 8}, 0: {1: 5}}, HOLDINGS)
    # class 0 for client 2: held 10 by 0 and 30 by 1 → 2 : 6; class 1 for client 0: held 4 and 4 → 3 : 2.
    assert assignments == {0: {2: {0: 2}}, 1: {0: {1: 3}, 2: {0: 6}}, 2: {0: {1: 2}}}
    assert unserved == {}


def test_the_requester_never_produces_for_itself():
    assignments, _ = assign_requests({0: {2: 7}}, HOLDINGS)
    assert assignments == {2: {0: {2: 7}}}  # client 0 holds class 2 too, but asked for it


def test_unheld_labels_are_reported_unserved():
    assignments, unserved = assign_requests({1: {3: 4, 2: 3}, 2: {2: 0}}, HOLDINGS)
    assert unserved == {1: {3: 4}}
    assert assignments == {0: {1: {2: 2}}, 2: {1: {2: 1}}}  # 1.5 : 1.5, the tie goes to client 0


def test_assigned_totals_are_exact():
    rng = np.random.default_rng(0)
    holdings = {c: rng.integers(0, 20, 6) for c in range(7)}
    requests = {c: {label: int(rng.integers(0, 50)) for label in range(6)} for c in range(7)}
    assignments, unserved = assign_requests(requests, holdings)
    for requester, wanted in requests.items():
        for label, n in wanted.items():
            served = sum(by_requester.get(requester, {}).get(label, 0) for by_requester in assignments.values())
            assert served + unserved.get(requester, {}).get(label, 0) == n
    assert all(requester != producer for producer in assignments for requester in assignments[producer])


def test_assign_requests_errors():
    with pytest.raises(ReglError, match="negative"):
        assign_requests({0: {1: -1}}, HOLDINGS)
    with pytest.raises(ReglError, match="4 classes"):
        assign_requests({0: {4: 1}}, HOLDINGS)
    with pytest.raises(ReglError, match="different lengths"):
        assign_requests({0: {1: 1}}, {**HOLDINGS, 3: np.array([1, 2])})
