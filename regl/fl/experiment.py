"""One federated experiment's settings and the per-client work, free of Flower code.

The Flower apps in `clients/` and the centralized reference both call into this module,
so every arm uses the same data, model, optimiser and seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from regl.data.datasets import ImageDataset, load_split
from regl.fill.client import ClientFill, FillSettings, client_plan, with_fill
from regl.train.metrics import personalized_test_indices
from regl.train.models import build_model, default_model_name
from regl.data.partitions import Partition, PartitionSpec, partition_labels
from regl.train.loop import TrainSettings, evaluate, train

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
    fill: FillSettings = field(default_factory=FillSettings)

    def to_config(self) -> dict[str, Any]:
        """Flat, kebab-case keys: the form of Flower's run config and ConfigRecord."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("partition", "train", "fill")}
        flat.update({f"partition-{k}": v for k, v in asdict(self.partition).items() if k != "seed"})
        flat.update({f"train-{k}": v for k, v in asdict(self.train).items()})
        flat.update({("fill" if k == "mode" else f"fill-{k}"): v for k, v in asdict(self.fill).items()})
        return {k.replace("_", "-"): v for k, v in flat.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExperimentSettings:
        """Inverse of to_config; keys it does not know are ignored, missing ones default."""
        flat = {k.replace("-", "_"): v for k, v in config.items()}
        seed = int(flat.get("seed", 0))
        partition = PartitionSpec(**_typed(PartitionSpec(), flat, "partition_"), seed=seed)
        train_settings = TrainSettings(**_typed(TrainSettings(), flat, "train_"))
        fill = FillSettings(**_typed(FillSettings(), {"fill_mode": flat.get("fill", "none"), **flat}, "fill_"))
        return cls(**_typed(cls(), flat, ""), partition=partition, train=train_settings, fill=fill)

    @property
    def name(self) -> str:
        name = f"{self.dataset.rstrip('/').split('/')[-1]}-{self.partition.describe()}-s{self.seed}"
        return name if self.fill.mode == "none" else f"{name}-fill-{self.fill.mode}"


def _typed(defaults: Any, flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Values of `flat` for the fields of `defaults`, cast to each default's type."""
    out = {}
    for f in fields(defaults):
        if prefix + f.name in flat and f.name != "seed" and not is_dataclass(getattr(defaults, f.name)):
            kind = type(getattr(defaults, f.name))
            value = flat[prefix + f.name]
            out[f.name] = value.lower() in ("1", "true", "yes") if kind is bool and isinstance(value, str) else kind(value)
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


def client_fill(settings: ExperimentSettings, client_id: int) -> ClientFill:
    from regl.generate.prompts import template_for

    return ClientFill(settings.dataset, template_for(settings.dataset), client_id, settings.seed, settings.fill)


def prepare_fill(settings: ExperimentSettings, client_id: int, target: np.ndarray | None,
                 mixed: ImageDataset | None) -> dict[str, Any]:
    """Plan and make this client's synthetic fill before its first round; returns counts and timings."""
    data = client_data(settings, client_id)
    plan = client_plan(settings.fill, data.class_counts(), target)
    remote = None
    if settings.fill.service:
        from regl.fill.remote import remote_fill

        remote = remote_fill(settings.fill.service, settings.fill, settings.seed, data, target)
    synthetic, timings = client_fill(settings, client_id).make(data, plan, mixed, remote)
    return {"client": client_id, "real-images": len(data), "synthetic-images": len(synthetic),
            **{f"planned-{source}": int(counts.sum()) for source, counts in plan.counts.items()},
            **{k.replace("_", "-"): float(v) for k, v in timings.items()}}


def training_data(settings: ExperimentSettings, client_id: int, target: np.ndarray | None) -> ImageDataset:
    """What the client trains on: its real images plus its fill (the public pool, or its store)."""
    data = client_data(settings, client_id)
    if settings.fill.mode == "public":
        return with_fill(data, load_split(settings.dataset).public)
    if not settings.fill.synthetic:
        return data
    plan = client_plan(settings.fill, data.class_counts(), target)
    synthetic = client_fill(settings, client_id).load(plan)
    if synthetic is None:
        raise RuntimeError(f"client {client_id} has no complete synthetic store for this run's fill; "
                           "the fill phase did not finish")
    return with_fill(data, synthetic)


def train_client(
    settings: ExperimentSettings, client_id: int, model: torch.nn.Module, server_round: int,
    target: np.ndarray | None = None,
) -> dict[str, Any]:
    """One local update; also measures the updated model on a personalized test subset.

    The personalized subset follows the client's *real* class distribution.
    """
    data = client_data(settings, client_id)
    started = time.perf_counter()
    loss = train(model, training_data(settings, client_id, target), settings.train,
                 seed=settings.seed * 100_003 + server_round * 1009 + client_id)
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
