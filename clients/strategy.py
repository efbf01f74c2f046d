"""The server's strategies (Flower's FedAvg, FedProx, FedAvgM, FedAdam) with what ReGL adds to each.

`Recording` keeps each round's client metrics and timing for the run report, sums the
replies in client order (reproducible float rounding), and can weight the clients by
class balance (regl/fl/aggregation.py) and run the Ratio Loss's composition monitor
(regl/fl/monitor.py). `build_strategy` wraps the result in Flower's DP wrapper when asked.
"""

import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Strategy,
)

from regl.clients.participation import SampledGrid
from regl.clients.traffic import TrafficLog
from regl.fl.aggregation import class_balanced_weights
from regl.fl.monitor import CompositionMonitor
from regl.fl.settings import ExperimentSettings

# Client metrics whose weighted mean over the clients means something; the rest (the
# client's id, its timings) are kept per client in rounds.json instead.
AVERAGED_METRICS = ("train-loss", "personalized-accuracy", "in-domain-accuracy")
# The weight each reply carries into the average, by --aggregate-weight (uniform under DP).
WEIGHT_KEY = "aggregate-weight"
FEDAVGM = {"server_learning_rate": 1.0, "server_momentum": 0.9}  # Hsu et al. 2019
FEDADAM = {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}  # Reddi et al. 2021's CNN setting


def mean_client_metrics(replies: list[RecordDict], weighting_key: str) -> MetricRecord:
    """AVERAGED_METRICS every client reported, weighted by each one's `weighting_key`."""
    metrics = [reply["metrics"] for reply in replies]
    total = sum(float(m[weighting_key]) for m in metrics)
    names = [name for name in AVERAGED_METRICS if all(name in m for m in metrics)]
    return MetricRecord(
        {name: sum(float(m[name]) * float(m[weighting_key]) for m in metrics) / total for name in names}
    )


class Recording:
    """Mixed in before a Flower strategy; `last_round` holds what the run report needs, `traffic` every reply."""

    def __init__(
        self,
        traffic: TrafficLog,
        weighting: str,
        monitor: CompositionMonitor | None,
        num_clients: int,
        choose: Callable[[int], tuple[list[int], dict]] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            fraction_evaluate=0.0, train_metrics_aggr_fn=mean_client_metrics, weighted_by_key=WEIGHT_KEY, **kwargs
        )
        self.last_round: dict = {}
        self.traffic, self.weighting, self.monitor = traffic, weighting, monitor
        self.num_clients = num_clients
        # partial participation: a round's nodes, and what the round records of choosing them (its participants,
        # the fills made for clients sampled the first time); None: every connected node trains
        self.choose = choose
        self.client_of_node: dict[int, int] = {}  # learnt from replies: a node that fails is named by its client
        # the global model's accuracy after each round so far (round 0: before training), sent with every round:
        # a node's `regl serve` shows the run's progress from it (service/runs.py)
        self.global_accuracy: list[float] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        chosen: dict = {}
        if self.choose is not None:
            nodes, chosen = self.choose(server_round)
            grid = SampledGrid(grid, nodes)
        self.last_round = {"started": time.perf_counter(), **chosen}
        if self.global_accuracy:
            config["global-accuracy"] = list(self.global_accuracy)
        if self.monitor is not None:
            self.monitor.start_round(arrays.to_torch_state_dict())
            if (ratio := self.monitor.ratio) is not None:
                config["ratio"] = ratio.tolist()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Replies arrive in whatever order the clients finish; summing them in client order
        # keeps the float rounding of the average, and so the whole run, reproducible.
        replies = sorted(replies, key=lambda m: m.content["metrics"]["client"] if m.has_content() else -1)
        answered = [msg for msg in replies if msg.has_content()]
        self.last_round["trained"] = time.perf_counter()
        for msg in answered:
            self.traffic.add("train", msg)
        self._set_weights(answered)
        self.last_round["clients"] = [
            {k: v for k, v in msg.content["metrics"].items() if k != "class-counts"} for msg in answered
        ]
        self.last_round["failures"] = len(replies) - len(answered)
        self.last_round.update(self._missing(answered, [msg for msg in replies if msg.has_error()]))
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.monitor is not None and arrays is not None:
            counts = np.sum([msg.content["metrics"]["class-counts"] for msg in answered], axis=0)
            self.last_round["monitor"] = self.monitor.end_round(server_round, arrays.to_torch_state_dict(), counts)
        return arrays, metrics

    def _missing(self, answered: list[Message], failed: list[Message]) -> dict:
        """Which clients sent no update this round, and why where a node said (an error reply or a dead node)."""
        for msg in answered:
            self.client_of_node[msg.metadata.src_node_id] = int(msg.content["metrics"]["client"])
        clients = {int(msg.content["metrics"]["client"]) for msg in answered}
        errors = [
            {
                "node": msg.metadata.src_node_id,
                "client": self.client_of_node.get(msg.metadata.src_node_id),
                "reason": msg.error.reason[:1000],
            }
            for msg in failed
        ]
        expected = self.last_round.get("participants", range(self.num_clients))
        return {"missing_clients": sorted(set(expected) - clients), "errors": errors}

    def _set_weights(self, replies: list[Message]) -> None:
        metrics = [msg.content["metrics"] for msg in replies]
        if self.weighting == "class-balanced":
            weights = class_balanced_weights(np.array([m["class-counts"] for m in metrics]))
        elif self.weighting == "uniform":
            weights = np.ones(len(metrics))
        else:
            weights = np.array([float(m["num-examples"]) for m in metrics])
        for m, weight in zip(metrics, weights, strict=True):
            m[WEIGHT_KEY] = float(weight)


class RecordingFedAvg(Recording, FedAvg):
    pass


class RecordingFedProx(Recording, FedProx):
    pass


class RecordingFedAvgM(Recording, FedAvgM):
    pass


class RecordingFedAdam(Recording, FedAdam):
    pass


def build_strategy(
    settings: ExperimentSettings,
    traffic: TrafficLog,
    monitor: CompositionMonitor | None,
    choose: Callable[[int], tuple[list[int], dict]] | None = None,
) -> tuple[Strategy, Recording]:
    """The strategy to start and the recording one inside it (the same object unless DP wraps it); `choose`:
    Recording's, under partial participation."""
    n = settings.partition.num_clients
    common = {
        "traffic": traffic,
        # under DP the noise is calibrated to a uniform mean: one client moves it by at most clip/N
        "weighting": "uniform" if settings.dp_noise else settings.aggregate_weight,
        "monitor": monitor,
        "num_clients": n,
        "choose": choose,
        # every node shown trains (a skewed client holds classes the others lack; under partial participation
        # `choose` shows the round's sample), and a round goes on with as few as one: a dead node is left out
        # instead of the run waiting for it forever
        "fraction_train": 1.0,
        "min_train_nodes": 1,
        "min_available_nodes": 1,
    }
    recording: Recording = {
        "fedavg": lambda: RecordingFedAvg(**common),
        "fedprox": lambda: RecordingFedProx(**common, proximal_mu=settings.fedprox_mu),
        "fedavgm": lambda: RecordingFedAvgM(**common, **FEDAVGM),
        "fedadam": lambda: RecordingFedAdam(**common, **FEDADAM, eta_l=settings.train.lr),
    }[settings.strategy]()
    if not settings.dp_noise:
        return recording, recording
    wrapper = {
        "client": DifferentialPrivacyClientSideFixedClipping,
        "server": DifferentialPrivacyServerSideFixedClipping,
    }[settings.dp_clipping]
    return wrapper(recording, settings.dp_noise, settings.dp_clip, settings.clients_per_round or n), recording
