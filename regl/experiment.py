"""One federated experiment's settings and the per-client work, free of Flower code.

The Flower apps in `clients/` and the centralized reference both call into this module,
so every arm uses the same data, model, optimiser and seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from regl.datasets import ImageDataset, load_split
from regl.metrics import personalized_test_indices
from regl.models import build_model, default_model_name
from regl.partitions import Partition, PartitionSpec, partition_labels
from regl.training import TrainSettings, evaluate, train

PERSONALIZED_TEST_SIZE = 1000


@dataclass(frozen=True)
class ExperimentSettings:
    dataset: str = "fashion-mnist"
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: str = ""  # empty: the default for the data's channel count
    num_rounds: int = 20
    train: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    out_dir: str = ""

    def to_config(self) -> dict[str, Any]:
        """Flat, kebab-case keys: the form of Flower's run config and ConfigRecord."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("partition", "train")}
        flat.update({f"partition-{k}": v for k, v in asdict(self.partition).items() if k != "seed"})
        flat.update({f"train-{k}": v for k, v in asdict(self.train).items()})
        return {k.replace("_", "-"): v for k, v in flat.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExperimentSettings:
        """Inverse of to_config; keys it does not know are ignored, missing ones default."""
        flat = {k.replace("-", "_"): v for k, v in config.items()}
        seed = int(flat.get("seed", 0))
        partition = PartitionSpec(**_typed(PartitionSpec(), flat, "partition_"), seed=seed)
        train_settings = TrainSettings(**_typed(TrainSettings(), flat, "train_"))
        top = _typed(cls(), flat, "")
        top.pop("partition", None)
        top.pop("train", None)
        return cls(**top, partition=partition, train=train_settings)

    @property
    def name(self) -> str:
        return f"{self.dataset.rstrip('/').split('/')[-1]}-{self.partition.describe()}-s{self.seed}"


def _typed(defaults: Any, flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Values of `flat` for the fields of `defaults`, cast to each default's type."""
    out = {}
    for f in fields(defaults):
        if prefix + f.name in flat and f.name != "seed":
            out[f.name] = type(getattr(defaults, f.name))(flat[prefix + f.name])
    if not prefix and "seed" in flat:
        out["seed"] = int(flat["seed"])
    return out


@lru_cache(maxsize=8)
def federation(settings: ExperimentSettings) -> Partition:
    split = load_split(settings.dataset)
    return partition_labels(settings.partition, split.private.y, split.private.num_classes)


def client_data(settings: ExperimentSettings, client_id: int) -> ImageDataset:
    split = load_split(settings.dataset)
    return split.private.subset(federation(settings).client_indices[client_id])


def test_data(settings: ExperimentSettings) -> ImageDataset:
    return load_split(settings.dataset).test


def new_model(settings: ExperimentSettings) -> torch.nn.Module:
    """The initial global model; identical for every arm with the same seed."""
    test = test_data(settings)
    name = settings.model or default_model_name(test.channels)
    torch.manual_seed(settings.seed)
    return build_model(name, test.channels, test.num_classes, test.resolution)


def evaluate_global(settings: ExperimentSettings, model: torch.nn.Module) -> dict[str, Any]:
    return evaluate(model, test_data(settings), federation(settings).minority_classes)


def train_client(
    settings: ExperimentSettings, client_id: int, model: torch.nn.Module, server_round: int
) -> dict[str, Any]:
    """One local update; also measures the updated model on a personalized test subset."""
    data = client_data(settings, client_id)
    started = time.perf_counter()
    loss = train(model, data, settings.train, seed=settings.seed * 100_003 + server_round * 1009 + client_id)
    train_seconds = time.perf_counter() - started
    test = test_data(settings)
    subset = personalized_test_indices(
        test.y, data.class_counts(), PERSONALIZED_TEST_SIZE, seed=settings.seed + client_id
    )
    personal = evaluate(model, test.subset(subset))
    return {
        "client": client_id,
        "num-examples": len(data),
        "train-loss": loss,
        "train-seconds": train_seconds,
        "personalized-accuracy": personal["accuracy"],
        "eval-seconds": time.perf_counter() - started - train_seconds,
    }


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
