"""The federated generator's server step on toy adapters, against hand-computed results."""

import numpy as np
import pytest

from regl.errors import ReglError
from regl.fl.adapter_aggregation import aggregate, private_aggregate, products, refactorise, update_norm

A, B = "unet.up.attn.to_q.lora_A.weight", "unet.up.attn.to_q.lora_B.weight"


def _adapter(a, b) -> dict[str, np.ndarray]:
    return {A: np.asarray(a, dtype=np.float32), B: np.asarray(b, dtype=np.float32)}


GLOBAL = _adapter([[1.0, 0.0, 2.0]], [[0.0], [0.0]])  # rank 1: A 1×3, B 2×1
ONE = _adapter([[1.0, 0.0, 2.0]], [[1.0], [2.0]])
TWO = _adapter([[3.0, 1.0, 0.0]], [[4.0], [-2.0]])


def test_fedavg_is_the_hand_computed_weighted_mean_of_each_factor():
    new = aggregate(GLOBAL, [ONE, TWO], [1, 3], "fedavg")
    np.testing.assert_allclose(new[A], [[(1 + 9) / 4, 3 / 4, 2 / 4]])
    np.testing.assert_allclose(new[B], [[(1 + 12) / 4], [(2 - 6) / 4]])


def test_ffa_keeps_a_and_averages_b_so_the_product_is_the_mean_product():
    two_from_global = _adapter(GLOBAL[A], [[4.0], [-2.0]])  # under FFA every client trains B only
    new = aggregate(GLOBAL, [ONE, two_from_global], [1, 3], "ffa")
    np.testing.assert_array_equal(new[A], GLOBAL[A])
    np.testing.assert_allclose(new[B], [[13 / 4], [-4 / 4]])
    mean_product = (
        0.25 * products(ONE)["unet.up.attn.to_q.weight"] + 0.75 * products(two_from_global)["unet.up.attn.to_q.weight"]
    )
    np.testing.assert_allclose(products(new)["unet.up.attn.to_q.weight"], mean_product, rtol=1e-6)


def test_fedavg_of_factors_is_not_the_mean_of_products_but_product_averaging_is():
    layer = "unet.up.attn.to_q.weight"
    mean_product = 0.5 * products(ONE)[layer] + 0.5 * products(TWO)[layer]
    factor_mean = aggregate(GLOBAL, [ONE, TWO], [1, 1], "fedavg")
    assert not np.allclose(products(factor_mean)[layer], mean_product)
    # two rank-1 products average to rank 2: the rank-1 re-factorisation is its best rank-1 fit
    refit = aggregate(GLOBAL, [ONE, TWO], [1, 1], "product")
    u, s, vt = np.linalg.svd(mean_product)
    np.testing.assert_allclose(products(refit)[layer], s[0] * np.outer(u[:, 0], vt[0]), rtol=1e-5, atol=1e-6)
    assert refit[A].shape == GLOBAL[A].shape and refit[B].shape == GLOBAL[B].shape


def test_refactorise_is_exact_when_the_rank_suffices():
    rng = np.random.default_rng(0)
    product = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 7))
    b, a = refactorise(product, 2)
    np.testing.assert_allclose(b @ a, product, atol=1e-10)


def test_convolution_factors_are_multiplied_as_matrices():
    rng = np.random.default_rng(1)
    conv = {
        "unet.conv1.lora_A.weight": rng.normal(size=(2, 3, 3, 3)).astype(np.float32),
        "unet.conv1.lora_B.weight": rng.normal(size=(4, 2, 1, 1)).astype(np.float32),
    }
    other = {name: value * 2 for name, value in conv.items()}
    new = aggregate(conv, [conv, other], [1, 1], "product")
    assert {name: value.shape for name, value in new.items()} == {name: value.shape for name, value in conv.items()}
    expected = 0.5 * products(conv)["unet.conv1.weight"] + 0.5 * products(other)["unet.conv1.weight"]
    np.testing.assert_allclose(products(new)["unet.conv1.weight"], expected, rtol=1e-4, atol=1e-5)  # rank 2 suffices


@pytest.mark.parametrize("rule", ["ffa", "fedavg", "product"])
def test_a_client_that_sent_nothing_leaves_the_adapter_unchanged(rule):
    for updates, weights in (([], []), ([ONE], [0.0])):
        new = aggregate(GLOBAL, updates, weights, rule)
        assert {name: value.tolist() for name, value in new.items()} == {
            name: value.tolist() for name, value in GLOBAL.items()
        }


def test_a_zero_weight_client_does_not_count():
    assert aggregate(GLOBAL, [ONE, TWO], [1, 0], "fedavg")[B].tolist() == ONE[B].tolist()


def test_bad_input_is_named():
    with pytest.raises(ReglError, match="unknown adapter aggregation 'median'"):
        aggregate(GLOBAL, [ONE], [1], "median")
    with pytest.raises(ReglError, match="1 client adapters but 2 weights"):
        aggregate(GLOBAL, [ONE], [1, 2], "fedavg")
    with pytest.raises(ReglError, match="other layers"):
        aggregate(GLOBAL, [{A: ONE[A]}], [1], "fedavg")
    with pytest.raises(ReglError, match="lora_A / lora_B pairs"):
        aggregate({A: ONE[A]}, [{A: ONE[A]}], [1], "ffa")


def test_kept_rounds_resume_from_the_last_complete_round(tmp_path):
    from dataclasses import replace

    from regl.fill.settings import FillSettings
    from regl.fl.federated_generator import AdapterRounds, _npz_bytes
    from regl.fl.settings import ExperimentSettings

    settings = ExperimentSettings(fill=FillSettings(mode="diffusion", lora="federated", store=str(tmp_path)))
    kept = AdapterRounds(settings)
    assert kept.latest(5) == (0, None, [], {})
    data = {"0": "aaaa", "1": "bbbb"}
    kept.save(1, ONE, [{"round": 1}], data)
    kept.save(2, TWO, [{"round": 1}, {"round": 2}], data)
    (kept.folder / "round-3.npz").write_bytes(_npz_bytes(GLOBAL))  # killed before round 3's record
    done, adapter, rounds, digests = kept.latest(5)
    assert (done, rounds, digests) == (2, [{"round": 1}, {"round": 2}], data)
    assert {name: value.tolist() for name, value in adapter.items()} == {n: v.tolist() for n, v in TWO.items()}
    assert kept.latest(1)[0] == 1 and kept.latest(1)[1][B].tolist() == ONE[B].tolist()  # fewer rounds asked
    other = AdapterRounds(replace(settings, fill=replace(settings.fill, adapter_steps=99)))
    assert other.folder != kept.folder and other.latest(5) == (0, None, [], {})


def _layer(rng: np.random.Generator, rank: int, size: int, b_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A rank-`rank` adapter of one size×size layer, float64 so the tests' arithmetic is exact."""
    return {A: rng.normal(size=(rank, size)), B: b_scale * rng.normal(size=(size, rank))}


def test_dp_clips_the_whole_update_as_one_vector_and_leaves_a_small_one_as_is():
    # fedavg trains both factors: ΔA = (3, 0, 0), ΔB = (4, 0) has norm 5, scaled to norm 1 as a whole
    # (clipping each factor on its own would give ΔA = (1, 0, 0), ΔB = (1, 0))
    big = _adapter(GLOBAL[A] + [[3.0, 0.0, 0.0]], [[4.0], [0.0]])
    small = _adapter(GLOBAL[A] + [[0.0, 0.3, 0.0]], [[0.0], [0.4]])  # norm 0.5: under the clip
    assert update_norm(GLOBAL, big, "fedavg") == pytest.approx(5.0)
    new = private_aggregate(GLOBAL, [big, small], [1, 1], "fedavg", clip=1.0, noise_multiplier=0.0, seed=0)
    np.testing.assert_allclose(new[A], GLOBAL[A] + [[0.6 / 2, 0.3 / 2, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(new[B], [[0.8 / 2], [0.4 / 2]], rtol=1e-6)
    assert new[A].dtype == new[B].dtype == np.float32


def test_dp_under_ffa_keeps_a_and_clips_the_bs_alone():
    moved_a = _adapter(GLOBAL[A] + 100.0, [[0.3], [0.4]])  # FFA's A is shared: a change to it is not the client's
    assert update_norm(GLOBAL, moved_a, "ffa") == pytest.approx(0.5)
    new = private_aggregate(GLOBAL, [moved_a], [1], "ffa", clip=1.0, noise_multiplier=0.0, seed=0)
    np.testing.assert_array_equal(new[A], GLOBAL[A])
    np.testing.assert_allclose(new[B], [[0.3], [0.4]], rtol=1e-6)


@pytest.mark.parametrize("rule", ["ffa", "fedavg"])
def test_a_huge_update_moves_the_noiseless_mean_by_at_most_clip_over_n(rule):
    rng = np.random.default_rng(2)
    start = _layer(rng, 2, 6)
    others = [{name: value + 0.01 * rng.normal(size=value.shape) for name, value in start.items()} for _ in range(3)]
    if rule == "ffa":  # every client trains B only
        others = [{**other, A: start[A]} for other in others]
    clip, n = 0.3, 4
    absent = private_aggregate(start, [*others, start], [1] * n, rule, clip, 0.0, seed=0)  # the 4th sends no change
    for scale in (1e3, 1e8):
        huge = {A: start[A] + (scale if rule == "fedavg" else 0.0), B: start[B] - scale}
        present = private_aggregate(start, [*others, huge], [1] * n, rule, clip, 0.0, seed=0)
        moved = np.sqrt(sum(np.square(present[name] - absent[name]).sum() for name in start))
        assert moved == pytest.approx(clip / n, rel=1e-9)  # exactly the clip's share: it is pointed one way


def test_dp_noise_has_std_z_clip_over_n_on_every_trained_coordinate():
    rng = np.random.default_rng(3)
    start = _layer(rng, 8, 1000)  # 8000 coordinates in each factor
    for rule, z, clip, n in (("ffa", 1.5, 0.5, 4), ("fedavg", 0.7, 2.0, 1)):
        expected = z * clip / n
        draws = []
        for seed in range(5):
            new = private_aggregate(start, [start] * n, [2.0] * n, rule, clip, z, seed)  # nothing trained: noise only
            trained = [B] if rule == "ffa" else [A, B]
            draws += [(new[name] - start[name]).ravel() for name in trained]
            if rule == "ffa":
                np.testing.assert_array_equal(new[A], start[A])
        noise = np.concatenate(draws)  # 40,000 (ffa) or 80,000 (fedavg) draws
        # the sample std's relative error is about 1/sqrt(2·40,000) = 0.35%: 3% is over 8 of them
        assert np.std(noise) == pytest.approx(expected, rel=0.03)
        assert abs(np.mean(noise)) < 5 * expected / np.sqrt(len(noise))
        assert np.mean(np.abs(noise) < expected) == pytest.approx(0.6827, abs=0.01)  # Gaussian: 68% within 1σ
    one = private_aggregate(start, [start], [1], "ffa", 1.0, 1.0, seed=7)
    assert np.array_equal(one[B], private_aggregate(start, [start], [1], "ffa", 1.0, 1.0, seed=7)[B])
    assert not np.array_equal(one[B], private_aggregate(start, [start], [1], "ffa", 1.0, 1.0, seed=8)[B])


def test_dp_refuses_unequal_weights_the_product_rule_and_bad_bounds():
    with pytest.raises(ReglError, match=r"uniformly: equal positive weights, got \[1, 3\]"):
        private_aggregate(GLOBAL, [ONE, TWO], [1, 3], "fedavg", 1.0, 1.0, seed=0)
    with pytest.raises(ReglError, match="uniformly"):
        private_aggregate(GLOBAL, [ONE, TWO], [0, 0], "fedavg", 1.0, 1.0, seed=0)
    with pytest.raises(ReglError, match="not 'product'"):
        private_aggregate(GLOBAL, [ONE], [1], "product", 1.0, 1.0, seed=0)
    with pytest.raises(ReglError, match="1 client adapters but 2 weights"):
        private_aggregate(GLOBAL, [ONE], [1, 1], "fedavg", 1.0, 1.0, seed=0)
    with pytest.raises(ReglError, match="clip 0.0"):
        private_aggregate(GLOBAL, [ONE], [1], "fedavg", 0.0, 1.0, seed=0)
    with pytest.raises(ReglError, match="other layers"):
        private_aggregate(GLOBAL, [{A: ONE[A]}], [1], "fedavg", 1.0, 1.0, seed=0)
    unchanged = private_aggregate(GLOBAL, [], [], "ffa", 1.0, 1.0, seed=0)  # nobody replied: nothing released
    assert all(np.array_equal(unchanged[name], GLOBAL[name]) for name in GLOBAL)
