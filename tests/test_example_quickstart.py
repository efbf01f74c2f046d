"""examples/flower-quickstart: Flower's quickstart layout with ReGL's fill in its task.py, run by `flwr run`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower-quickstart"


@pytest.mark.e2e
def test_the_quickstart_clients_train_on_every_class(tmp_path):
    app = shutil.copytree(EXAMPLE, tmp_path / "app")
    result = tmp_path / "result.json"
    config = f"num-server-rounds=2 fraction-train=0.2 result-file='{result}'"
    done = subprocess.run(
        [sys.executable, "-m", "regl.cli", "sandbox", "flwr", "run", ".", "--stream", "--run-config", config],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = json.loads(result.read_text())
    # each client holds 2 of the 10 digits: FedAvg's mean over a round's clients is 10 only if all trained on all 10
    assert [rounds["train"][r]["classes-trained-on"] for r in ("1", "2")] == [10.0, 10.0]
    assert set(rounds["evaluate"]) == {"0", "1", "2"}
    assert len(list((app / ".regl-cache" / "fill").glob("client-*"))) >= 2  # the fills were made by the clients
