"""The server's side of the imbalance methods: the composition monitor, class-balanced weights, DP, augmentation."""

import copy

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from regl.data.datasets import load_split
from regl.fl.aggregation import class_balanced_weights
from regl.fl.monitor import CompositionMonitor, auxiliary_set, cosine, estimate_composition, ratio_from
from regl.fl.privacy import client_level_epsilon
from regl.train.augment import Augment
from regl.train.loop import train
from regl.train.models import build_model, output_layer
from regl.train.settings import TrainSettings


def test_monitor_recovers_a_constructed_rounds_composition():
    """Three clients train on a known Γ = 10 mix; FedAvg; the monitor's estimate is that mix."""
    split = load_split("mnist-10k")
    rng = np.random.default_rng(1)
    counts = np.array([30, 300, 30, 300, 300, 30, 300, 30, 300, 30])
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, 28)
    monitor = CompositionMonitor(auxiliary_set(split.public, seed=0), TrainSettings(), build_model("cnn", 1, 10, 28))
    monitor.start_round(model.state_dict())
    states, sizes, total = [], [], np.zeros(10)
    for k in range(3):
        picks = [rng.choice(np.flatnonzero(split.private.y == c), n // 3, replace=False) for c, n in enumerate(counts)]
        data = split.private.subset(np.concatenate(picks))
        local = copy.deepcopy(model)
        train(local, data, TrainSettings(), seed=k)
        states.append(local.state_dict())
        sizes.append(len(data))
        total += data.class_counts()
    model.load_state_dict({k: sum(s[k] * n for s, n in zip(states, sizes)) / sum(sizes) for k in states[0]})
    record = monitor.end_round(1, model.state_dict(), total)
    assert record["monitor_cosine"] >= 0.95
    assert record["monitor_imbalance_detected"] == 1
    ratio = monitor.ratio
    assert ratio[counts == 30].min() > ratio[counts == 300].max()  # the rare classes get the larger Ra


def test_composition_estimate_on_exact_directions():
    directions = np.random.default_rng(0).normal(size=(4, 50))
    shares = np.array([0.1, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(estimate_composition(directions, 2.5 * shares @ directions), shares, atol=1e-9)
    assert cosine(shares, shares) == pytest.approx(1.0)
    np.testing.assert_allclose(ratio_from(np.array([0.5, 0.5])), [1.0, 1.0])
    assert ratio_from(np.array([1.0, 0.0])).tolist() == [0.5, 100.0]  # a class put at 0 is capped


def test_class_balanced_aggregation_weights_on_toy_histograms():
    # client 0 holds most of the common class, client 1 all of the rare one: they weigh alike
    weights = class_balanced_weights(np.array([[900, 0], [100, 10]]))
    np.testing.assert_allclose(weights, [0.45, 0.55])
    np.testing.assert_allclose(class_balanced_weights(np.array([[5, 5], [5, 5]])), [0.5, 0.5])
    np.testing.assert_allclose(class_balanced_weights(np.array([[3, 0, 0], [0, 7, 0]])), [0.5, 0.5])
    with pytest.raises(ValueError, match="no client"):
        class_balanced_weights(np.zeros((2, 3)))


def _train_message(arrays: dict, config: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: v for k, v in arrays.items()}), "config": ConfigRecord(config)})
    return Message(content, dst_node_id=1, message_type="train")


def test_client_side_clipping_bounds_each_update(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from regl.clients.client_app import dp_clipping_mod

    for name in ("_run_id", "_node_id", "_task_id"):  # what a running ClientApp has
        monkeypatch.setattr(TaskIdentity, name, 1)

    start = {"w": torch.zeros(10), "b": torch.zeros(3)}

    def trained(msg, context):  # an update of norm 5
        update = {"w": torch.full((10,), 1.5), "b": torch.tensor([0.0, 0.0, -np.sqrt(25 - 22.5)])}
        return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": MetricRecord({"x": 1})}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    clipped = dp_clipping_mod(_train_message(start, {"clipping_norm": 1.0}), context, trained)
    out = clipped.content["arrays"].to_torch_state_dict()
    norm = float(torch.sqrt(sum((out[k] - start[k]).pow(2).sum() for k in start)))
    assert norm == pytest.approx(1.0, rel=1e-5)
    free = dp_clipping_mod(_train_message(start, {}), context, trained)  # no DP: the update as trained
    assert float(free.content["arrays"].to_torch_state_dict()["w"][0]) == 1.5


def test_accountant_epsilon_matches_the_gaussian_mechanism_by_hand():
    """RDP of T Gaussian releases at order a is T·a/(2z²); Balle et al.'s conversion to (ε, δ), minimised."""
    from opacus.accountants import RDPAccountant

    z, rounds, delta = 1.0, 10, 1e-5
    by_hand = min(
        rounds * a / (2 * z * z) + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1)
        for a in RDPAccountant.DEFAULT_ALPHAS
    )
    assert client_level_epsilon(z, rounds, delta) == pytest.approx(by_hand, rel=1e-6)
    assert client_level_epsilon(2.0, rounds) < client_level_epsilon(1.0, rounds)


def test_augment_keeps_shapes_and_is_deterministic_per_seed():
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    augment = Augment(mirror=False)
    a, b, c = augment(x, seed=3), augment(x, seed=3), augment(x, seed=4)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert not any("Flip" in type(step).__name__ for step in augment.pipeline.children())
    assert any("Flip" in type(step).__name__ for step in Augment(mirror=True).pipeline.children())


def test_augmented_training_differs_and_head_only_freezes_the_features():
    data = load_split("mnist-10k").private.subset(np.arange(256))
    torch.manual_seed(0)
    start = build_model("cnn", 1, 10, 28)
    plain, augmented, again = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    train(plain, data, TrainSettings(), seed=0)
    train(augmented, data, TrainSettings(), seed=0, augment=Augment(mirror=False))
    train(again, data, TrainSettings(), seed=0, augment=Augment(mirror=False))
    assert not torch.equal(plain.fc3.weight, augmented.fc3.weight)  # the augmentation reaches the batches
    assert torch.equal(augmented.fc3.weight, again.fc3.weight)  # and is the same for the same seed
    frozen = copy.deepcopy(start)
    train(frozen, data, TrainSettings(), seed=0, head_only=True)
    head = {f"fc3.{name}" for name, _ in output_layer(frozen).named_parameters()}
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, start.state_dict()[name]) != (name in head), name


def _fl(tmp_path, monkeypatch, capfd, *options: str) -> tuple[dict, list[dict], str]:
    import json
    import sys

    from regl.cli import main

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["regl", "--not-these"])
    argv = ["fl", "--dataset", "mnist-10k", "--clients", "2", "--rounds", "2", "--cpus", "1", "--out-dir", str(out)]
    code = main([*argv, *options])
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    return json.loads((out / "summary.json").read_text()), json.loads((out / "rounds.json").read_text()), terminal.out


@pytest.mark.e2e
def test_ratio_loss_run_records_the_monitor_and_weights_by_class_balance(tmp_path, monkeypatch, capfd):
    summary, rounds, printed = _fl(
        tmp_path, monkeypatch, capfd, "--partition", "imbalance", "--imbalance-ratio", "10", "--loss", "ratio",
        "--aggregate-weight", "class-balanced", "--strategy", "fedprox",
    )  # fmt: skip
    for record in rounds[1:]:
        assert record["monitor_cosine"] > 0.9 and len(record["monitor_composition"]) == 10
        assert sum(c["aggregate-weight"] for c in record["clients"]) == pytest.approx(1.0)
        assert all("class-counts" not in c for c in record["clients"])  # used, not kept in the report
    assert rounds[1]["monitor_imbalance_detected"] == 1
    assert summary["monitor_mean_cosine"] == pytest.approx(np.mean([r["monitor_cosine"] for r in rounds[1:]]))
    assert "composition monitor: mean cosine" in printed


@pytest.mark.e2e
def test_dp_run_reports_its_epsilon(tmp_path, monkeypatch, capfd):
    summary, rounds, printed = _fl(
        tmp_path, monkeypatch, capfd, "--partition", "iid", "--dp-noise", "0.5", "--dp-clip", "0.5", "--augment",
    )  # fmt: skip
    privacy = summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(client_level_epsilon(0.5, 2)) and privacy["delta"] == 1e-5
    assert (privacy["noise_multiplier"], privacy["clip"], privacy["clipping"]) == (0.5, 0.5, "client")
    assert all(c["aggregate-weight"] == 1.0 for r in rounds[1:] for c in r["clients"])  # uniform under DP
    assert f"(ε {privacy['epsilon']:.2f}, δ 1e-05)" in printed


@pytest.mark.e2e
def test_fedadam_from_a_public_warm_start_with_frozen_features(tmp_path, monkeypatch, capfd):
    summary, rounds, printed = _fl(
        tmp_path, monkeypatch, capfd, "--partition", "classes", "-k", "2", "--strategy", "fedadam", "--init",
        "public", "--warm-start-per-class", "200", "--warm-start-epochs", "5", "--init-freeze", "--loss", "fedlc",
    )  # fmt: skip
    assert "warm start: 200 public-pool images of every class" in printed
    assert rounds[0]["accuracy"] > 0.5  # the warm start alone already knows the digits
    assert rounds[1]["accuracy"] != rounds[0]["accuracy"] != rounds[2]["accuracy"]  # FedAdam moves the head
