"""`regl deploy`: the federation as separate processes on loopback, the way it runs across machines.

A client node is a Flower SuperNode plus its own `regl serve`, which holds that client's
data (its share of the run's dataset, or with --data-dirs a folder of its own), makes its
fill and trains its rounds warm. One SuperLink coordinates them; `flwr run` submits the
app. Every process binds 127.0.0.1 inside the loopback-only sandbox and is stopped when
the run ends.

Locks (regl/fl/tls.py): the SuperLink serves TLS only, and admits only SuperNodes whose
public key was registered with it (`flwr supernode register`, before they start); a node
with another key is refused, named on stderr and in deployment.json, and left dead.

Faults: a node whose service does not come up joins without it (its ClientApp then says
why it cannot work, each round, in rounds.json). A SuperNode or a node's service that dies
later is started again, as an operator's supervisor would: the SuperNode rejoins once the
SuperLink lets its key in again (`_supervise`); the service comes back with the same
settings and store folder, so a fill it was making resumes from its store and cached LoRA
(its ClientApp waits for it and asks again: regl/fill/remote.py), and its node trains
again from the round after it is back.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from regl.atomic import write_json_atomically
from regl.data.node_data import run_class_names
from regl.errors import ReglError
from regl.fill.remote import service_answers
from regl.fl.experiment import ExperimentSettings
from regl.fl.tls import Credentials, given_credentials, key_fingerprint, node_key_pair, trial_credentials
from regl.service.settings import ServiceSettings
from regl.stopping import end
from regl.waiting import wait_until

SUPERLINK_PORT = 9090
SUPERNODE_PORT = 9100  # + node index: each SuperNode's runtime API
SERVICE_PORT = 8100  # + node index: each node's `regl serve`
MAX_RESTARTS = 3  # per SuperNode and per service: one that keeps dying is left dead
REFUSAL_SECONDS = 60  # how long a SuperNode with an unregistered key may take to be refused
REJOIN_SECONDS = 10.0  # a restarted SuperNode refused for its dead session is started again this often
REJOIN_LIMIT_SECONDS = 180.0  # ... for this long (the session lapses after about 60 s)
REFUSED = "Failed to activate SuperNode"  # what a refused SuperNode logs before it exits (Flower 1.41)
POLL_SECONDS = 0.5
SUPEREXEC_POLL_SECONDS = "0.1"
CONNECTION_TOML = """\
# Written by `regl deploy`: the SuperLink it starts on loopback, over TLS.
[superlink]
default = "deployment"

[superlink.deployment]
address = "127.0.0.1:{port}"
root-certificates = {ca}
"""


@dataclass(frozen=True)
class Locks:
    """TLS for every connection to the SuperLink, and each SuperNode's key pair (regl/fl/tls.py)."""

    credentials: Credentials
    node_keys: tuple[tuple[Path, Path], ...]  # node i's (private, public): registered before it starts
    unknown_keys: tuple[tuple[Path, Path], ...] = ()  # SuperNodes started with keys never registered: a trial


def make_locks(
    folder: Path, nodes: int, ssl_files: tuple[str, str, str] | None, key_dir: str, unknown_nodes: int
) -> Locks:
    """The operator's TLS files (`ssl_files`: CA, certificate, key) or a trial CA's made in `folder`; node i's
    keys from `key_dir` (supernode-<i>.key and .pub) or made in `folder`."""
    credentials = given_credentials(*ssl_files) if ssl_files else trial_credentials(folder)
    if key_dir:
        keys = tuple((Path(key_dir) / f"supernode-{i}.key", Path(key_dir) / f"supernode-{i}.pub") for i in range(nodes))
        for pair in keys:
            for path in pair:
                if not path.is_file():
                    raise ReglError(f"--node-keys {key_dir}: no {path.name} (one key pair per node, supernode-<i>)")
        keys = tuple((private.resolve(), public.resolve()) for private, public in keys)
    else:
        keys = tuple(node_key_pair(folder, f"supernode-{i}") for i in range(nodes))
    unknown = tuple(node_key_pair(folder, f"unknown-{i}") for i in range(nodes, nodes + unknown_nodes))
    return Locks(credentials, keys, unknown)


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
        self.log_dir, self.running, self.argv, self.extra_env, self.log_start = log_dir, {}, {}, {}, {}
        log_dir.mkdir(parents=True, exist_ok=True)
        # the SuperLink and SuperNodes start `flower-superexec` and the apps by name; that looks for
        # new tasks every second unless told otherwise, a wait every message of every round pays
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_SECONDS,
        }

    def start(self, name: str, argv: list[str], mode: str = "w", env: dict[str, str] | None = None) -> subprocess.Popen:
        """`env`: this process's own variables on top of the shared ones."""
        log_file = self.log_dir / f"{name}.log"
        self.log_start[name] = log_file.stat().st_size if mode == "a" and log_file.exists() else 0
        with open(log_file, mode) as log:  # the child keeps its own descriptor
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        self.running[name], self.argv[name], self.extra_env[name] = process, argv, env
        return process

    def restart(self, name: str) -> subprocess.Popen:
        """The same command again, its log appended to."""
        return self.start(name, self.argv[name], mode="a", env=self.extra_env[name])

    def output(self, name: str) -> str:
        """What the process has logged since it was last started."""
        with open(self.log_dir / f"{name}.log", "rb") as log:
            log.seek(self.log_start[name])
            return log.read().decode(errors="replace")

    def exited(self, name: str) -> int | None:
        return self.running[name].poll()

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise ReglError(f"{name} exited with code {process.returncode}; see {self.log_dir / name}.log")

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        """SIGTERM to all, last started first; SIGKILL to what is left after one shared grace period."""
        end(reversed(self.running.values()))


def _service_up(name: str, url: str, processes: Processes, timeout_s: float = 300) -> bool:
    """Whether the node's service answers /healthz; False as soon as its process has exited."""

    def answers() -> bool | None:
        if processes.exited(name) is not None:
            return False
        return True if service_answers(url) else None

    return wait_until(answers, timeout_s, 0.5, f"the service at {url} to come up")


def _wait_for_port(port: int, processes: Processes, timeout_s: float = 60) -> None:
    def listening() -> bool | None:
        processes.check_alive()  # raises when one has exited
        with socket.socket() as probe:
            return True if probe.connect_ex(("127.0.0.1", port)) == 0 else None

    wait_until(listening, timeout_s, 0.2, f"something to listen on 127.0.0.1:{port}")


def node_service_settings(settings: ExperimentSettings, node: int, store: Path, data_dir: str = "") -> ServiceSettings:
    """Node `node`'s `regl serve`: its own data folder, or the client's share of the run's partition."""
    if data_dir:
        data = {
            "data": data_dir,
            "classes": ",".join(run_class_names(settings.dataset, settings.classes)),
            "dataset": settings.dataset,
        }
    else:
        data = {"data": settings.dataset, "client": node, **ServiceSettings.partition_fields(settings.partition)}
    return ServiceSettings(**data, base=settings.fill.base_folder(), port=SERVICE_PORT + node, threads=1, store=store)


def _node_config(node: int, nodes: int, service: str | None, service_fill: bool, data_dir: str) -> str:
    """The SuperNode's --node-config: who it is, its data, and what its `regl serve` does for it."""
    config = f"partition-id={node} num-partitions={nodes}"
    if data_dir:
        config += f" data-dir={json.dumps(str(Path(data_dir).resolve()))}"
    if service and service_fill:
        config += f" fill-service={json.dumps(service)}"
    if service:
        config += f" train-service={json.dumps(service)}"
    return config


def _supervise(flwr_run: subprocess.Popen, processes: Processes, names: list[str]) -> dict[str, int]:
    """Wait for `flwr run`; start each of `names` (SuperNodes, services) that dies again, at most MAX_RESTARTS
    times each, with its own command and environment. Returns the restarts by name, those restarted only.

    A restarted SuperNode is refused while the SuperLink still holds its dead session online (until the
    heartbeat lapses: Flower's 30 s interval × 2) and its key with it; it is started again every
    REJOIN_SECONDS until let in, for at most REJOIN_LIMIT_SECONDS, without counting against MAX_RESTARTS.
    """
    restarts = dict.fromkeys(names, 0)
    refused_since: dict[str, float] = {}
    next_look: dict[str, float] = {}

    def start_the_dead() -> int | None:
        if (code := flwr_run.poll()) is not None:
            return code
        now = time.monotonic()
        for name in names:
            code = processes.exited(name)
            if code is None or now < next_look.get(name, 0.0):
                continue
            if restarts[name] and REFUSED in processes.output(name):
                if name not in refused_since:
                    refused_since[name] = now
                    print(
                        f"{name} was refused: the SuperLink holds its dead session until its heartbeat lapses; "
                        f"starting it every {REJOIN_SECONDS:.0f}s until it is let in",
                        file=sys.stderr,
                        flush=True,
                    )
                if now - refused_since[name] > REJOIN_LIMIT_SECONDS:
                    continue  # left dead: rounds.json names it missing
                next_look[name] = now + REJOIN_SECONDS
                processes.restart(name)
            elif restarts[name] < MAX_RESTARTS:
                restarts[name] += 1
                refused_since.pop(name, None)
                print(
                    f"{name} exited with code {code}; starting it again ({restarts[name]} of {MAX_RESTARTS})",
                    file=sys.stderr,
                    flush=True,
                )
                processes.restart(name)
        return None

    wait_until(start_the_dead, math.inf, POLL_SECONDS, "flwr run to finish")
    return {name: count for name, count in restarts.items() if count}


def _register(bin_dir: Path, processes: Processes, public: Path, name: str) -> int:
    """Register a SuperNode's public key with the SuperLink (Flower's CLI, over TLS); returns its node id."""
    result = subprocess.run(
        [str(bin_dir / "flwr"), "supernode", "register", str(public), "deployment", "--name", name, "--format", "json"],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        reply = json.loads(result.stdout[result.stdout.index("{") :])
        if result.returncode == 0 and reply.get("success"):
            return int(reply["node-id"])
    except ValueError:
        pass
    raise ReglError(f"flwr supernode register {name} failed: {(result.stdout + result.stderr).strip()[-500:]}")


def _refused(processes: Processes, name: str) -> bool:
    """Whether the SuperNode `name` exited because the SuperLink refused its key, waiting up to REFUSAL_SECONDS."""
    deadline = time.monotonic() + REFUSAL_SECONDS
    while processes.exited(name) is None and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return processes.exited(name) is not None and REFUSED in processes.output(name)


def _per_node(restarts: dict[str, int], kind: str) -> dict[int, int]:
    """{"service-1": 2} → {1: 2} for kind "service"."""
    return {int(name.rpartition("-")[2]): count for name, count in restarts.items() if name.startswith(f"{kind}-")}


def deploy(
    settings: ExperimentSettings,
    service_fill: bool,
    state_dir: Path,
    locks: Locks,
    data_dirs: tuple[str, ...] = (),
    service_train: bool = True,
) -> dict:
    """Start SuperLink, per node `regl serve` (when it fills or trains) and SuperNode; run; stop all.

    `data_dirs`: one folder (or npz) per node, its own data. Returns the run's summary.json content.
    """
    out_dir = Path(settings.out_dir).resolve()
    nodes = settings.partition.num_clients
    if data_dirs and len(data_dirs) != nodes:
        raise ReglError(f"{len(data_dirs)} data folders for {nodes} nodes")
    if len(locks.node_keys) != nodes:
        raise ReglError(f"{len(locks.node_keys)} node key pairs for {nodes} nodes")
    tls = locks.credentials
    state_dir.mkdir(parents=True, exist_ok=True)
    ca = json.dumps(str(tls.ca.resolve()))
    (state_dir / "config.toml").write_text(CONNECTION_TOML.format(port=SUPERLINK_PORT, ca=ca))
    bin_dir = Path(sys.executable).parent
    missing = [tool for tool in ("flower-superlink", "flower-supernode", "flwr") if not (bin_dir / tool).exists()]
    if missing:
        raise ReglError(f"{', '.join(missing)} missing beside {sys.executable}; is flwr installed in this environment?")
    started = time.perf_counter()
    with Processes(out_dir / "logs", bin_dir) as processes:
        link = ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.certificate), "--ssl-keyfile", str(tls.key)]
        processes.start(
            "superlink",
            [
                str(bin_dir / "flower-superlink"),
                *link,
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(SUPERLINK_PORT),
            ],
        )
        _wait_for_port(SUPERLINK_PORT, processes)
        registered = {
            node: _register(bin_dir, processes, locks.node_keys[node][1], f"supernode-{node}") for node in range(nodes)
        }
        services: dict[int, str] = {}
        if service_fill or service_train:
            for node in range(nodes):
                data_dir = data_dirs[node] if data_dirs else ""
                service = node_service_settings(settings, node, out_dir / f"service-{node}", data_dir)
                processes.start(
                    f"service-{node}", [sys.executable, "-m", "regl.cli", "serve"], env=service.environment()
                )
                services[node] = f"http://127.0.0.1:{SERVICE_PORT + node}"
            for node, url in list(services.items()):
                if not _service_up(f"service-{node}", url, processes):
                    del services[node]
                    print(
                        f"node {node}: its regl serve exited (see {out_dir / 'logs'}/service-{node}.log); "
                        "the node joins without it",
                        file=sys.stderr,
                        flush=True,
                    )
        unknown = {nodes + i: pair for i, pair in enumerate(locks.unknown_keys)}
        for node, (private, _) in [*enumerate(locks.node_keys), *unknown.items()]:
            config = _node_config(
                node, nodes, services.get(node), service_fill, data_dirs[node] if node < len(data_dirs) else ""
            )
            processes.start(
                f"supernode-{node}",
                [
                    str(bin_dir / "flower-supernode"),
                    "--root-certificates",
                    str(tls.ca),
                    "--auth-supernode-private-key",
                    str(private),
                    "--superlink",
                    f"127.0.0.1:{SUPERLINK_PORT}",
                    "--port",
                    str(SUPERNODE_PORT + node),
                    "--node-config",
                    config,
                ],
            )
        time.sleep(2)  # the SuperNodes activate their registrations with the SuperLink
        for node in range(nodes):
            if processes.exited(f"supernode-{node}") is not None:
                raise ReglError(f"supernode-{node} exited at start; see {out_dir / 'logs'}/supernode-{node}.log")
        refused = []
        for node, (_, public) in unknown.items():
            if not _refused(processes, f"supernode-{node}"):
                raise ReglError(
                    f"supernode-{node}, whose key was never registered, was not refused by the SuperLink within "
                    f"{REFUSAL_SECONDS}s; see {out_dir / 'logs'}/supernode-{node}.log"
                )
            refused.append(node)
            print(
                f"supernode-{node} refused by the SuperLink: its key ({key_fingerprint(public)}) is not registered",
                file=sys.stderr,
                flush=True,
            )
        setup_seconds = time.perf_counter() - started
        project = Path(__file__).resolve().parents[2]  # the checkout, whose pyproject.toml is the app
        flwr_run = subprocess.Popen(
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
        try:
            supervised = [f"supernode-{node}" for node in range(nodes)] + [f"service-{node}" for node in services]
            restarts = _supervise(flwr_run, processes, supervised)
        finally:
            end([flwr_run])  # stopped (SIGTERM, Ctrl-C): `flwr run` first, then the processes above
        if flwr_run.returncode != 0:
            raise ReglError(f"flwr run exited with code {flwr_run.returncode}; logs in {out_dir / 'logs'}")
    summary_file = out_dir / "summary.json"
    if not summary_file.exists():
        raise ReglError(f"the deployed run ended without a summary in {out_dir}; logs in {out_dir / 'logs'}")
    summary = json.loads(summary_file.read_text())
    summary["deployment"] = {
        "nodes": nodes,
        "service_fill": service_fill and bool(services),
        "service_train": service_train and bool(services),
        "nodes_without_service": sorted(set(range(nodes)) - set(services)) if service_fill or service_train else [],
        "data_dirs": [str(Path(d).resolve()) for d in data_dirs],
        "tls": "trial CA" if tls.trial else str(tls.ca),
        "registered_nodes": {str(node): node_id for node, node_id in registered.items()},
        "refused_nodes": refused,
        "supernode_restarts": _per_node(restarts, "supernode"),
        "service_restarts": _per_node(restarts, "service"),
        "setup_seconds": setup_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    write_json_atomically(out_dir / "deployment.json", summary["deployment"])
    return summary
