"""`regl deploy`: SuperLink, two SuperNodes and their `regl serve`s as separate processes on loopback."""

import json
from pathlib import Path

import pytest

from regl.cli import command_parser, main


def test_node_service_command_line_is_its_settings(monkeypatch):
    """What `regl deploy` starts as a node's `regl serve` parses back to that node's ServiceSettings."""
    from clients.deployment import node_service_settings
    from regl.cli.options import experiment_settings
    from regl.cli.serving import service_argv, service_settings

    monkeypatch.setenv("REGL_TOKEN", "secret")
    run = experiment_settings(
        command_parser("deploy").parse_args(
            ["--dataset", "mnist-10k", "--partition", "dirichlet", "--beta", "0.05", "--clients", "3", "--seed", "4"]
        )
    )
    node = node_service_settings(run, 2, Path("/tmp/service-2"))
    argv = service_argv(node)
    assert argv[0] == "serve" and "secret" not in argv  # the token stays in the environment
    assert service_settings(command_parser("serve").parse_args(argv[1:])) == node
    assert (node.client, node.partition, node.beta, node.partition_seed, node.port) == (2, "dirichlet", 0.05, 4, 8102)


@pytest.mark.e2e
def test_deployed_run_gets_each_clients_fill_from_its_own_service(tmp_path, monkeypatch, capfd):
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
            "noise",
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
    fill = summary["fill"]["clients"]
    assert [c["client"] for c in fill] == [0, 1]
    for client in fill:
        assert client["synthetic-images"] == client["planned-noise"] > 0 and client["service-seconds"] > 0
    for node in (0, 1):  # each node's service made its own client's fill, once
        log = (out / "logs" / f"service-{node}.log").read_text()
        assert log.count("POST /v1/fill") == 1 and "127.0.0.1" in log
    traffic = json.loads((out / "traffic.json").read_text())
    assert {(m["action"], m["record"]) for m in traffic} == {
        ("fill", "metrics"),
        ("train", "arrays"),
        ("train", "metrics"),
    }
