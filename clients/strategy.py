"""FedAvg that also keeps each client's reply metrics and the round's timing."""

import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from clients.traffic import TrafficLog

# Client metrics whose weighted mean over the clients means something; the rest (the
# client's id, its timings) are kept per client in rounds.json instead.
AVERAGED_METRICS = ("train-loss", "personalized-accuracy", "in-domain-accuracy")


def mean_client_metrics(replies: list[RecordDict], weighting_key: str) -> MetricRecord:
    """AVERAGED_METRICS every client reported, weighted by each one's `weighting_key` (its real image count)."""
    metrics = [reply["metrics"] for reply in replies]
    total = sum(float(m[weighting_key]) for m in metrics)
    names = [name for name in AVERAGED_METRICS if all(name in m for m in metrics)]
    return MetricRecord(
        {name: sum(float(m[name]) * float(m[weighting_key]) for m in metrics) / total for name in names}
    )


class RecordingFedAvg(FedAvg):
    """Plain FedAvg aggregation; `last_round` holds what the run report needs, `traffic` every reply."""

    def __init__(self, traffic: TrafficLog, **kwargs) -> None:
        super().__init__(fraction_evaluate=0.0, train_metrics_aggr_fn=mean_client_metrics, **kwargs)
        self.last_round: dict = {}
        self.traffic = traffic

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.last_round = {"started": time.perf_counter()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Replies arrive in whatever order the clients finish; summing them in client order
        # keeps the float rounding of the average, and so the whole run, reproducible.
        replies = sorted(replies, key=lambda m: m.content["metrics"]["client"] if m.has_content() else -1)
        self.last_round["trained"] = time.perf_counter()
        for msg in replies:
            if msg.has_content():
                self.traffic.add("train", msg)
        self.last_round["clients"] = sorted(
            (dict(msg.content["metrics"]) for msg in replies if msg.has_content()),
            key=lambda m: m["client"],
        )
        self.last_round["failures"] = sum(not msg.has_content() for msg in replies)
        return super().aggregate_train(server_round, replies)
