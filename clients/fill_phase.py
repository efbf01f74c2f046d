"""Before round 1: the synthetic fill, with the mixup bounty routed through the server.

1. class counts, only when the fill needs them (mixup requests or a global target);
2. mixup: each client's deficient labels are split among the clients that hold them, the
   holders mix their own images (DP-LabelHide) and the server routes the mixes back;
3. every client plans, fine-tunes its LoRA, generates and stores its fill.
"""

import json
import time
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from clients.traffic import TrafficLog
from regl.fl.experiment import ExperimentSettings
from regl.fill.client import client_plan
from regl.fill.mixup import assign_requests


def _exchange(grid: Grid, nodes: list[int], action: str, content: Callable[[int], RecordDict],
              traffic: TrafficLog) -> list[Message]:
    messages = [Message(content(node), dst_node_id=node, message_type=f"query.{action}") for node in nodes]
    replies = list(grid.send_and_receive(messages))
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"a client failed in the fill phase ({action}): {reply.error.reason}")
        traffic.add(action, reply)
    if len(replies) != len(nodes):
        raise RuntimeError(f"{len(nodes) - len(replies)} clients did not answer the fill phase ({action})")
    return replies


def run_fill_phase(grid: Grid, settings: ExperimentSettings, traffic: TrafficLog) -> dict:
    """Returns what the run summary records about the fill, and the config extras for training."""
    fill = settings.fill
    nodes = sorted(grid.get_node_ids())
    config = settings.to_config()
    started = time.perf_counter()
    counts: dict[int, np.ndarray] = {}
    node_of: dict[int, int] = {}
    if "mixup" in fill.sources or fill.target == "global":
        for reply in _exchange(grid, nodes, "class_counts", lambda _: RecordDict({"config": ConfigRecord(config)}),
                               traffic):
            record = reply.content["class-counts"]
            counts[int(record["client"])] = np.asarray(record["counts"], dtype=np.int64)
            node_of[int(record["client"])] = reply.metadata.src_node_id
    client_of = {node: client for client, node in node_of.items()}
    target = None
    if fill.target == "global":
        total = np.sum(list(counts.values()), axis=0)
        target = total / total.sum()
        config["fill-target-composition"] = target.tolist()

    mixed: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    unserved: dict = {}
    if "mixup" in fill.sources:
        requests = {client: {c: int(n) for c, n in enumerate(client_plan(fill, held, target).counts["mixup"]) if n}
                    for client, held in counts.items()}
        assignments, unserved = assign_requests(requests, counts)

        def orders(node: int) -> RecordDict:
            return RecordDict({"config": ConfigRecord({**config, "orders": json.dumps(assignments[client_of[node]])})})

        producers = [node_of[client] for client in assignments]
        for reply in _exchange(grid, producers, "produce_mixup", orders, traffic):
            record = reply.content["mixed-images"]
            for key in record:
                if key.startswith("x-"):
                    requester = int(key[2:])
                    mixed.setdefault(requester, []).append((record[key].numpy(), record[f"y-{requester}"].numpy()))

    def fill_content(node: int) -> RecordDict:
        content = RecordDict({"config": ConfigRecord(config)})
        client = client_of.get(node)
        if client in mixed:
            xs, ys = zip(*mixed[client])
            content["mixed-images"] = ArrayRecord({"x": Array(np.concatenate(xs)), "y": Array(np.concatenate(ys))})
        return content

    replies = _exchange(grid, nodes, "fill", fill_content, traffic)
    clients = sorted((dict(reply.content["metrics"]) for reply in replies), key=lambda m: m["client"])
    return {
        "summary": {"wall_seconds": time.perf_counter() - started, "clients": clients,
                    "unserved_mixup_requests": unserved,
                    "target": "uniform" if target is None else target.tolist()},
        "train_config": {k: v for k, v in config.items() if k == "fill-target-composition"},
    }
