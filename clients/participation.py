"""The server's side of partial participation (`--clients-per-round`): which nodes a round sends to.

The draw is over client ids (regl/fl/participation.py); the node each client runs on is learnt
from its class-counts reply at the start, and again for a node that joins later (a SuperNode
started again has a new id). Only clients whose node is connected are drawn from.
"""

from collections.abc import Iterable

import numpy as np
from flwr.serverapp import Grid

from regl.clients.fill_phase import class_counts
from regl.clients.traffic import TrafficLog
from regl.fl.participation import sample_clients
from regl.fl.settings import ExperimentSettings


class Participation:
    def __init__(self, grid: Grid, settings: ExperimentSettings, traffic: TrafficLog) -> None:
        self.grid, self.traffic = grid, traffic
        self.seed, self.per_round = settings.seed, settings.clients_per_round
        self.config = settings.to_config()
        self.failures: list[dict] = []
        self.counts: dict[int, np.ndarray] = {}
        self.node_of: dict[int, int] = {}
        self._learn(sorted(grid.get_node_ids()))

    def _learn(self, nodes: list[int]) -> None:
        counts, node_of = class_counts(self.grid, nodes, self.config, self.traffic, self.failures)
        self.counts.update(counts)
        self.node_of.update(node_of)

    def sample(self, phase: str, server_round: int) -> dict[int, int]:
        """The round's clients, each with its node (client → node)."""
        connected = set(self.grid.get_node_ids())
        if unknown := sorted(connected - set(self.node_of.values())):
            self._learn(unknown)
        available = [client for client, node in self.node_of.items() if node in connected]
        return {c: self.node_of[c] for c in sample_clients(self.seed, phase, server_round, available, self.per_round)}


class SampledGrid:
    """The run's Grid, showing only the round's sampled nodes: Flower's strategy then trains all of them."""

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        self._grid, self._nodes = grid, sorted(nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)
