"""Before round 1: the synthetic fill, with the mixup bounty routed through the server.

1. class counts, only when the fill needs them (mixup requests or a global target);
2. mixup: each client's deficient labels are split among the clients that hold them, the
   holders mix their own images (DP-LabelHide) and the server routes the mixes back;
3. every client plans, fine-tunes its LoRA, generates and stores its fill; a progress line
   as each one finishes.

A node that fails a step is left out of what follows and named in the fill's summary;
the run goes on with the others (its rounds then report it missing), unless none is left.
"""

import json
import time
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from regl.clients.polling import pull_replies
from regl.clients.traffic import TrafficLog
from regl.fill.mixup import assign_requests
from regl.fill.settings import client_plan
from regl.fl.experiment import ExperimentSettings
from regl.fl.progress import FillProgress, Write


def exchange(
    grid: Grid,
    nodes: list[int],
    action: str,
    content: Callable[[int], RecordDict],
    traffic: TrafficLog,
    failures: list[dict],
    on_reply: Callable[[Message], None] | None = None,
) -> list[Message]:
    """Send every node its message and wait for all replies; `on_reply` sees each one as it comes, `failures`
    gets each error reply (a node whose ClientApp raised, or one the SuperLink found dead)."""
    messages = [Message(content(node), dst_node_id=node, message_type=f"query.{action}") for node in nodes]
    replies: list[Message] = []

    def received(reply: Message) -> None:
        if reply.has_error():
            failures.append({"step": action, "node": reply.metadata.src_node_id, "reason": reply.error.reason})
            return
        traffic.add(action, reply)
        replies.append(reply)
        if on_reply is not None:
            on_reply(reply)

    pull_replies(grid, set(grid.push_messages(messages)), timeout=None, on_reply=received)
    if not replies:
        reasons = "; ".join(sorted({f["reason"][:300] for f in failures}))
        raise RuntimeError(f"every client failed in {action}: {reasons}")
    return replies


def mixes_by_requester(replies: list[tuple[int, dict[str, np.ndarray]]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(producer, its arrays x-R / y-R per requester R) → each requester's (x, y), in producer order.

    Replies arrive in whatever order the producers finish; joining them in that order
    would make a rerun train on the same images in another order.
    """
    parts: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for producer, arrays in replies:
        for key, x in arrays.items():
            if key.startswith("x-"):
                requester = int(key[2:])
                parts.setdefault(requester, {})[producer] = (x, arrays[f"y-{requester}"])
    return {
        requester: (
            np.concatenate([by[p][0] for p in sorted(by)]),
            np.concatenate([by[p][1] for p in sorted(by)]),
        )
        for requester, by in parts.items()
    }


def run_fill_phase(
    grid: Grid,
    settings: ExperimentSettings,
    traffic: TrafficLog,
    write: Write,
    adapter: dict[str, np.ndarray] | None = None,
) -> dict:
    """Returns what the run summary records about the fill, and the config extras for training.

    `write` gets one line as the phase starts and one as each client's fill is done. `adapter`:
    the federated generator's, sent with every fill message; its digest then goes with every round.
    """
    fill = settings.fill
    nodes = sorted(grid.get_node_ids())
    write(f"fill phase: {fill.mode} on {len(nodes)} clients; a line as each one is done")
    progress = FillProgress(len(nodes), write)
    config = settings.to_config()
    started = time.perf_counter()
    counts: dict[int, np.ndarray] = {}
    node_of: dict[int, int] = {}
    failures: list[dict] = []
    if "mixup" in fill.sources or fill.target == "global":
        for reply in exchange(
            grid, nodes, "class_counts", lambda _: RecordDict({"config": ConfigRecord(config)}), traffic, failures
        ):
            record = reply.content["class-counts"]
            counts[int(record["client"])] = np.asarray(record["counts"], dtype=np.int64)
            node_of[int(record["client"])] = reply.metadata.src_node_id
    client_of = {node: client for client, node in node_of.items()}
    target = None
    if fill.target == "global":
        total = np.sum(list(counts.values()), axis=0)
        target = total / total.sum()
        config["fill-target-composition"] = target.tolist()

    mixed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    unserved: dict = {}
    if "mixup" in fill.sources:
        requests = {
            client: {c: int(n) for c, n in enumerate(client_plan(fill, held, target).counts["mixup"]) if n}
            for client, held in counts.items()
        }
        assignments, unserved = assign_requests(requests, counts)

        def orders(node: int) -> RecordDict:
            return RecordDict({"config": ConfigRecord({**config, "orders": json.dumps(assignments[client_of[node]])})})

        producers = [node_of[client] for client in assignments]
        replies = exchange(grid, producers, "produce_mixup", orders, traffic, failures)
        mixed = mixes_by_requester(
            [
                (
                    client_of[reply.metadata.src_node_id],
                    {k: a.numpy() for k, a in reply.content["mixed-images"].items()},
                )
                for reply in replies
            ]
        )

    if adapter is not None:
        from regl.clients.adapter_phase import adapter_record
        from regl.fill.keys import adapter_digest

        config["fill-adapter-digest"] = adapter_digest(adapter)
        sent_adapter = adapter_record(adapter)

    def fill_content(node: int) -> RecordDict:
        content = RecordDict({"config": ConfigRecord(config)})
        if adapter is not None:
            content["adapter"] = sent_adapter
        client = client_of.get(node)
        if client in mixed:
            x, y = mixed[client]
            content["mixed-images"] = ArrayRecord({"x": Array(x), "y": Array(y)})
        return content

    def client_done(reply: Message) -> None:
        metrics = reply.content["metrics"]
        progress.client_done(int(metrics["client"]), int(metrics["synthetic-images"]))

    replies = exchange(grid, nodes, "fill", fill_content, traffic, failures, client_done)
    clients = sorted((dict(reply.content["metrics"]) for reply in replies), key=lambda m: m["client"])
    return {
        "summary": {
            "wall_seconds": time.perf_counter() - started,
            "clients": clients,
            "unserved_mixup_requests": unserved,
            "target": "uniform" if target is None else target.tolist(),
            **({"adapter_digest": config["fill-adapter-digest"]} if adapter is not None else {}),
            "failures": failures,
        },
        "train_config": {k: v for k, v in config.items() if k in ("fill-target-composition", "fill-adapter-digest")},
    }
