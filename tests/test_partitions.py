import numpy as np
import pytest

from regl.data.partitions import PartitionSpec, imbalanced_subset, partition_labels
from regl.errors import ReglError

LABELS = np.repeat(np.arange(10), 300)
rng = np.random.default_rng(1)
rng.shuffle(LABELS)


def _assigned(partition):
    return np.concatenate(partition.client_indices)


@pytest.mark.parametrize(
    "spec",
    [
        PartitionSpec("iid", 7),
        PartitionSpec("classes", 10, classes_per_client=1),
        PartitionSpec("classes", 10, classes_per_client=3),
        PartitionSpec("dirichlet", 10, beta=0.05),
        PartitionSpec("dirichlet", 5, beta=0.5),
    ],
    ids=lambda s: s.describe(),
)
def test_every_sample_goes_to_exactly_one_client(spec):
    assigned = _assigned(partition_labels(spec, LABELS, 10))
    assert np.array_equal(np.sort(assigned), np.arange(len(LABELS)))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_exactly_k_classes_per_client(k):
    partition = partition_labels(PartitionSpec("classes", 10, classes_per_client=k, seed=3), LABELS, 10)
    assert [len(np.unique(LABELS[idx])) for idx in partition.client_indices] == [k] * 10


def test_partition_is_deterministic_per_seed():
    a = partition_labels(PartitionSpec("dirichlet", 10, beta=0.5, seed=4), LABELS, 10)
    b = partition_labels(PartitionSpec("dirichlet", 10, beta=0.5, seed=4), LABELS, 10)
    c = partition_labels(PartitionSpec("dirichlet", 10, beta=0.5, seed=5), LABELS, 10)
    assert all(np.array_equal(x, y) for x, y in zip(a.client_indices, b.client_indices))
    assert not all(np.array_equal(x, y) for x, y in zip(a.client_indices, c.client_indices))


@pytest.mark.parametrize("ratio", [10, 100])
def test_requested_global_imbalance_is_achieved(ratio):
    partition = partition_labels(PartitionSpec("imbalance", 5, imbalance_ratio=ratio), LABELS, 10)
    assigned = _assigned(partition)
    assert len(np.unique(assigned)) == len(assigned)
    counts = np.bincount(LABELS[assigned], minlength=10)
    assert counts.max() / counts.min() == pytest.approx(ratio, rel=0.05)
    assert len(partition.minority_classes) == 5
    assert all(counts[c] == counts.min() for c in partition.minority_classes)


def test_imbalanced_subset_keeps_all_majority_samples():
    kept, minority = imbalanced_subset(LABELS, 10, seed=0)
    counts = np.bincount(LABELS[kept], minlength=10)
    majority = [c for c in range(10) if c not in minority]
    assert all(counts[c] == 300 for c in majority)
    assert all(counts[c] == 30 for c in minority)


@pytest.mark.parametrize(
    "spec, message",
    [
        (PartitionSpec("classes", 10, classes_per_client=11), "classes per client must be between 1 and 10"),
        (PartitionSpec("dirichlet", 10, beta=0.0), "beta must be > 0"),
        (PartitionSpec("dirichlet", 10, beta=-1.0), "beta must be > 0"),
        (PartitionSpec("iid", 5000), "5000 clients but only 3000 samples"),
        (PartitionSpec("shards", 10), "unknown partition 'shards'"),
        (PartitionSpec("imbalance", 10, imbalance_ratio=0.5), "imbalance ratio must be >= 1"),
    ],
)
def test_impossible_requests_raise(spec, message):
    with pytest.raises(ReglError, match=message):
        partition_labels(spec, LABELS, 10)
