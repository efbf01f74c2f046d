"""MLflow tracking of runs and benches, read back through MLflow's client and compared with the run's files."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from regl.fl.settings import ExperimentSettings
from regl.fl.tracking import track_bench, track_run


def finished_run(folder, seed: int = 0, rounds: int = 3):
    """A run folder as `regl fl` leaves it: summary.json, rounds.json, accuracy.png."""
    folder.mkdir(parents=True)
    config = ExperimentSettings(seed=seed, num_rounds=rounds).to_config()
    records = [
        {
            "round": r,
            "accuracy": 0.1 + 0.2 * r + seed / 100,
            "loss": 2.0 - r / 2,
            "per_class_accuracy": [r / 10] * 10,
            "clients": [{"client": c, "personalized-accuracy": 0.5 + c / 10, "train-loss": 1.0} for c in (0, 1)]
            if r
            else [],
        }
        for r in range(rounds + 1)
    ]
    summary = {
        "config": config,
        "rounds": rounds,
        "final_accuracy": records[-1]["accuracy"],
        "fill": {"synthetic-images": 120, "seconds": {"lora": 3.5}},
        "time_split": {"rounds_wall_seconds": 12.0},
    }
    (folder / "rounds.json").write_text(json.dumps(records))
    (folder / "summary.json").write_text(json.dumps(summary))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "accuracy.png")
    return summary, records


def runs_of(uri: str):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name("regl").experiment_id])


def test_a_run_is_logged_once_with_its_rounds_fill_and_figures(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary, records = finished_run(tmp_path / "run")
    uri = track_run(tmp_path / "run")
    assert uri == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert track_run(tmp_path / "run") == uri  # a second call finds it logged
    client, (run,) = runs_of(uri)
    run_id = run.info.run_id
    assert run.data.params["seed"] == "0" and run.data.params["num-rounds"] == "3"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "accuracy")] == [
        (r["round"], r["accuracy"]) for r in records
    ]
    assert [m.value for m in client.get_metric_history(run_id, "client/1/personalized_accuracy")] == [0.6] * 3
    assert client.get_metric_history(run_id, "class_accuracy/3")[-1].value == 0.3  # mnist-10k's class "3"
    assert run.data.metrics["final/final_accuracy"] == summary["final_accuracy"]
    assert run.data.metrics["final/fill/synthetic-images"] == 120 and run.data.metrics["final/fill/seconds/lora"] == 3.5
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"summary.json", "rounds.json", "accuracy.png"}
    assert (tmp_path / "run" / "mlartifacts").is_dir()


def test_a_bench_nests_a_run_per_cell_and_a_resumed_one_adds_only_new_cells(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench = tmp_path / "bench"
    finished_run(bench / "none-s0")
    (bench / "command.txt").write_text("regl bench --arms none,diffusion\n")
    uri = track_bench(bench)
    finished_run(bench / "none-s1", seed=1)
    track_bench(bench)
    client, runs = runs_of(uri)
    (parent,) = [run for run in runs if run.data.tags["regl.kind"] == "bench"]
    cells = sorted((run.info.run_name, run.data.tags["mlflow.parentRunId"]) for run in runs if run is not parent)
    assert cells == [("none-s0", parent.info.run_id), ("none-s1", parent.info.run_id)]
    assert parent.data.params["command"] == "regl bench --arms none,diffusion"


def test_a_tracking_server_named_in_the_environment_gets_the_runs(tmp_path, monkeypatch):
    elsewhere = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.chdir(tmp_path)  # where such a store keeps its artifacts: MLflow's ./mlruns
    finished_run(tmp_path / "run")
    assert track_run(tmp_path / "run") == elsewhere
    assert not (tmp_path / "run" / "mlflow.db").exists()
    assert len(runs_of(elsewhere)[1]) == 1


@pytest.mark.parametrize("command", ["fl", "bench"])
def test_no_tracking_is_a_flag_of_fl_and_bench(command):
    from regl.cli import build_parser

    assert build_parser(command).parse_args([command, "--no-tracking"]).tracking is False
    assert build_parser(command).parse_args([command]).tracking is True
