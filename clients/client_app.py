"""ClientApp: the synthetic fill before the first round, then one local update per round.

What each handler sends back is all that ever leaves the client: class counts (only when
the fill, the Ratio Loss's monitor or class-balanced aggregation needs them), the mixup
images it produces for other clients (mixup fill only), fill timings, and model weights
(clipped under DP) with training metrics.
"""

import json
from dataclasses import replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from regl.data.datasets import ImageDataset
from regl.fill.mixup import MixupSettings, label_hide_mixup
from regl.fl.experiment import ExperimentSettings, client_data, new_model, prepare_fill, train_client

app = ClientApp()


def _settings(msg: Message, context: Context) -> tuple[ExperimentSettings, int]:
    """The run's settings; a node's own `fill-service` (its `regl serve`) wins over the run config's."""
    torch.set_num_threads(1)
    settings = ExperimentSettings.from_config(dict(msg.content["config"]))
    if context.node_config.get("fill-service"):
        settings = replace(settings, fill=replace(settings.fill, service=str(context.node_config["fill-service"])))
    num_nodes = int(context.node_config["num-partitions"])
    if num_nodes != settings.partition.num_clients:
        raise ValueError(
            f"the run config asks for {settings.partition.num_clients} clients but the federation has {num_nodes} nodes"
        )
    return settings, int(context.node_config["partition-id"])


def _target(msg: Message) -> np.ndarray | None:
    composition = msg.content["config"].get("fill-target-composition")
    return np.asarray(composition, dtype=np.float64) if composition else None


@app.query("class_counts")
def class_counts(msg: Message, context: Context) -> Message:
    settings, client_id = _settings(msg, context)
    counts = client_data(settings, client_id).class_counts()
    return Message(
        RecordDict({"class-counts": MetricRecord({"client": client_id, "counts": counts.tolist()})}), reply_to=msg
    )


@app.query("produce_mixup")
def produce_mixup(msg: Message, context: Context) -> Message:
    """Mix this client's images for the labels other clients lack (DP-LabelHide: labels are not mixed)."""
    settings, client_id = _settings(msg, context)
    orders = json.loads(msg.content["config"]["orders"])
    data = client_data(settings, client_id)
    arrays = {}
    for requester, requests in orders.items():
        mixed, _ = label_hide_mixup(
            data,
            {int(c): int(n) for c, n in requests.items()},
            MixupSettings(),
            seed=settings.seed * 1009 + client_id * 31 + int(requester),
        )
        arrays[f"x-{requester}"], arrays[f"y-{requester}"] = Array(mixed.x), Array(mixed.y)
    return Message(RecordDict({"mixed-images": ArrayRecord(arrays)}), reply_to=msg)


@app.query("fill")
def fill(msg: Message, context: Context) -> Message:
    settings, client_id = _settings(msg, context)
    mixed = None
    if "mixed-images" in msg.content:
        record = msg.content["mixed-images"]
        names = client_data(settings, client_id).class_names
        mixed = ImageDataset(record["x"].numpy(), record["y"].numpy().astype(np.int64), names)
    metrics = prepare_fill(settings, client_id, _target(msg), mixed)
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
    model = new_model(settings)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    metrics = train_client(
        settings,
        client_id,
        model,
        int(config["server-round"]),
        _target(msg),
        ratio=np.asarray(config["ratio"], dtype=np.float64) if "ratio" in config else None,
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # what Flower's FedProx sends
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
