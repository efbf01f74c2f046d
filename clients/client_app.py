"""ClientApp: the synthetic fill before the first round, then one local update per round.

What each handler sends back is all that ever leaves the client: class counts (only when
the fill, the Ratio Loss's monitor or class-balanced aggregation needs them), the mixup
images it produces for other clients (mixup fill only), fill timings, and model weights
(clipped under DP) with training metrics.

The node config says where the work runs: `data-dir` (the node's own images, else its
share of the run's dataset), `fill-service` (its `regl serve` makes the fill and trains the
generator's adapter rounds) and `train-service` (its `regl serve` trains the classifier's
rounds), else in this process. Torch is imported only by a handler that trains or fills
here: Flower starts a fresh process for every message, and a node whose service trains pays
no import.
"""

import json
from dataclasses import replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from regl.fl.settings import ExperimentSettings

app = ClientApp()


def _settings(msg: Message, context: Context) -> tuple[ExperimentSettings, int]:
    """The run's settings with this node's own: its data folder and its `regl serve` for the fill."""
    settings = ExperimentSettings.from_config(dict(msg.content["config"]))
    node = context.node_config
    if node.get("fill-service"):
        settings = replace(settings, fill=replace(settings.fill, service=str(node["fill-service"])))
    if node.get("data-dir"):
        settings = replace(settings, data_dir=str(node["data-dir"]))
    num_nodes = int(node["num-partitions"])
    if num_nodes != settings.partition.num_clients:
        raise ValueError(
            f"the run config asks for {settings.partition.num_clients} clients but the federation has {num_nodes} nodes"
        )
    return settings, int(node["partition-id"])


def _in_process() -> None:
    """This process computes: one torch thread, as every client of the simulation."""
    import torch

    torch.set_num_threads(1)


def _target(msg: Message) -> np.ndarray | None:
    composition = msg.content["config"].get("fill-target-composition")
    return np.asarray(composition, dtype=np.float64) if composition else None


@app.query("class_counts")
def class_counts(msg: Message, context: Context) -> Message:
    from regl.fl.experiment import client_data

    settings, client_id = _settings(msg, context)
    counts = client_data(settings, client_id).class_counts()
    return Message(
        RecordDict({"class-counts": MetricRecord({"client": client_id, "counts": counts.tolist()})}), reply_to=msg
    )


@app.query("produce_mixup")
def produce_mixup(msg: Message, context: Context) -> Message:
    """Mix this client's images for the labels other clients lack (DP-LabelHide: labels are not mixed)."""
    from regl.fill.mixup import MixupSettings, label_hide_mixup
    from regl.fl.experiment import client_data
    from regl.seeds import derive_seed

    settings, client_id = _settings(msg, context)
    orders = json.loads(msg.content["config"]["orders"])
    data = client_data(settings, client_id)
    arrays = {}
    for requester, requests in orders.items():
        mixed, _ = label_hide_mixup(
            data,
            {int(c): int(n) for c, n in requests.items()},
            MixupSettings(),
            seed=derive_seed(settings.seed, "mixup", client_id, int(requester)),
        )
        arrays[f"x-{requester}"], arrays[f"y-{requester}"] = Array(mixed.x), Array(mixed.y)
    return Message(RecordDict({"mixed-images": ArrayRecord(arrays)}), reply_to=msg)


@app.query("adapter_round")
def adapter_round(msg: Message, context: Context) -> Message:
    """The federated generator: train the global adapter a few steps on this client's images (in its fill
    service where the node has one), send it back with the digest of the images it trained on."""
    from regl.fl.federated_generator import adapter_round as train_round

    settings, client_id = _settings(msg, context)
    if not settings.fill.service:
        _in_process()
    adapter = {name: array.numpy() for name, array in msg.content["adapter"].items()}
    server_round = int(msg.content["config"]["adapter-round"])
    trained, metrics, digest = train_round(settings, client_id, adapter, server_round)
    arrays = ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in trained.items()})
    return Message(
        RecordDict({"adapter": arrays, "metrics": MetricRecord(metrics), "data": _digest(client_id, digest)}),
        reply_to=msg,
    )


@app.query("data_digest")
def data_digest(msg: Message, context: Context) -> Message:
    """Which images the generator's kept rounds would have been trained on (the fill service's, where the node
    has one), by a digest of them."""
    from regl.fl.federated_generator import client_data_digest

    settings, client_id = _settings(msg, context)
    return Message(RecordDict({"data": _digest(client_id, client_data_digest(settings, client_id))}), reply_to=msg)


def _digest(client_id: int, digest: str) -> ConfigRecord:
    return ConfigRecord({"client": client_id, "digest": digest})


@app.query("fill")
def fill(msg: Message, context: Context) -> Message:
    from regl.data.datasets import ImageDataset
    from regl.fl.experiment import client_data, prepare_fill

    _in_process()
    settings, client_id = _settings(msg, context)
    mixed = None
    if "mixed-images" in msg.content:
        record = msg.content["mixed-images"]
        names = client_data(settings, client_id).class_names
        mixed = ImageDataset(record["x"].numpy(), record["y"].numpy().astype(np.int64), names)
    adapter = None
    if "adapter" in msg.content:
        from regl.fl.federated_generator import forget_trainings

        forget_trainings()  # the generator's rounds are over: free their pipelines before the fill loads one
        adapter = {name: array.numpy() for name, array in msg.content["adapter"].items()}
    metrics = prepare_fill(settings, client_id, _target(msg), mixed, adapter)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's `fixedclipping_mod` when the server asks for clipped updates (its DP wrapper sends the norm)."""
    if KEY_CLIPPING_NORM in msg.content["config"]:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    settings, client_id = _settings(msg, context)
    config = msg.content["config"]
    weights = {name: array.numpy() for name, array in msg.content["arrays"].items()}
    if service := context.node_config.get("train-service"):
        from regl.fl.remote_update import remote_update

        run_config = {**dict(config), **settings.to_config()}  # with this node's fill service
        updated, metrics = remote_update(str(service), run_config, client_id, settings.data_dir, weights)
    else:
        from regl.fl.experiment import local_update

        _in_process()
        updated, metrics = local_update(settings, client_id, weights, dict(config))
    arrays = ArrayRecord({name: Array(np.ascontiguousarray(array)) for name, array in updated.items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
