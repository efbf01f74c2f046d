"""Before round 1 (or, with partial participation, the first round a client is sampled): the synthetic
fill, with the mixup bounty routed through the server.

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


def class_counts(
    grid: Grid, nodes: list[int], config: dict, traffic: TrafficLog, failures: list[dict]
) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Each client's class counts, and the node it runs on: client → counts, client → node."""
    counts: dict[int, np.ndarray] = {}
    node_of: dict[int, int] = {}
    for reply in exchange(
        grid, nodes, "class_counts", lambda _: RecordDict({"config": ConfigRecord(config)}), traffic, failures
    ):
        record = reply.content["class-counts"]
        counts[int(record["client"])] = np.asarray(record["counts"], dtype=np.int64)
        node_of[int(record["client"])] = reply.metadata.src_node_id
    return counts, node_of


class FillPhase:
    """The fill of every client, or (partial participation) of the clients sampled for the first time in a round.

    Made once per run: the class counts and the mixup bounty's assignments (over every client, sampled or
    not: a holder mixes for a requester when the requester is first sampled). `fill(nodes)` fills those
    nodes' clients; `summary()` is what the run summary records of all the fills made.
    """

    def __init__(
        self,
        grid: Grid,
        settings: ExperimentSettings,
        traffic: TrafficLog,
        write: Write,
        adapter: dict[str, np.ndarray] | None = None,
        known: tuple[dict[int, np.ndarray], dict[int, int]] | None = None,
    ) -> None:
        """`adapter`: the federated generator's, sent with every fill message; its digest then goes with every
        round. `known`: the clients' class counts and nodes where the server asked for them already."""
        self.grid, self.traffic, self.write, self.adapter = grid, traffic, write, adapter
        fill = settings.fill
        self.mode = fill.mode
        self.config = settings.to_config()
        self.failures: list[dict] = []
        self.clients: list[dict] = []
        self.seconds = 0.0
        started = time.perf_counter()
        counts: dict[int, np.ndarray] = {}
        self.node_of: dict[int, int] = {}
        if "mixup" in fill.sources or fill.target == "global":
            nodes = sorted(grid.get_node_ids())
            counts, self.node_of = known or class_counts(grid, nodes, self.config, traffic, self.failures)
        self.target = None
        if fill.target == "global":
            total = np.sum(list(counts.values()), axis=0)
            self.target = total / total.sum()
            self.config["fill-target-composition"] = self.target.tolist()
        self.assignments: dict[int, dict[int, dict[int, int]]] = {}
        self.unserved: dict = {}
        if "mixup" in fill.sources:
            requests = {
                client: {c: int(n) for c, n in enumerate(client_plan(fill, held, self.target).counts["mixup"]) if n}
                for client, held in counts.items()
            }
            self.assignments, self.unserved = assign_requests(requests, counts)
        if adapter is not None:
            from regl.clients.adapter_phase import adapter_record
            from regl.fill.keys import adapter_digest

            self.config["fill-adapter-digest"] = adapter_digest(adapter)
            self.sent_adapter = adapter_record(adapter)
        self.seconds += time.perf_counter() - started

    def fill(self, nodes: list[int]) -> list[int]:
        """Fill the clients on `nodes`; a line as each one is done. Returns the clients filled."""
        started = time.perf_counter()
        self.write(f"fill phase: {self.mode} on {len(nodes)} clients; a line as each one is done")
        progress = FillProgress(len(nodes), self.write)
        mixed = self._mixup([self._client_of(node) for node in nodes])

        def fill_content(node: int) -> RecordDict:
            content = RecordDict({"config": ConfigRecord(self.config)})
            if self.adapter is not None:
                content["adapter"] = self.sent_adapter
            client = self._client_of(node)
            if client in mixed:
                x, y = mixed[client]
                content["mixed-images"] = ArrayRecord({"x": Array(x), "y": Array(y)})
            return content

        def client_done(reply: Message) -> None:
            metrics = reply.content["metrics"]
            progress.client_done(int(metrics["client"]), int(metrics["synthetic-images"]))

        replies = exchange(self.grid, nodes, "fill", fill_content, self.traffic, self.failures, client_done)
        made = sorted((dict(reply.content["metrics"]) for reply in replies), key=lambda m: m["client"])
        self.clients = sorted([*self.clients, *made], key=lambda m: m["client"])
        self.seconds += time.perf_counter() - started
        return [int(m["client"]) for m in made]

    def _client_of(self, node: int) -> int | None:
        return next((client for client, n in self.node_of.items() if n == node), None)

    def _mixup(self, requesters: list[int | None]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The holders mix their own images for `requesters` (DP-LabelHide); the server routes the mixes."""
        wanted = set(requesters)
        orders = {
            producer: {requester: labels for requester, labels in by.items() if requester in wanted}
            for producer, by in self.assignments.items()
        }
        orders = {producer: order for producer, order in orders.items() if order}
        if not orders:
            return {}
        client_of = {node: client for client, node in self.node_of.items()}

        def content(node: int) -> RecordDict:
            return RecordDict({"config": ConfigRecord({**self.config, "orders": json.dumps(orders[client_of[node]])})})

        producers = [self.node_of[producer] for producer in orders]
        replies = exchange(self.grid, producers, "produce_mixup", content, self.traffic, self.failures)
        return mixes_by_requester(
            [
                (
                    client_of[reply.metadata.src_node_id],
                    {k: a.numpy() for k, a in reply.content["mixed-images"].items()},
                )
                for reply in replies
            ]
        )

    def summary(self) -> dict:
        """What the run summary records about the fills made so far."""
        return {
            "wall_seconds": self.seconds,
            "clients": self.clients,
            "unserved_mixup_requests": self.unserved,
            "target": "uniform" if self.target is None else self.target.tolist(),
            **({"adapter_digest": self.config["fill-adapter-digest"]} if self.adapter is not None else {}),
            "failures": self.failures,
        }

    def train_config(self) -> dict:
        """The config extras every round's training needs: the global target, the adapter's digest."""
        return {k: v for k, v in self.config.items() if k in ("fill-target-composition", "fill-adapter-digest")}
