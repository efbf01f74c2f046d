"""`regl deploy`: the federation as separate processes on loopback, the way it runs across machines.

A client node is a Flower SuperNode plus its own `regl serve`, which holds that client's
data partition and makes its fill. One SuperLink coordinates them; `flwr run` submits the
app. Every process binds 127.0.0.1 inside the loopback-only sandbox and is stopped when
the run ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from regl.cli.serving import service_argv
from regl.errors import ReglError
from regl.fl.experiment import ExperimentSettings
from service.settings import ServiceSettings

SUPERLINK_PORT = 9090
SUPERNODE_PORT = 9100  # + node index: each SuperNode's runtime API
SERVICE_PORT = 8100  # + node index: each node's `regl serve`
CONNECTION_TOML = """\
# Written by `regl deploy`: the SuperLink it starts on loopback.
[superlink]
default = "deployment"

[superlink.deployment]
address = "127.0.0.1:{port}"
insecure = true
"""


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_config_text(settings: ExperimentSettings) -> str:
    """The run settings as `flwr run --run-config` key=value pairs (keys of [tool.flwr.app.config])."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in settings.to_config().items())


class Processes:
    """Started processes, each logging to its own file; all stopped on exit."""

    def __init__(self, log_dir: Path, bin_dir: Path) -> None:
        self.log_dir, self.running = log_dir, []
        log_dir.mkdir(parents=True, exist_ok=True)
        # the SuperLink and SuperNodes start `flower-superexec` and the apps by name
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "w") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.running.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise ReglError(f"{name} exited with code {process.returncode}; see {self.log_dir / name}.log")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        """SIGTERM to all, one shared 30 s grace period, then SIGKILL to what is left."""
        for _, process in reversed(self.running):
            process.terminate()
        deadline = time.monotonic() + 30
        for _, process in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_service(url: str, processes: Processes, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise ReglError(f"the service at {url} did not come up in {timeout_s:g} s")


def _wait_for_port(port: int, processes: Processes, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check_alive()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ReglError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def node_service_settings(settings: ExperimentSettings, node: int, store: Path) -> ServiceSettings:
    """Node `node`'s `regl serve`: the client's own share of the run's partition, its port and store."""
    return ServiceSettings(
        data=settings.dataset,
        client=node,
        **ServiceSettings.partition_fields(settings.partition),
        base=settings.fill.base_folder(),
        port=SERVICE_PORT + node,
        threads=1,
        store=store,
    )


def deploy(settings: ExperimentSettings, service_fill: bool, state_dir: Path) -> dict:
    """Start SuperLink, per node `regl serve` (when it makes the fill) and SuperNode; run; stop all.

    Returns the run's summary.json content.
    """
    out_dir = Path(settings.out_dir).resolve()
    nodes = settings.partition.num_clients
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "config.toml").write_text(CONNECTION_TOML.format(port=SUPERLINK_PORT))
    bin_dir = Path(sys.executable).parent
    missing = [tool for tool in ("flower-superlink", "flower-supernode", "flwr") if not (bin_dir / tool).exists()]
    if missing:
        raise ReglError(f"{', '.join(missing)} missing beside {sys.executable}; is flwr installed in this environment?")
    started = time.perf_counter()
    with Processes(out_dir / "logs", bin_dir) as processes:
        processes.start(
            "superlink",
            [str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(SUPERLINK_PORT)],
        )
        _wait_for_port(SUPERLINK_PORT, processes)
        services = {}
        if service_fill:
            for node in range(nodes):
                service = node_service_settings(settings, node, out_dir / f"service-{node}")
                processes.start(f"service-{node}", [sys.executable, "-m", "regl.cli", *service_argv(service)])
                services[node] = f"http://127.0.0.1:{SERVICE_PORT + node}"
            for url in services.values():
                _wait_for_service(url, processes)
        for node in range(nodes):
            config = f"partition-id={node} num-partitions={nodes}"
            if node in services:
                config += f" fill-service={json.dumps(services[node])}"
            processes.start(
                f"supernode-{node}",
                [
                    str(bin_dir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{SUPERLINK_PORT}",
                    "--port",
                    str(SUPERNODE_PORT + node),
                    "--node-config",
                    config,
                ],
            )
        time.sleep(2)  # the SuperNodes register with the SuperLink
        processes.check_alive()
        setup_seconds = time.perf_counter() - started
        project = Path(__file__).resolve().parents[1]
        code = subprocess.call(
            [
                str(bin_dir / "flwr"),
                "run",
                str(project),
                "deployment",
                "--stream",
                "--run-config",
                run_config_text(settings),
            ],
            cwd=project,
            env=processes.env,
        )
        if code != 0:
            raise ReglError(f"flwr run exited with code {code}; logs in {out_dir / 'logs'}")
    summary_file = out_dir / "summary.json"
    if not summary_file.exists():
        raise ReglError(f"the deployed run ended without a summary in {out_dir}; logs in {out_dir / 'logs'}")
    summary = json.loads(summary_file.read_text())
    summary["deployment"] = {
        "nodes": nodes,
        "service_fill": service_fill,
        "setup_seconds": setup_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    (out_dir / "deployment.json").write_text(json.dumps(summary["deployment"], indent=2))
    return summary
