"""Every byte a client sends, by what it is: the run's privacy accounting.

Clients talk only to the server, so the replies the server receives are everything that
leaves a client. Sizes are those of the serialised payloads (arrays in .npy form, numbers
as 8 bytes, strings by length), not counting Flower's message envelope.
"""

from collections import defaultdict

from flwr.app import ArrayRecord, Message

RECORD_MEANING = {
    "arrays": "model weights",
    "metrics": "training and fill metrics",
    "class-counts": "class counts",
    "mixed-images": "mixed images (mixup)",
    "adapter": "generator adapter (LoRA)",
    "data": "digest of the client's images",
}


def _value_bytes(value) -> int:
    if isinstance(value, (list, tuple)):
        return sum(_value_bytes(v) for v in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


def record_bytes(record) -> int:
    if isinstance(record, ArrayRecord):
        return sum(len(array.data) for array in record.values())
    return sum(len(key) + _value_bytes(value) for key, value in record.items())


class TrafficLog:
    """One entry per record of every reply: who sent it, in answer to what, its size and arrays."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.client_of_node: dict[int, int] = {}

    def add(self, action: str, msg: Message) -> None:
        node = msg.metadata.src_node_id
        for name, record in msg.content.items():
            if "client" in getattr(record, "keys", lambda: ())():
                self.client_of_node[node] = int(record["client"])
            entry = {"node": node, "action": action, "record": name, "bytes": record_bytes(record)}
            if isinstance(record, ArrayRecord):
                entry["arrays"] = [[key, array.dtype, list(array.shape)] for key, array in record.items()]
            self.entries.append(entry)

    def messages(self) -> list[dict]:
        return [{"client": self.client_of_node.get(e["node"]), **e} for e in self.entries]

    def bytes_per_client(self) -> dict[str, dict[str, int]]:
        """client → what was sent (in words) → bytes."""
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for entry in self.messages():
            totals[str(entry["client"])][RECORD_MEANING.get(entry["record"], entry["record"])] += entry["bytes"]
        return {client: dict(kinds) for client, kinds in sorted(totals.items(), key=lambda kv: kv[0])}
