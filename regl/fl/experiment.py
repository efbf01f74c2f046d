"""The per-client work of one federated experiment (settings in `regl/fl/settings.py`), free of Flower code.

The Flower apps in `clients/` and the centralized reference both call into this module,
so every arm uses the same data, model, optimiser and seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from regl.data.datasets import BUILTINS, ImageDataset, cache_dir, load_split, mirror_safe
from regl.data.domains import ClientDomain, round_robin
from regl.data.node_data import NodeData, load_labelled, load_node_data, node_key, run_class_names
from regl.data.partitions import Partition, cached_partition
from regl.errors import ReglError
from regl.fill.client import ClientFill, with_fill
from regl.fill.settings import client_plan
from regl.fl.settings import ExperimentSettings
from regl.seeds import derive_seed
from regl.train.augment import Augment
from regl.train.loop import evaluate, train
from regl.train.losses import Loss, make_loss
from regl.train.metrics import personalized_test_indices, uniform_test_indices
from regl.train.models import build_model, default_model_name

PERSONALIZED_TEST_SIZE = 1000


@lru_cache(maxsize=8)
def federation(settings: ExperimentSettings) -> Partition:
    split = load_split(settings.dataset)
    return cached_partition(settings.partition, split.private.y, split.private.num_classes, cache_dir() / "partitions")


def class_names(settings: ExperimentSettings) -> tuple[str, ...]:
    return run_class_names(settings.dataset, settings.classes)


def node_data(settings: ExperimentSettings) -> NodeData:
    """A node's own images (settings.data_dir), split into what it trains on and its local test set."""
    return load_node_data(settings.data_dir, class_names(settings))


def client_domain(settings: ExperimentSettings, client_id: int) -> ClientDomain:
    """The look a simulated client's images are given; a node's own images keep theirs."""
    spec = settings.partition  # its seed is the run's --seed (tests/test_cli.py)
    return ClientDomain("none" if settings.data_dir else spec.domain, client_id, spec.num_clients, spec.seed)


@lru_cache(maxsize=16)
def client_data(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """The client's private images, in its domain's look; made once per process (a rotation costs ~0.7 s
    per 5,000 images, and every round asks twice), read-only so no caller can change the cached copy.

    On a node with its own data: the training part of that data."""
    if settings.data_dir:
        return node_data(settings).train
    split = load_split(settings.dataset)
    data = client_domain(settings, client_id).apply(
        split.private.subset(federation(settings).client_indices[client_id])
    )
    data.x.flags.writeable = False
    data.y.flags.writeable = False
    return data


@lru_cache(maxsize=4)
def test_data(settings: ExperimentSettings) -> ImageDataset:
    """The global test set: the run's `test-data`, else the dataset's; with a domain, image i is shown in
    client i mod N's look."""
    if settings.test_data:
        return load_labelled(settings.test_data, class_names(settings))
    spec = settings.partition
    return round_robin(load_split(settings.dataset).test, spec.domain, spec.num_clients, spec.seed)


def new_model(settings: ExperimentSettings) -> torch.nn.Module:
    """The initial global model; identical for every arm with the same seed. Its input format is the test
    set's, on a node with its own data that data's (a node whose images differ fails to load the global one)."""
    like = node_data(settings).train if settings.data_dir else test_data(settings)
    name = settings.model or default_model_name(like.channels)
    torch.manual_seed(derive_seed(settings.seed, "model-init"))
    return build_model(name, like.channels, len(class_names(settings)), like.resolution)


def evaluate_global(settings: ExperimentSettings, model: torch.nn.Module) -> dict[str, Any]:
    """On the server's test set; minority classes are the simulated partition's (none with `test-data`)."""
    minority = () if settings.test_data else federation(settings).minority_classes
    return evaluate(model, test_data(settings), minority)


def client_fill(settings: ExperimentSettings, client_id: int) -> ClientFill:
    """A node's own images or a folder's are named in the fill's keys by their content; a built-in
    dataset's client by the run (see ClientFill)."""
    from regl.generate.prompts import template_for

    by_content = bool(settings.data_dir) or settings.dataset not in BUILTINS
    return ClientFill(
        node_key(settings.dataset, settings.data_dir) if settings.data_dir else settings.dataset,
        template_for(settings.dataset),
        client_id,
        settings.seed,
        settings.fill,
        client_domain(settings, client_id),
        client_data(settings, client_id).content_digest if by_content else "",
    )


def prepare_fill(
    settings: ExperimentSettings, client_id: int, target: np.ndarray | None, mixed: ImageDataset | None
) -> dict[str, Any]:
    """Plan and make this client's synthetic fill before its first round; returns counts and timings."""
    data = client_data(settings, client_id)
    plan = client_plan(settings.fill, data.class_counts(), target)
    remote = None
    if settings.fill.service:
        from regl.fill.remote import remote_fill

        remote = remote_fill(settings.fill.service, settings.fill, settings.seed, data, target)
    synthetic, timings = client_fill(settings, client_id).make(data, plan, mixed, remote)
    return {
        "client": client_id,
        "real-images": len(data),
        "synthetic-images": len(synthetic),
        **{f"planned-{source}": int(counts.sum()) for source, counts in plan.counts.items()},
        **{k.replace("_", "-"): float(v) for k, v in timings.items()},
    }


def training_data(settings: ExperimentSettings, client_id: int, target: np.ndarray | None) -> ImageDataset:
    """What the client trains on: its real images plus its fill (the public pool, or its store)."""
    data = client_data(settings, client_id)
    if settings.fill.mode == "public":
        return with_fill(data, load_split(settings.dataset).public)
    if not settings.fill.synthetic:
        return data
    plan = client_plan(settings.fill, data.class_counts(), target)
    synthetic = client_fill(settings, client_id).load(plan)
    if synthetic is None:
        raise RuntimeError(
            f"client {client_id} has no complete synthetic store for this run's fill; the fill phase did not finish"
        )
    return with_fill(data, synthetic)


def local_loss(settings: ExperimentSettings, data: ImageDataset, ratio: np.ndarray | None) -> Loss:
    """The client's --loss over the class counts of what it trains on (real + fill: regl/train/losses.py)."""
    return make_loss(settings.loss, data.class_counts(), ratio)


def train_client(
    settings: ExperimentSettings,
    client_id: int,
    model: torch.nn.Module,
    server_round: int,
    target: np.ndarray | None = None,
    ratio: np.ndarray | None = None,
    proximal_mu: float = 0.0,
) -> dict[str, Any]:
    """One local update; also measures the updated model on a personalized test subset.

    `ratio` is the monitor's Ra (Ratio Loss), `proximal_mu` FedProx's μ, both as the server
    sent them. The personalized subset follows the client's *real* class distribution, in
    its look. With a domain, the in-domain accuracy is the same model on all classes,
    uniformly mixed, in its look: a class the client lacks still meets it in its own domain.
    """
    data = client_data(settings, client_id)
    started = time.perf_counter()
    trained_on = training_data(settings, client_id, target)
    loss = train(
        model,
        trained_on,
        settings.train,
        seed=derive_seed(settings.seed, "local-train", client_id, server_round),
        loss=local_loss(settings, trained_on, ratio),
        augment=Augment(mirror_safe(settings.dataset)) if settings.augment else None,
        proximal_mu=proximal_mu,
        head_only=settings.init_freeze,
    )
    train_seconds = time.perf_counter() - started
    metrics = {
        "client": client_id,
        "num-examples": len(data),
        "train-loss": loss,
        "train-seconds": train_seconds,
        "personalized-accuracy": evaluate(model, personalized_test_set(settings, client_id))["accuracy"],
    }
    if sends_class_counts(settings):
        metrics["class-counts"] = trained_on.class_counts().tolist()
    if client_domain(settings, client_id).kind != "none":
        metrics["in-domain-accuracy"] = evaluate(model, in_domain_test_set(settings, client_id))["accuracy"]
    return {**metrics, "eval-seconds": time.perf_counter() - started - train_seconds}


def local_update(
    settings: ExperimentSettings, client_id: int, weights: dict[str, np.ndarray], round_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """train_client from the global weights as arrays to the client's weights as arrays: what a ClientApp
    and a node's `regl serve` (POST /v1/train) both run.

    `round_config` is what the server sent with the round: its number, the fill's target
    composition, the monitor's Ra (Ratio Loss) and FedProx's μ when there are any.
    """
    model = new_model(settings)
    try:
        model.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in weights.items()})
    except RuntimeError as exc:
        like = client_data(settings, client_id)
        raise ReglError(
            f"client {client_id}'s model ({like.resolution}×{like.resolution}×{like.channels} images, "
            f"{len(class_names(settings))} classes) does not fit the global model: {str(exc).splitlines()[0]}"
        ) from exc
    composition, ratio = round_config.get("fill-target-composition"), round_config.get("ratio")
    metrics = train_client(
        settings,
        client_id,
        model,
        int(round_config["server-round"]),
        np.asarray(composition, dtype=np.float64) if composition else None,
        np.asarray(ratio, dtype=np.float64) if ratio is not None else None,
        float(round_config.get("proximal-mu", 0.0)),  # what Flower's FedProx sends
    )
    return {name: tensor.numpy() for name, tensor in model.state_dict().items()}, metrics


def personalized_test_set(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """Test images in the client's own class mix and look: a node's local test split, or for a simulated
    client a subset of the dataset's test set drawn by its real class distribution."""
    if settings.data_dir:
        return node_data(settings).test
    test, domain = load_split(settings.dataset).test, client_domain(settings, client_id)
    counts = client_data(settings, client_id).class_counts()
    seed = derive_seed(settings.seed, "personalized-test", client_id)
    subset = personalized_test_indices(test.y, counts, PERSONALIZED_TEST_SIZE, seed=seed)
    return domain.apply(test.subset(subset), "test")


def in_domain_test_set(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """Test images of every class equally often, in the client's look: what its in-domain accuracy is measured on.

    Drawn with a seed of its own, not the personalized subset's."""
    test = load_split(settings.dataset).test
    seed = derive_seed(settings.seed, "in-domain-test", client_id)
    uniform = uniform_test_indices(test.y, test.num_classes, PERSONALIZED_TEST_SIZE, seed=seed)
    return client_domain(settings, client_id).apply(test.subset(uniform), "test")


def sends_class_counts(settings: ExperimentSettings) -> bool:
    """The class counts of what a client trained on leave it only for what needs them on the server:
    the monitor's true composition (Ratio Loss) and class-balanced aggregation."""
    return settings.loss == "ratio" or settings.aggregate_weight == "class-balanced"
