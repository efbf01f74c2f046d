import numpy as np
import pytest

from regl.data.partitions import PartitionSpec, cached_partition, imbalanced_subset, partition_labels
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


@pytest.mark.parametrize(
    "spec",
    [PartitionSpec("classes", 6, classes_per_client=2), PartitionSpec("imbalance", 4, imbalance_ratio=10, seed=3)],
)
def test_the_cached_partition_equals_a_recomputed_one(tmp_path, spec):
    first = cached_partition(spec, LABELS, 10, tmp_path)
    assert len(list(tmp_path.glob("partition-*.npz"))) == 1
    again = cached_partition(spec, LABELS, 10, tmp_path)  # read back from disk
    fresh = partition_labels(spec, LABELS, 10)
    for got in (first, again):
        assert got.minority_classes == fresh.minority_classes
        assert len(got.client_indices) == len(fresh.client_indices)
        assert all(np.array_equal(a, b) for a, b in zip(got.client_indices, fresh.client_indices))


def test_the_cache_is_rebuilt_when_its_spec_or_labels_change(tmp_path, monkeypatch):
    from regl.data import partitions

    cut = []
    real = partitions.partition_labels
    monkeypatch.setattr(partitions, "partition_labels", lambda *a: cut.append(a[0]) or real(*a))
    spec = PartitionSpec("classes", 6, classes_per_client=2)
    cached_partition(spec, LABELS, 10, tmp_path)
    cached_partition(spec, LABELS, 10, tmp_path)
    cached_partition(PartitionSpec("classes", 6, classes_per_client=2, domain="rotate"), LABELS, 10, tmp_path)
    assert len(cut) == 1  # read back twice: a domain changes looks, not indices
    other = PartitionSpec("classes", 6, classes_per_client=3)
    assert len(cached_partition(other, LABELS, 10, tmp_path).client_indices) == 6
    cached_partition(spec, LABELS[::-1].copy(), 10, tmp_path)
    assert cut == [spec, other, spec]
    (next(tmp_path.glob("partition-k3-*.npz"))).write_bytes(b"not an npz")
    rebuilt = cached_partition(other, LABELS, 10, tmp_path)  # a corrupt file is cut again, not trusted
    assert cut[-1] == other and all(
        np.array_equal(a, b) for a, b in zip(rebuilt.client_indices, real(other, LABELS, 10).client_indices)
    )
