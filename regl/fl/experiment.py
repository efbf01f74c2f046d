"""The per-client work of one federated experiment (settings in `regl/fl/settings.py`), free of Flower code.

The Flower apps in `clients/` and the centralized reference both call into this module,
so every arm uses the same data, model, optimiser and seeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch

from regl.data.datasets import BUILTINS, DatasetSplit, ImageDataset, cache_dir, load_split, mirror_safe
from regl.data.domains import ClientDomain, round_robin
from regl.data.looks import split_in_look
from regl.data.node_data import NodeData, load_labelled, load_node_data, node_key, run_class_names
from regl.data.partitions import Partition, cached_partition
from regl.errors import ReglError
from regl.fill.client import ClientFill, with_fill
from regl.fill.keys import adapter_digest as digest_adapter
from regl.fill.settings import client_plan
from regl.fl.settings import ExperimentSettings
from regl.seeds import derive_seed
from regl.train.augment import Augment
from regl.train.loop import evaluate, train
from regl.train.losses import Loss, make_loss
from regl.train.metrics import personalized_test_indices, uniform_test_indices
from regl.train.models import build_model, default_model_name

PERSONALIZED_TEST_SIZE = 1000


@lru_cache(maxsize=4)
def run_split(dataset: str, look: str) -> DatasetSplit:
    """The dataset's split as a run sees it: the private pool and the test set in the federation's shared
    look (regl/data/looks.py); the public pool, the base's pretraining data, as it is."""
    split = load_split(dataset)
    if look == "none":
        return split
    looked = split_in_look(split, look)
    return DatasetSplit(_read_only(looked.private), looked.public, _read_only(looked.test))


@lru_cache(maxsize=8)
def _split_and_partition(settings: ExperimentSettings) -> tuple[DatasetSplit, Partition]:
    """The dataset's split and its private pool cut among the clients, once per process."""
    split = run_split(settings.dataset, settings.partition.look)
    partition = cached_partition(
        settings.partition, split.private.y, split.private.num_classes, cache_dir() / "partitions"
    )
    return split, partition


def federation(settings: ExperimentSettings) -> Partition:
    return _split_and_partition(settings)[1]


def class_names(settings: ExperimentSettings) -> tuple[str, ...]:
    return run_class_names(settings.dataset, settings.classes)


def node_data(settings: ExperimentSettings) -> NodeData:
    """A node's own images (settings.data_dir), split into what it trains on and its local test set."""
    return load_node_data(settings.data_dir, class_names(settings))


def client_domain(settings: ExperimentSettings, client_id: int) -> ClientDomain:
    """The look a simulated client's images are given; a node's own images keep theirs."""
    spec = settings.partition  # its seed is the run's --seed (tests/test_cli.py)
    return ClientDomain("none" if settings.data_dir else spec.domain, client_id, spec.num_clients, spec.seed)


def _read_only(data: ImageDataset) -> ImageDataset:
    data.x.flags.writeable = False
    data.y.flags.writeable = False
    return data


@dataclass(frozen=True)
class ClientView:
    """One client's data as its rounds use it, resolved once per process by `client_view` and handed down to
    the local update, the fill and the evaluation: its images in its look, their class counts, its test
    subsets, the run's class names and the model's input format.

    A simulated client's share is cut from `split`, the dataset's fixed split, and its test subsets are
    drawn from that split's test set; a node's own images (settings.data_dir) come with their local test
    split, `node_test`, instead. The view is cached and shared: its arrays are read-only.
    """

    settings: ExperimentSettings
    client_id: int
    class_names: tuple[str, ...]
    domain: ClientDomain
    data: ImageDataset  # the client's private images in its look; on a node the training part of its own
    split: DatasetSplit | None = None  # a simulated client's
    node_test: ImageDataset | None = None  # a node's

    def _dataset_split(self) -> DatasetSplit:
        """A simulated client's split; a node reads its run dataset's only when asked (the public fill)."""
        return self.split if self.split is not None else run_split(self.settings.dataset, self.settings.partition.look)

    @cached_property
    def class_counts(self) -> np.ndarray:
        """Of its real images: what its fill is planned by and its personalized subset drawn by."""
        counts = self.data.class_counts()
        counts.flags.writeable = False
        return counts

    @property
    def model_like(self) -> ImageDataset:
        """Images in the global model's input format (new_model): the server's test set where a simulated
        client's run names one, else the client's own, whose format its dataset's test set shares."""
        if self.settings.test_data and not self.settings.data_dir:
            return test_data(self.settings)
        return self.data

    @cached_property
    def personalized_test(self) -> ImageDataset:
        """Test images in the client's own class mix and look: a node's local test split, or for a simulated
        client a subset of the dataset's test set drawn by its real class distribution."""
        if self.settings.data_dir:
            return self.node_test
        test = self._dataset_split().test
        seed = derive_seed(self.settings.seed, "personalized-test", self.client_id)
        subset = personalized_test_indices(test.y, self.class_counts, PERSONALIZED_TEST_SIZE, seed=seed)
        return _read_only(self.domain.apply(test.subset(subset), "test"))

    @cached_property
    def in_domain_test(self) -> ImageDataset:
        """Test images of every class equally often, in the client's look: what its in-domain accuracy is
        measured on. Drawn with a seed of its own, not the personalized subset's."""
        test = self._dataset_split().test
        seed = derive_seed(self.settings.seed, "in-domain-test", self.client_id)
        uniform = uniform_test_indices(test.y, test.num_classes, PERSONALIZED_TEST_SIZE, seed=seed)
        return _read_only(self.domain.apply(test.subset(uniform), "test"))

    def fill(self, adapter: Mapping[str, np.ndarray] | None = None, adapter_digest: str = "") -> ClientFill:
        """A node's own images or a folder's are named in the fill's keys by their content; a built-in
        dataset's client by the run (see ClientFill). With the federated generator, its adapter (to make the
        fill) or the adapter's digest (to find it)."""
        from regl.generate.prompts import template_for

        settings = self.settings
        by_content = bool(settings.data_dir) or settings.dataset not in BUILTINS
        return ClientFill(
            node_key(settings.dataset, settings.data_dir) if settings.data_dir else settings.dataset,
            template_for(settings.dataset),
            self.client_id,
            settings.seed,
            settings.fill,
            self.domain,
            self.data.content_digest if by_content else "",
            adapter_digest=adapter_digest or (digest_adapter(dict(adapter)) if adapter is not None else ""),
            look="none" if settings.data_dir else settings.partition.look,
            adapter=None if adapter is None else dict(adapter),
        )

    def training_data(self, target: np.ndarray | None, adapter_digest: str = "") -> ImageDataset:
        """What the client trains on: its real images plus its fill (the public pool, or its store)."""
        fill = self.settings.fill
        if fill.mode == "public":
            return with_fill(self.data, self._dataset_split().public)
        if not fill.synthetic:
            return self.data
        synthetic = self.fill(adapter_digest=adapter_digest).load(client_plan(fill, self.class_counts, target))
        if synthetic is None:
            raise ReglError(
                f"client {self.client_id} has no complete synthetic store for this run's fill; "
                "the fill phase did not finish"
            )
        return with_fill(self.data, synthetic)


@lru_cache(maxsize=16)
def client_view(settings: ExperimentSettings, client_id: int) -> ClientView:
    """The client's data, resolved once per process (a rotation costs ~0.7 s per 5,000 images, and every round
    asks for it): the split, the client's share of the partition and its look; on a node with its own data,
    that data's training and test parts."""
    names, domain = class_names(settings), client_domain(settings, client_id)
    if settings.data_dir:
        node = load_node_data(settings.data_dir, names)
        return ClientView(settings, client_id, names, domain, node.train, node_test=node.test)
    split, partition = _split_and_partition(settings)
    data = domain.apply(split.private.subset(partition.client_indices[client_id]))
    return ClientView(settings, client_id, names, domain, _read_only(data), split=split)


def client_data(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """The client's private images, in its domain's look (read-only); on a node with its own data the training
    part of that data."""
    return client_view(settings, client_id).data


@lru_cache(maxsize=4)
def test_data(settings: ExperimentSettings) -> ImageDataset:
    """The global test set: the run's `test-data`, else the dataset's; with a domain, image i is shown in
    client i mod N's look."""
    if settings.test_data:
        return load_labelled(settings.test_data, class_names(settings))
    spec = settings.partition
    return round_robin(run_split(settings.dataset, spec.look).test, spec.domain, spec.num_clients, spec.seed)


def new_model(settings: ExperimentSettings, view: ClientView | None = None) -> torch.nn.Module:
    """The initial global model; identical for every arm with the same seed. Its input format is the test
    set's, on a node with its own data that data's (a node whose images differ fails to load the global one);
    a client's `view` knows both."""
    if view is not None:
        like, names = view.model_like, view.class_names
    else:
        like = node_data(settings).train if settings.data_dir else test_data(settings)
        names = class_names(settings)
    name = settings.model or default_model_name(like.channels)
    torch.manual_seed(derive_seed(settings.seed, "model-init"))
    return build_model(name, like.channels, len(names), like.resolution)


def evaluate_global(settings: ExperimentSettings, model: torch.nn.Module) -> dict[str, Any]:
    """On the server's test set; minority classes are the simulated partition's (none with `test-data`)."""
    minority = () if settings.test_data else federation(settings).minority_classes
    return evaluate(model, test_data(settings), minority)


def client_fill(settings: ExperimentSettings, client_id: int, adapter_digest: str = "") -> ClientFill:
    """See ClientView.fill."""
    return client_view(settings, client_id).fill(adapter_digest=adapter_digest)


def prepare_fill(
    settings: ExperimentSettings,
    client_id: int,
    target: np.ndarray | None,
    mixed: ImageDataset | None,
    adapter: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Plan and make this client's synthetic fill before its first round; returns counts and timings.

    `adapter`: the federated generator's, when the fill draws with it."""
    view = client_view(settings, client_id)
    plan = client_plan(settings.fill, view.class_counts, target)
    remote = None
    if settings.fill.service:
        from regl.fill.remote import remote_fill

        remote = remote_fill(settings.fill.service, settings.fill, settings.seed, view.data, target, adapter)
    synthetic, timings = view.fill(adapter).make(view.data, plan, mixed, remote)
    return {
        "client": client_id,
        "real-images": len(view.data),
        "synthetic-images": len(synthetic),
        **{f"planned-{source}": int(counts.sum()) for source, counts in plan.counts.items()},
        **{k.replace("_", "-"): float(v) for k, v in timings.items()},
    }


def training_data(settings: ExperimentSettings, client_id: int, target: np.ndarray | None) -> ImageDataset:
    """See ClientView.training_data."""
    return client_view(settings, client_id).training_data(target)


def local_loss(settings: ExperimentSettings, data: ImageDataset, ratio: np.ndarray | None) -> Loss:
    """The client's --loss over the class counts of what it trains on (real + fill: regl/train/losses.py)."""
    return make_loss(settings.loss, data.class_counts(), ratio)


def train_client(
    view: ClientView,
    model: torch.nn.Module,
    server_round: int,
    target: np.ndarray | None = None,
    ratio: np.ndarray | None = None,
    proximal_mu: float = 0.0,
    adapter_digest: str = "",
) -> dict[str, Any]:
    """One local update of the client `view` resolves; also measures the updated model on its personalized
    test subset.

    `ratio` is the monitor's Ra (Ratio Loss), `proximal_mu` FedProx's μ, both as the server
    sent them; `adapter_digest` names the federated generator's adapter its fill was drawn with. The
    personalized subset follows the client's *real* class distribution, in
    its look. With a domain, the in-domain accuracy is the same model on all classes,
    uniformly mixed, in its look: a class the client lacks still meets it in its own domain.
    """
    settings, client_id = view.settings, view.client_id
    started = time.perf_counter()
    trained_on = view.training_data(target, adapter_digest)
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
        "num-examples": len(view.data),
        "train-loss": loss,
        "train-seconds": train_seconds,
        "personalized-accuracy": evaluate(model, view.personalized_test)["accuracy"],
    }
    if sends_class_counts(settings):
        metrics["class-counts"] = trained_on.class_counts().tolist()
    if view.domain.kind != "none":
        metrics["in-domain-accuracy"] = evaluate(model, view.in_domain_test)["accuracy"]
    return {**metrics, "eval-seconds": time.perf_counter() - started - train_seconds}


def local_update(
    settings: ExperimentSettings, client_id: int, weights: dict[str, np.ndarray], round_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """train_client from the global weights as arrays to the client's weights as arrays: what a ClientApp
    and a node's `regl serve` (POST /v1/train) both run. The client's data is resolved once (client_view)
    and handed down.

    `round_config` is what the server sent with the round: its number, the fill's target
    composition, the federated generator's adapter digest, the monitor's Ra (Ratio Loss) and
    FedProx's μ when there are any.
    """
    view = client_view(settings, client_id)
    model = new_model(settings, view)
    try:
        model.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in weights.items()})
    except RuntimeError as exc:
        like = view.data
        raise ReglError(
            f"client {client_id}'s model ({like.resolution}×{like.resolution}×{like.channels} images, "
            f"{len(view.class_names)} classes) does not fit the global model: {str(exc).splitlines()[0]}"
        ) from exc
    composition, ratio = round_config.get("fill-target-composition"), round_config.get("ratio")
    metrics = train_client(
        view,
        model,
        int(round_config["server-round"]),
        np.asarray(composition, dtype=np.float64) if composition else None,
        np.asarray(ratio, dtype=np.float64) if ratio is not None else None,
        float(round_config.get("proximal-mu", 0.0)),  # what Flower's FedProx sends
        str(round_config.get("fill-adapter-digest", "")),
    )
    return {name: tensor.numpy() for name, tensor in model.state_dict().items()}, metrics


def personalized_test_set(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """See ClientView.personalized_test."""
    return client_view(settings, client_id).personalized_test


def in_domain_test_set(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    """See ClientView.in_domain_test."""
    return client_view(settings, client_id).in_domain_test


def sends_class_counts(settings: ExperimentSettings) -> bool:
    """The class counts of what a client trained on leave it only for what needs them on the server:
    the monitor's true composition (Ratio Loss) and class-balanced aggregation."""
    return settings.loss == "ratio" or settings.aggregate_weight == "class-balanced"
