"""The federated runs this node takes part in, as the rounds it trains for them tell it: the page's live view.

A run's round r reaches the node as a training request (POST /v1/train) carrying the server's
global accuracy after each earlier round (`global-accuracy` in the round's config, round 0 being
the model before any training), so the node's view of the run is one round behind the server's
and grows only in the rounds it is sampled for.
"""

from __future__ import annotations

import threading
import time
from copy import deepcopy
from typing import Any

MAX_RUNS = 8  # the oldest run is forgotten beyond these


class RunLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, Any]] = {}

    def record(self, name: str, num_rounds: int, client: int, config: dict, metrics: dict) -> None:
        """A round this node trained for run `name`, with what the server sent and what the training measured."""
        accuracy = [float(a) for a in config.get("global-accuracy", [])]
        with self._lock:
            run = self._runs.pop(name, None) or {
                "name": name,
                "client": client,
                "num_rounds": num_rounds,
                "rounds_trained": [],
                "global_accuracy": [],
            }
            run["rounds_trained"].append(
                {
                    "round": int(config["server-round"]),
                    "train_loss": float(metrics["train-loss"]),
                    "personalized_accuracy": float(metrics["personalized-accuracy"]),
                }
            )
            if len(accuracy) >= len(run["global_accuracy"]):
                run["global_accuracy"] = accuracy
            run["updated"] = time.time()
            self._runs[name] = run  # last in: the most recently trained
            while len(self._runs) > MAX_RUNS:
                self._runs.pop(next(iter(self._runs)))

    def all(self) -> list[dict[str, Any]]:
        """The runs, the most recently trained first."""
        with self._lock:
            return [deepcopy(run) for run in reversed(self._runs.values())]
