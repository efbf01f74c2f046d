"""`regl deploy`: SuperLink, SuperNodes and their `regl serve`s as separate processes on loopback; faults."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regl.cli import command_parser, main


def test_node_service_environment_is_its_settings(monkeypatch):
    """The REGL_* variables `regl deploy` starts a node's `regl serve` with read back as that node's ServiceSettings."""
    from regl.cli.options import experiment_settings
    from regl.cli.serving import service_settings
    from regl.fl.deployment import node_service_settings

    monkeypatch.setenv("REGL_TOKEN", "secret")
    run = experiment_settings(
        command_parser("deploy").parse_args(
            ["--dataset", "mnist-10k", "--partition", "dirichlet", "--beta", "0.05", "--clients", "3", "--seed", "4"]
        )
    )
    node = node_service_settings(run, 2, Path("/tmp/service-2"))
    environment = node.environment()
    assert "REGL_TOKEN" not in environment  # the token is inherited, never written anew
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert service_settings(command_parser("serve").parse_args([])) == node
    assert (node.client, node.partition, node.beta, node.partition_seed, node.port) == (2, "dirichlet", 0.05, 4, 8102)


@pytest.mark.e2e
def test_deployed_run_gets_each_clients_fill_from_its_own_service(tmp_path, monkeypatch, capfd):
    """With the federated generator: each node's service trains its adapter round and draws its fill with the
    federation's adapter."""
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "deploy",
            "--dataset",
            "mnist-10k",
            "--partition",
            "classes",
            "-k",
            "5",
            "--clients",
            "2",
            "--rounds",
            "1",
            "--fill",
            "diffusion+noise",
            "--fill-lora",
            "federated",
            "--fill-adapter-rounds",
            "1",
            "--fill-adapter-steps",
            "2",
            "--fill-steps",
            "2",
            "--fill-supplement",
            "0.01",
            "--fill-store",
            str(tmp_path / "store"),
            "--out-dir",
            str(out),
        ]
    )
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    deployment = json.loads((out / "deployment.json").read_text())
    assert (deployment["nodes"], deployment["service_fill"]) == (2, True)
    [generator_round] = summary["generator"]["rounds"]
    assert generator_round["clients"] == [0, 1] and not generator_round["failures"]
    fill = summary["fill"]["clients"]
    assert [c["client"] for c in fill] == [0, 1]
    for client in fill:
        assert client["planned-diffusion"] > 0 and client["planned-noise"] > 0 and client["service-seconds"] > 0
        assert client["synthetic-images"] == client["planned-diffusion"] + client["planned-noise"]
    for node in (0, 1):  # each node's service trained its client's round and made its fill, once each
        log = (out / "logs" / f"service-{node}.log").read_text()
        assert log.count("POST /v1/adapter-round") == 1 and log.count("POST /v1/fill") == 1 and "127.0.0.1" in log
    traffic = json.loads((out / "traffic.json").read_text())
    assert {(m["action"], m["record"]) for m in traffic} == {
        ("adapter_round", "adapter"),
        ("adapter_round", "metrics"),
        ("adapter_round", "data"),
        ("fill", "metrics"),
        ("train", "arrays"),
        ("train", "metrics"),
    }


@pytest.mark.e2e
def test_a_supernode_with_an_unregistered_key_is_refused_and_the_others_train_over_tls(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    argv = ["deploy", "--dataset", "mnist-10k", "-k", "5", "--clients", "2", "--rounds", "2", "--in-process-train"]
    code = main([*argv, "--unknown-nodes", "1", "--out-dir", str(out)])
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    deployment = json.loads((out / "deployment.json").read_text())
    assert deployment["refused_nodes"] == [2] and set(deployment["registered_nodes"]) == {"0", "1"}
    assert deployment["tls"] == "trial CA" and deployment["supernode_restarts"] == {}
    rounds = [r for r in json.loads((out / "rounds.json").read_text()) if r["round"] > 0]
    assert [sorted(c["client"] for c in r["clients"]) for r in rounds] == [[0, 1], [0, 1]]
    assert "supernode-2 refused by the SuperLink: its key (SHA256:" in terminal.err
    link = (out / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in link  # the SuperLink's own word on it
    assert "--insecure" not in link and "Failed to activate SuperNode" in (out / "logs" / "supernode-2.log").read_text()


def _digit_folders(root: Path, holdings: dict[str, range], per_class: int) -> list[Path]:
    """PNG folders of real mnist-10k digits: one per node, a subfolder per digit it holds."""
    from regl.data.datasets import load_split

    private = load_split("mnist-10k").private
    folders = []
    for name, digits in holdings.items():
        for digit in digits:
            (root / name / str(digit)).mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(private.y == digit)[:per_class]):
                Image.fromarray(private.x[index, :, :, 0]).save(root / name / str(digit) / f"{i}.png")
        folders.append(root / name)
    return folders


@pytest.mark.e2e
def test_nodes_on_their_own_png_folders_fill_and_train_through_their_services(tmp_path, monkeypatch, capfd):
    """Three nodes, each its own folder of PNGs, and a fourth whose folder names a class the run lacks."""
    nodes = _digit_folders(tmp_path / "data", {"a": range(0, 4), "b": range(3, 7), "c": range(6, 10)}, 30)
    test_folder = _digit_folders(tmp_path / "data", {"server-test": range(10)}, 10)[0]
    bad = tmp_path / "data" / "d"
    (bad / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(bad / "cat" / "0.png")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    argv = ["deploy", "--dataset", "mnist-10k", "--data-dirs", ",".join(map(str, [*nodes, bad]))]
    argv += ["--test-data", str(test_folder), "--rounds", "2", "--local-epochs", "5", "--batch-size", "16"]
    argv += ["--lr", "0.05", "--fill", "noise", "--fill-supplement", "0.5"]
    code = main([*argv, "--fill-store", str(tmp_path / "store"), "--out-dir", str(out)])
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    deployment = json.loads((out / "deployment.json").read_text())
    assert deployment["nodes"] == 4 and deployment["nodes_without_service"] == [3]
    assert deployment["data_dirs"] == [str(f) for f in (*nodes, bad)]
    summary = json.loads((out / "summary.json").read_text())
    fill = summary["fill"]
    assert [c["client"] for c in fill["clients"]] == [0, 1, 2]
    for client in fill["clients"]:  # 4 classes × 30 images, 6 of each held out: 96 trained on, 48 noise
        assert client["real-images"] == 96 and client["synthetic-images"] == client["planned-noise"] == 48
    assert [f["step"] for f in fill["failures"]] == ["fill"] and "cat" in fill["failures"][0]["reason"]
    rounds = [r for r in json.loads((out / "rounds.json").read_text()) if r["round"] > 0]
    assert len(rounds) == 2
    for record in rounds:
        assert record["missing_clients"] == [3] and "does not know: cat" in record["errors"][0]["reason"]
        assert sorted(c["client"] for c in record["clients"]) == [0, 1, 2]
        assert all(c["num-examples"] == 96 for c in record["clients"])
    assert summary["final_accuracy"] > 0.2  # 10 classes, tested on the server's own folder
    for node in range(3):  # each node's service filled once and trained both rounds
        log = (out / "logs" / f"service-{node}.log").read_text()
        assert log.count("POST /v1/fill") == 1 and log.count("POST /v1/train") == 2
    assert "node 3: its regl serve exited" in terminal.err


def _pid_of(*words: str) -> int:
    """The process whose command line holds all `words` (the SuperNode to kill)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(word in cmdline for word in words):
                return int(proc.name)
    raise AssertionError(f"no process with {words}")


@pytest.mark.e2e
def test_a_supernode_killed_in_round_2_is_reported_missing_and_rejoins(tmp_path, monkeypatch, capfd):
    import os
    import signal
    import threading
    import time

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    killed = {}

    def kill_node_1_in_round_2() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                rounds = json.loads((out / "rounds.json").read_text())
            except (OSError, ValueError):
                rounds = []
            if any(r["round"] == 1 for r in rounds):  # round 1 evaluated: round 2 has begun
                os.kill(_pid_of("--port", "9101"), signal.SIGKILL)
                killed["after_round"] = max(r["round"] for r in rounds)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_node_1_in_round_2, daemon=True)
    killer.start()
    # enough rounds for the restarted node to be let in again: the SuperLink holds its dead session about a minute
    argv = ["deploy", "--dataset", "mnist-10k", "-k", "5", "--clients", "3", "--rounds", "16", "--local-epochs", "2"]
    code = main([*argv, "--out-dir", str(out)])
    killer.join(timeout=5)
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    assert killed == {"after_round": 1}
    rounds = [r for r in json.loads((out / "rounds.json").read_text()) if r["round"] > 0]
    assert [r["round"] for r in rounds] == list(range(1, 17))  # the run finished its rounds
    assert rounds[0]["missing_clients"] == [] and rounds[1]["missing_clients"] == [1]
    assert sorted(c["client"] for c in rounds[1]["clients"]) == [0, 2]
    assert rounds[-1]["missing_clients"] == []  # restarted, node 1 is back
    assert json.loads((out / "deployment.json").read_text())["supernode_restarts"] == {"1": 1}
    assert "supernode-1 exited with code -9; starting it again" in terminal.err
    assert "supernode-1 was refused: the SuperLink holds its dead session" in terminal.err
    assert "no update from client 1" in terminal.out


def _service_pid(node: int, store: Path) -> int:
    """Node `node`'s `regl serve`: its environment names its port and its store folder under this test's run."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and {f"REGL_PORT={8100 + node}".encode(), f"REGL_STORE={store}".encode()} <= set(
                environ
            ):
                return int(proc.name)
    raise AssertionError(f"no regl serve of node {node} with store {store}")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_service_killed_in_the_fill_and_in_round_2_is_started_again(tmp_path, monkeypatch, capfd):
    """Node 1's `regl serve` SIGKILLed twice: while it makes the node's fill, and as round 2 begins."""
    import os
    import signal
    import threading
    import time

    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    kills = []

    def kill_node_1s_service_twice() -> None:
        log, deadline = out / "logs" / "service-1.log", time.monotonic() + 600
        while time.monotonic() < deadline and not kills:  # 1: the service took the node's fill request
            if log.exists() and "POST /v1/fill" in log.read_text():
                os.kill(_service_pid(1, out.resolve() / "service-1"), signal.SIGKILL)
                kills.append("fill")
            time.sleep(0.02)
        while time.monotonic() < deadline and len(kills) < 2:  # 2: round 1 evaluated, round 2 begun
            try:
                rounds = json.loads((out / "rounds.json").read_text())
            except (OSError, ValueError):
                rounds = []
            if any(r["round"] == 1 for r in rounds):
                os.kill(_service_pid(1, out.resolve() / "service-1"), signal.SIGKILL)
                kills.append(max(r["round"] for r in rounds))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_node_1s_service_twice, daemon=True)
    killer.start()
    argv = ["deploy", "--dataset", "mnist-10k", "-k", "5", "--clients", "3", "--rounds", "5"]
    argv += ["--fill", "noise", "--fill-supplement", "0.5", "--fill-store", str(tmp_path / "store")]
    code = main([*argv, "--out-dir", str(out)])
    killer.join(timeout=5)
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    assert kills == ["fill", 1]
    deployment = json.loads((out / "deployment.json").read_text())
    assert deployment["service_restarts"] == {"1": 2} and deployment["supernode_restarts"] == {}
    for count in (1, 2):
        assert f"service-1 exited with code -9; starting it again ({count} of 3)" in terminal.err
    # the fill: node 1's ClientApp waited for its service to come back and asked again
    fill = json.loads((out / "summary.json").read_text())["fill"]
    assert fill["failures"] == [] and [c["client"] for c in fill["clients"]] == [0, 1, 2]
    retried = {c["client"]: c.get("service-retries", 0) for c in fill["clients"]}
    assert retried == {0: 0, 1: 1, 2: 0}
    assert all(c["synthetic-images"] == c["planned-noise"] > 0 for c in fill["clients"])
    assert (out / "logs" / "service-1.log").read_text().count("POST /v1/fill") == 2
    # the rounds: node 1 trained in round 1, missed round 2 (and the next while its service loaded), came back
    rounds = [r for r in json.loads((out / "rounds.json").read_text()) if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert rounds[0]["missing_clients"] == [] and rounds[1]["missing_clients"] == [1]
    missed = [r["round"] for r in rounds if r["missing_clients"]]
    for record in rounds:
        assert record["missing_clients"] in ([], [1])
        trained = sorted(c["client"] for c in record["clients"])
        assert trained == ([0, 2] if record["missing_clients"] else [0, 1, 2])
        if record["missing_clients"]:  # named, with the reason
            (error,) = record["errors"]
            assert (
                error["client"] == 1 and "cannot reach the training service at http://127.0.0.1:8101" in error["reason"]
            ), error
    assert missed == list(range(2, 2 + len(missed))) and rounds[-1]["missing_clients"] == [], missed
    assert "no update from client 1" in terminal.out
