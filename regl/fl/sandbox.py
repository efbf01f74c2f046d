"""Run Flower/Ray commands in a loopback-only network namespace, offline.

Ray probes cloud metadata addresses when it starts, so nothing that starts Ray may run
in the host's network namespace. `isolated()` wraps a command in new network and PID
namespaces: only loopback is reachable, and every process the command leaves behind
(the local SuperLink, Ray's daemons) dies with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from regl.errors import ReglError
from regl.stopping import GRACE_S, children, dies_with_this_process

MARKER = "REGL_SANDBOXED"


def flower_env(state_dir: Path) -> dict[str, str]:
    """Environment that keeps Flower, Ray and the HF hub offline, with project-local state.

    PATH starts with this interpreter's folder, so `regl sandbox flwr run .` finds the `flwr`
    installed beside `regl` in a virtual environment nobody activated.
    """
    env = dict(os.environ)
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
            MARKER: "1",
            "FLWR_HOME": str(state_dir.resolve()),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_USAGE_STATS": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


LOCAL_FEDERATION_TOML = """\
# Written by regl: `flwr run .` uses the local simulation SuperLink with one CPU per
# client. num-supernodes must equal the run config's partition-num-clients.
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = 10
options.backend.client-resources.num-cpus = 1
options.backend.client-resources.num-gpus = 0.0
"""


def ensure_flower_config(state_dir: Path) -> None:
    """Give a new FLWR_HOME a local simulation connection that matches pyproject's run config."""
    config = state_dir / "config.toml"
    if not config.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(LOCAL_FEDERATION_TOML)


def in_sandbox() -> bool:
    return os.environ.get(MARKER) == "1"


def isolated(argv: list[str]) -> list[str]:
    """`argv` wrapped so it runs with loopback only, in its own PID namespace."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise ReglError(f"`{tool}` is required to isolate Flower/Ray from the network but was not found")
    flags = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:
        flags.insert(0, "--map-root-user")
    return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def run_isolated(argv: list[str], state_dir: Path) -> int:
    """Run `argv` isolated with the offline Flower environment; returns its exit code.

    Stopped (SIGTERM, Ctrl-C), it passes SIGTERM on to the command, the namespace's init:
    `unshare` itself ignores both while it waits. What has not ended after GRACE_S is killed,
    and with the init the kernel kills everything else in the namespace. `unshare` dies with
    this process, and the command with `unshare` (--kill-child), however either dies.
    """
    ensure_flower_config(state_dir)
    unshare = subprocess.Popen(isolated(argv), env=flower_env(state_dir), preexec_fn=dies_with_this_process())
    try:
        return unshare.wait()
    except KeyboardInterrupt:
        if stop_namespace(unshare) and unshare.returncode >= 0:
            return unshare.returncode  # the command stopped by itself and has said so
        raise


def stop_namespace(unshare: subprocess.Popen) -> bool:
    """SIGTERM to the namespace's init (unshare's child); whether it ended within GRACE_S, else SIGKILL."""
    init = children(unshare.pid)
    for pid in init:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        unshare.wait(GRACE_S)
        return True
    except subprocess.TimeoutExpired:
        for pid in init:  # unshare has not reaped it yet, so the pid is still the init's
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unshare.kill()
        unshare.wait()
        return False


def rerun_self_isolated(argv: list[str], state_dir: Path) -> int:
    """Run `regl ARGV` again inside the sandbox (argv without the program name, as `main` got it)."""
    return run_isolated([sys.executable, "-m", "regl.cli", *argv], state_dir)
