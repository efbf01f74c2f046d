"""A real 2-client, 2-round Flower simulation through `regl fl` (Ray inside the sandbox)."""

import json
import subprocess
import sys
from pathlib import Path


def test_two_clients_two_rounds(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "regl.cli", "fl", "--dataset", "mnist-10k", "--partition", "iid",
         "--clients", "2", "--rounds", "2", "--out-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
