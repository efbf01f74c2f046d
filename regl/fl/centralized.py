"""The centralized reference: the federation's data pooled and trained as one model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from regl.data.datasets import ImageDataset
from regl.fl.experiment import ExperimentSettings, client_data, evaluate_global, federation, new_model
from regl.fl.progress import RoundProgress, Write, print_line
from regl.fl.report import RunReport
from regl.seeds import derive_seed
from regl.train.loop import train


def run_centralized(settings: ExperimentSettings, write: Write = print_line) -> dict:
    """One 'round' is settings.train.epochs epochs over the pooled private data; `write` gets a line per round.

    Each client's images come in its domain's look, pooled in private-pool order.
    """
    indices = federation(settings).client_indices
    order = np.argsort(np.concatenate(indices), kind="stable")
    parts = [client_data(settings, client_id) for client_id in range(len(indices))]
    x, y = np.concatenate([p.x for p in parts])[order], np.concatenate([p.y for p in parts])[order]
    data = ImageDataset(x, y, parts[0].class_names)
    model = new_model(settings)
    report = RunReport(
        Path(settings.out_dir), {"name": f"{settings.name}-centralized", "mode": "centralized", **settings.to_config()}
    )
    started = time.perf_counter()
    progress = RoundProgress(settings.num_rounds, started, write)
    initial = evaluate_global(settings, model)
    report.add_round({"round": 0, **initial})
    progress.round_done(0, initial["accuracy"])
    for server_round in range(1, settings.num_rounds + 1):
        round_started = time.perf_counter()
        loss = train(model, data, settings.train, seed=derive_seed(settings.seed, "centralized-train", server_round))
        result = evaluate_global(settings, model)
        report.add_round(
            {"round": server_round, **result, "train_loss": loss, "round_seconds": time.perf_counter() - round_started}
        )
        progress.round_done(server_round, result["accuracy"])
    return report.finish({"wall_seconds": time.perf_counter() - started})
