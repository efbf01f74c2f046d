"""A real 2-client, 2-round Flower simulation through `regl fl` (Ray inside the sandbox), and its progress lines."""

import json
import sys
from pathlib import Path

import pytest

from regl.cli import main
from regl.errors import ReglError
from regl.fl.progress import FillProgress, RoundProgress, duration
from regl.fl.settings import ExperimentSettings


@pytest.mark.e2e
def test_two_clients_two_rounds(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["regl", "--not-these"])  # main's own argv goes to the sandboxed run
    code = main(
        ["fl", "--dataset", "mnist-10k", "--partition", "iid", "--clients", "2", "--rounds", "2", "--out-dir", str(out)]
    )
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        assert [c["client"] for c in record["clients"]] == [0, 1]
        assert sum(c["num-examples"] for c in record["clients"]) == 6000
        assert record["failed_clients"] == 0
        assert record["round_seconds"] >= record["train_phase_seconds"] > 0
    assert rounds[2]["accuracy"] > rounds[0]["accuracy"] + 0.2  # FedAvg on iid data learns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["final_accuracy"] == rounds[2]["accuracy"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / ".flwr").is_dir()  # Flower state stays project-local
    assert not Path(tmp_path / "runs").exists()

    lines = terminal.out.splitlines()  # quiet: a start line, one per round, the summary
    assert lines[0].startswith("mnist-10k-iid-c2-s0: 2 rounds on 2 clients; Flower's and Ray's logs in")
    assert lines[1].startswith("round 0/2: accuracy ") and lines[1].endswith("(the initial model)")
    assert lines[2].startswith("round 1/2: accuracy ") and " elapsed, about " in lines[2]
    assert lines[3].startswith("round 2/2: accuracy ") and lines[3].endswith(" elapsed")
    assert lines[4].startswith("final global accuracy ") and lines[5].startswith("wall time: ")
    store = f"sqlite:///{out / 'mlflow.db'}"
    assert lines[6] == f"tracked in MLflow: {store} (mlflow ui --backend-store-uri {store})"
    assert len(lines) == 7 and terminal.err == ""
    log = (out / "flower.log").read_text()
    assert "[ROUND 2/2]" in log and "Aggregated MetricRecord" in log
    assert "'client'" not in log  # the client id is not averaged over clients

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)  # the run, read back through MLflow
    (run,) = client.search_runs([client.get_experiment_by_name("regl").experiment_id])
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rounds]
    assert run.data.metrics["final/final_accuracy"] == summary["final_accuracy"]
    assert run.data.params["num-rounds"] == "2" and run.data.params["partition-kind"] == "iid"


def test_progress_lines():
    lines = []
    rounds = RoundProgress(3, started=0.0, write=lines.append)
    rounds.round_done(0, 0.1)
    rounds.round_done(1, 0.5, missing_clients=(2, 5))
    assert lines[0] == "round 0/3: accuracy 10.00% (the initial model)"
    assert lines[1].startswith("round 1/3: accuracy 50.00%, ") and lines[1].endswith(
        "left; no update from clients 2, 5 (see rounds.json)"
    )
    fill = FillProgress(2, lines.append)
    fill.client_done(1, 120)
    fill.client_done(0, 80)
    assert lines[2].startswith("fill: client 1 done (1/2), 120 images made, ") and "about" in lines[2]
    assert lines[3].startswith("fill: client 0 done (2/2), 200 images made, ") and lines[3].endswith(" elapsed")
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3720)] == ["0s", "59s", "1m 01s", "59m 59s", "1h 02m"]


def test_a_failed_run_is_one_line_that_names_its_log(tmp_path, monkeypatch):
    import regl.fl.simulation as simulation

    def fail(**_):
        raise RuntimeError("a client failed in the fill phase (fill): boom\n  and more")

    monkeypatch.setattr(simulation, "in_sandbox", lambda: True)
    monkeypatch.setattr(simulation, "run_simulation", fail)
    log = tmp_path / "flower.log"
    with pytest.raises(ReglError) as failed:
        simulation.simulate(ExperimentSettings(out_dir=str(tmp_path)), num_cpus=1)
    assert (
        str(failed.value) == f"the federated run failed: a client failed in the fill phase (fill): boom "
        f"(details in {log})"
    )
    assert "Traceback" in log.read_text() and "and more" in log.read_text()
