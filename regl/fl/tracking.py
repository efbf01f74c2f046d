"""Runs and benches in MLflow: parameters, metrics by round, the fill's statistics and the figures.

A run is logged from its own folder's files (summary.json, rounds.json, the figures) once it has
ended, by the `regl` process outside the sandbox: a tracking server is not on loopback, and the
files are what the run reported. By default the store is `mlflow.db` in the run's (or bench's)
folder, its artifacts beside it in `mlartifacts/`; `MLFLOW_TRACKING_URI` names a server instead.
A bench is one run with a nested run per arm and seed; a folder already logged to the store is
not logged again, so a resumed bench adds only the cells it ran.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regl.errors import ReglError

EXPERIMENT = "regl"
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
FOLDER_TAG = "regl.folder"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
BATCH = 500  # MLflow takes at most 1,000 metrics and 100 params per batch


def tracking_uri(folder: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder / STORE).resolve()}"


def _client(folder: Path):
    """The tracking client and the experiment id, the experiment made on first use."""
    import logging

    from mlflow.tracking import MlflowClient

    for noisy in ("alembic", "mlflow"):  # the local store's migrations, on first use
        logging.getLogger(noisy).setLevel(logging.WARNING)
    local = "MLFLOW_TRACKING_URI" not in os.environ
    client = MlflowClient(tracking_uri(folder))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return client, experiment.experiment_id
    location = (folder / ARTIFACTS).resolve().as_uri() if local else None
    return client, client.create_experiment(EXPERIMENT, artifact_location=location)


def _logged(client, experiment: str, folder: Path) -> str | None:
    """The id of the run already logged for `folder`, if any."""
    found = client.search_runs([experiment], filter_string=f"tags.`{FOLDER_TAG}` = '{folder.resolve()}'")
    return found[0].info.run_id if found else None


def _numbers(prefix: str, values: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The finite numbers among `values`, nested dicts flattened into `prefix/key/...` names."""
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _numbers(name, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


def round_metrics(record: dict[str, Any], class_names: list[str]) -> dict[str, float]:
    """One round's metrics as MLflow names them: global, per class, personalized mean and per client."""
    metrics = {
        key: float(record[key])
        for key in ("accuracy", "loss", "auc", "minority_accuracy", "personalized_accuracy", "round_seconds")
        if isinstance(record.get(key), (int, float))
    }
    for name, accuracy in zip(class_names, record.get("per_class_accuracy") or []):
        metrics[f"class_accuracy/{name}"] = float(accuracy)
    for client in record.get("clients", []):
        for key in ("personalized-accuracy", "train-loss"):
            if key in client:
                metrics[f"client/{client['client']}/{key.replace('-', '_')}"] = float(client[key])
    return metrics


def _class_names(summary: dict) -> list[str]:
    from regl.fl.experiment import class_names
    from regl.fl.settings import ExperimentSettings

    try:
        return list(class_names(ExperimentSettings.from_config(summary["config"])))
    except (ReglError, OSError):  # a folder dataset gone since: its classes by index
        return [str(i) for i in range(len(summary.get("final_per_class_accuracy") or []))]


def log_run(folder: Path, client, experiment: str, parent: str | None = None) -> str:
    """Log the finished run in `folder` (its summary.json, rounds.json and figures); returns its run id."""
    from mlflow.entities import Metric, Param

    summary = json.loads((folder / "summary.json").read_text())
    rounds = json.loads((folder / "rounds.json").read_text())
    tags = {FOLDER_TAG: str(folder.resolve()), "regl.kind": "run", **({PARENT_TAG: parent} if parent else {})}
    run = client.create_run(experiment, run_name=folder.name, tags=tags)
    run_id = run.info.run_id
    params = [Param(key, str(value)[:6000]) for key, value in summary["config"].items()]
    now = int(time.time() * 1000)
    names = _class_names(summary)
    metrics = [
        Metric(key, value, now, int(record["round"]))
        for record in rounds
        for key, value in round_metrics(record, names).items()
    ]
    final = {k: v for k, v in summary.items() if k not in ("config", "rounds", "bytes_sent_per_client")}
    metrics += [Metric(f"final/{key}", value, now, 0) for key, value in _numbers("", final)]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    for artifact in ("summary.json", "rounds.json", *sorted(p.name for p in folder.glob("*.png"))):
        client.log_artifact(run_id, str(folder / artifact))
    client.set_terminated(run_id)
    return run_id


def track_run(folder: Path) -> str:
    """Log `regl fl`'s run; returns where it went."""
    client, experiment = _client(folder)
    if _logged(client, experiment, folder) is None:
        log_run(folder, client, experiment)
    return tracking_uri(folder)


def track_bench(folder: Path) -> str:
    """Log a bench: one run for it, one nested run per finished arm × seed not logged before."""
    from mlflow.entities import Param

    client, experiment = _client(folder)
    parent = _logged(client, experiment, folder)
    created = parent is None
    if created:
        parent = client.create_run(
            experiment, run_name=f"bench {folder.name}", tags={FOLDER_TAG: str(folder.resolve()), "regl.kind": "bench"}
        ).info.run_id
        if (folder / "command.txt").is_file():
            client.log_batch(parent, params=[Param("command", (folder / "command.txt").read_text().strip()[:6000])])
    cells = sorted(path for path in folder.iterdir() if (path / "summary.json").is_file())
    new = [cell for cell in cells if _logged(client, experiment, cell) is None]
    for cell in new:
        log_run(cell, client, experiment, parent)
    if new or created:  # a bench that ran nothing new leaves the store as it was
        for artifact in sorted(folder.glob("*.png")) + sorted(folder.glob("table.md")):
            client.log_artifact(parent, str(artifact))
        client.set_terminated(parent)
    return tracking_uri(folder)
