"""A client's data is resolved once and handed down (issue 25, point 8): one local update reads the dataset's
split at most once, and a later round of the same client not at all.

Before the view, a simulated client's first round called load_split 5 times (the global test set for the
model's input format, the client's share, the partition, the personalized and the in-domain subsets; 6 with
`--fill public`) and every later round 2-3 times; a node's called load_node_data 3 times, then 2 a round.
"""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from regl.data.partitions import PartitionSpec
from regl.fill.settings import FillSettings
from regl.fl import experiment
from regl.fl.experiment import ExperimentSettings, client_view, local_update, new_model
from regl.train.settings import TrainSettings
from tests.service_fixtures import CLASSES, build_client_folder

ROTATED = ExperimentSettings(
    dataset="mnist-10k",
    partition=PartitionSpec("classes", 10, classes_per_client=2, domain="rotate"),
    train=TrainSettings(epochs=1),
)
LOADERS = ("run_split", "cached_partition", "round_robin", "load_labelled", "load_node_data")


@pytest.fixture
def loads(monkeypatch):
    """Every call from regl/fl/experiment.py into regl/data's loaders (cached or not; `run_split`, the dataset's
    split in the run's look, is the one way to `load_split`), by name, counted from a
    process that has resolved nothing of the run yet: a deployed ClientApp's, or a node service's first round."""
    calls = Counter()
    for cached in (experiment.client_view, experiment._split_and_partition, experiment.test_data, experiment.run_split):
        cached.cache_clear()
    for name in LOADERS:
        real = getattr(experiment, name)
        monkeypatch.setattr(
            experiment, name, lambda *a, _name=name, _real=real, **k: calls.update([_name]) or _real(*a, **k)
        )
    return calls


def weights_of(settings: ExperimentSettings) -> dict[str, np.ndarray]:
    return {name: tensor.numpy().copy() for name, tensor in new_model(settings).state_dict().items()}


@pytest.mark.parametrize("fill", ["none", "public"])
def test_a_local_update_resolves_the_split_once_and_a_later_round_not_again(loads, fill):
    settings = replace(ROTATED, fill=FillSettings(mode=fill))
    weights = weights_of(settings)  # the server's: its global test set, in the clients' looks
    loads.clear()
    updated, metrics = local_update(settings, 3, weights, {"server-round": 1})
    assert loads == Counter(run_split=1, cached_partition=1)  # no global test set built on a client
    assert "in-domain-accuracy" in metrics and metrics["num-examples"] == len(client_view(settings, 3).data)
    loads.clear()
    local_update(settings, 3, updated, {"server-round": 2})
    assert loads == Counter()


def test_a_nodes_update_reads_its_own_data_once_and_never_the_datasets_split(loads, tmp_path):
    folder = build_client_folder(tmp_path / "node", per_class=(10, 5, 2))
    run = ExperimentSettings(dataset="fashion-mnist", classes=",".join(CLASSES), test_data=str(folder))
    node = replace(run, data_dir=str(folder), train=TrainSettings(epochs=1))
    weights = weights_of(run)
    loads.clear()
    updated, metrics = local_update(node, 0, weights, {"server-round": 1})
    assert loads == Counter(load_node_data=1) and metrics["num-examples"] == 14
    loads.clear()
    local_update(node, 0, updated, {"server-round": 2})
    assert loads == Counter()


def test_the_views_test_subsets_are_made_once_and_read_only():
    view = client_view(ROTATED, 3)
    assert client_view(ROTATED, 3) is view
    for subset in (view.personalized_test, view.in_domain_test, view.data):
        assert not subset.x.flags.writeable and not subset.y.flags.writeable
    assert view.personalized_test is view.personalized_test and view.in_domain_test is view.in_domain_test
    assert view.class_counts.tolist() == view.data.class_counts().tolist() and not view.class_counts.flags.writeable
    assert set(view.personalized_test.y.tolist()) == set(np.flatnonzero(view.class_counts).tolist())
