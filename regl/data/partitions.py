"""Label-skew partitions of a private pool across federated clients.

iid, k classes per client and Dirichlet(β) use flwr-datasets partitioners on a label-only
table; `imbalance` first subsamples the pool so that majority:minority class counts are
Γ:1 (the Ratio Loss paper's global imbalance) and then deals it out iid. The spec also
names the clients' domain (feature skew, `regl/data/domains.py`), which leaves the
indices alone and changes how each client's images look.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from regl.data.domains import DOMAIN_KINDS
from regl.data.looks import LOOKS
from regl.errors import ReglError
from regl.options import option

PARTITION_KINDS = ("iid", "classes", "dirichlet", "imbalance")
CACHE_FORMAT = 1  # raise when this module's cutting changes: cached partitions then count as stale


@dataclass(frozen=True)
class PartitionSpec:
    """What the user asked for; `describe()` names it in file names and tables."""

    kind: str = option(
        "classes",
        "label skew: iid; k classes per client; Dirichlet(beta); global imbalance ratio then iid",
        flag="--partition",
        choices=PARTITION_KINDS,
        group="data",
    )
    num_clients: int = option(10, "number of clients", flag="--clients", ge=2, group="data")
    classes_per_client: int = option(
        2, "k for --partition classes", flag="--classes-per-client", short=("-k",), ge=1, group="data"
    )
    beta: float = option(
        0.5,
        "Dirichlet concentration for --partition dirichlet; smaller is more skewed",
        flag="--beta",
        gt=0,
        group="data",
    )
    imbalance_ratio: float = option(
        10.0,
        "majority:minority class count ratio Γ for --partition imbalance",
        flag="--imbalance-ratio",
        ge=1,
        group="data",
    )
    domain: str = option(
        "none",
        "feature skew: each client's images (training and test) in a look of its own; rotate: 0-75 degrees, "
        "style: stroke/gamma/inversion, noise: Gaussian std 0.1*j/(N-1)",
        flag="--domain",
        choices=DOMAIN_KINDS,
        group="data",
    )
    look: str = option(
        "none",
        "a shared look: every client's images and the global test set in one look the base never saw; "
        "negative: thick dark strokes on white, outline: hollow contours (regl/data/looks.py)",
        flag="--look",
        choices=LOOKS,
        group="data",
    )
    seed: int = 0  # the run's --seed

    def describe(self) -> str:
        detail = {
            "iid": "iid",
            "classes": f"k{self.classes_per_client}",
            "dirichlet": f"dir{self.beta:g}",
            "imbalance": f"imb{self.imbalance_ratio:g}",
        }[self.kind]
        named = f"{detail}-c{self.num_clients}"
        named = named if self.domain == "none" else f"{named}-{self.domain}"
        return named if self.look == "none" else f"{named}-look-{self.look}"


@dataclass(frozen=True)
class Partition:
    """Indices into the private pool, one array per client."""

    client_indices: list[np.ndarray]
    minority_classes: tuple[int, ...] = field(default=())


def validate(spec: PartitionSpec, labels: np.ndarray, num_classes: int) -> None:
    """Reject impossible requests with a message naming the parameter."""
    from regl.data.domains import check_domain

    check_domain(spec.domain)
    if spec.kind not in PARTITION_KINDS:
        raise ReglError(f"unknown partition {spec.kind!r}; use one of {', '.join(PARTITION_KINDS)}")
    if spec.num_clients < 1:
        raise ReglError(f"number of clients must be at least 1, got {spec.num_clients}")
    if spec.num_clients > len(labels):
        raise ReglError(f"{spec.num_clients} clients but only {len(labels)} samples to share")
    if spec.kind == "classes" and not 1 <= spec.classes_per_client <= num_classes:
        raise ReglError(f"classes per client must be between 1 and {num_classes}, got {spec.classes_per_client}")
    if spec.kind == "dirichlet" and not spec.beta > 0:
        raise ReglError(f"Dirichlet beta must be > 0, got {spec.beta}")
    if spec.kind == "imbalance" and not spec.imbalance_ratio >= 1:
        raise ReglError(f"imbalance ratio must be >= 1, got {spec.imbalance_ratio}")


def _label_table(labels: np.ndarray):
    from datasets import Dataset

    return Dataset.from_dict({"index": np.arange(len(labels)), "label": labels})


def _run_partitioner(partitioner, labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    partitioner.dataset = _label_table(labels)
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)) for i in range(num_clients)]


def imbalanced_subset(labels: np.ndarray, ratio: float, seed: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Keep every sample of the majority half of the classes and 1/ratio of the rest.

    The minority half is drawn with the seed; each minority class keeps
    round(n_max / ratio) samples, where n_max is the smallest majority class count, so
    the achieved majority:minority ratio is `ratio` up to rounding.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    minority = np.sort(rng.choice(classes, size=len(classes) // 2, replace=False))
    majority_count = min(int((labels == c).sum()) for c in classes if c not in minority)
    minority_count = max(1, int(round(majority_count / ratio)))
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if c in minority:
            idx = rng.choice(idx, size=min(minority_count, len(idx)), replace=False)
        else:
            idx = rng.choice(idx, size=majority_count, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)), tuple(int(c) for c in minority)


def partition_labels(spec: PartitionSpec, labels: np.ndarray, num_classes: int) -> Partition:
    """Split sample indices across clients as `spec` asks; deterministic for spec.seed."""
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    validate(spec, labels, num_classes)
    n = spec.num_clients
    if spec.kind == "iid":
        return Partition(_iid(np.arange(len(labels)), labels, n, spec.seed))
    if spec.kind == "classes":
        partitioner = PathologicalPartitioner(
            num_partitions=n,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
        return Partition(_run_partitioner(partitioner, labels, n))
    if spec.kind == "dirichlet":
        min_size = min(10, len(labels) // n)
        partitioner = DirichletPartitioner(
            num_partitions=n,
            partition_by="label",
            alpha=spec.beta,
            min_partition_size=min_size,
            seed=spec.seed,
        )
        try:
            return Partition(_run_partitioner(partitioner, labels, n))
        except ValueError as exc:
            raise ReglError(f"Dirichlet partition failed for beta={spec.beta}, {n} clients: {exc}") from exc
    kept, minority = imbalanced_subset(labels, spec.imbalance_ratio, spec.seed)
    return Partition(_iid(kept, labels[kept], n, spec.seed), minority)


def _iid(indices: np.ndarray, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """IidPartitioner cuts contiguous shards, so it is fed a seeded permutation."""
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(seed).permutation(len(indices))
    shards = _run_partitioner(IidPartitioner(num_clients), labels[order], num_clients)
    return [np.sort(indices[order[shard]]) for shard in shards]


def _cache_key(spec: PartitionSpec, labels: np.ndarray, num_classes: int) -> str:
    """Everything the indices depend on: the labels, the spec's index fields and the partitioner's version."""
    import hashlib
    import json
    from dataclasses import asdict
    from importlib.metadata import version

    fields = {k: v for k, v in asdict(spec).items() if k != "domain"}  # a look leaves the indices alone
    payload = json.dumps(
        {
            "spec": fields,
            "classes": num_classes,
            "flwr-datasets": version("flwr-datasets"),
            "format": CACHE_FORMAT,
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(payload + np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:20]


def cached_partition(spec: PartitionSpec, labels: np.ndarray, num_classes: int, cache: Path) -> Partition:
    """`partition_labels`, kept in `cache` per (labels, spec): a deployed ClientApp starts a fresh process
    for every message, and cutting Fashion-MNIST by the partitioner costs it seconds each time."""
    import zipfile

    from regl.atomic import write_bytes_atomically

    validate(spec, labels, num_classes)
    name = replace(spec, domain="none").describe()
    path = Path(cache) / f"partition-{name}-{_cache_key(spec, labels, num_classes)}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                splits = np.cumsum(stored["sizes"])[:-1]
                return Partition(np.split(stored["indices"], splits), tuple(int(c) for c in stored["minority"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable: cut again and overwrite it
    partition = partition_labels(spec, labels, num_classes)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indices=np.concatenate(partition.client_indices).astype(np.int64),
        sizes=np.array([len(i) for i in partition.client_indices], dtype=np.int64),
        minority=np.array(partition.minority_classes, dtype=np.int64),
    )
    with contextlib.suppress(OSError):  # a read-only cache (a locked-down node) only costs the next process the cut
        write_bytes_atomically(path, buffer.getvalue())
    return partition
