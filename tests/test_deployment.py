"""`regl deploy`: SuperLink, two SuperNodes and their `regl serve`s as separate processes on loopback."""

import json
import subprocess
import sys


def test_deployed_run_gets_each_clients_fill_from_its_own_service(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "regl.cli", "deploy", "--dataset", "mnist-10k", "--partition", "classes", "-k", "5",
         "--clients", "2", "--rounds", "1", "--fill", "noise", "--fill-supplement", "0.01",
         "--fill-store", str(tmp_path / "store"), "--out-dir", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    deployment = json.loads((out / "deployment.json").read_text())
    assert (deployment["nodes"], deployment["service_fill"]) == (2, True)
    fill = summary["fill"]["clients"]
    assert [c["client"] for c in fill] == [0, 1]
    for client in fill:
        assert client["synthetic-images"] == client["planned-noise"] > 0 and client["service-seconds"] > 0
    for node in (0, 1):  # each node's service made its own client's fill, once
        log = (out / "logs" / f"service-{node}.log").read_text()
        assert log.count("POST /v1/fill") == 1 and "127.0.0.1" in log
    traffic = json.loads((out / "traffic.json").read_text())
    assert {(m["action"], m["record"]) for m in traffic} == {("fill", "metrics"), ("train", "arrays"),
                                                             ("train", "metrics")}
