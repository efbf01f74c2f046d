"""Long commands stop on SIGTERM (timeout, scancel, systemd, docker stop) as on Ctrl-C, and leave nothing behind.

Each test starts `regl` as its own process with a unique tag in its environment, which every
process it starts inherits (Ray, the SuperLink, SuperNodes, `regl serve`, bench's child runs);
after the stop, no process may still carry the tag.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch

from regl.service.threaded_server import free_port
from regl.stopping import STOPPING, Stopped, end, stop_on_signals, stop_reason

STOP_WITHIN_S = 15  # the sandbox's grace (regl.stopping.GRACE_S) and a margin for this slow machine


def tagged(tag: str) -> list[tuple[int, str]]:
    """The processes started with REGL_TEST_TAG=`tag`: pid and command line."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if f"REGL_TEST_TAG={tag}".encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                    found.append((int(entry), command.decode(errors="replace")[:120]))
            except OSError:
                continue  # exited meanwhile, or a zombie
    return found


def assert_nothing_left(tag: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running after the stop: {left}"


class Regl:
    """`python -m regl.cli ARGV` in its own session, its output read line by line as it comes."""

    def __init__(self, argv: list[str], cwd: Path, tag: str) -> None:
        env = {**os.environ, "REGL_TEST_TAG": tag, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "regl.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a signal to its process group reaches nothing of pytest's
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> None:
        """Until a line matches `pattern`; fails if the process ends or the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while not any(re.search(pattern, line) for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout_s} s:\n{self.output}")
            if line is None:
                pytest.fail(f"exited ({self.process.wait()}) before a line matching {pattern!r}:\n{self.output}")
            self.lines.append(line)

    def stop(self, signum: int = signal.SIGTERM, group: bool = False) -> tuple[int, float]:
        """Send `signum` (with `group`, to the process group, as Ctrl-C does); its exit code and seconds taken."""
        sent = time.monotonic()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=STOP_WITHIN_S + 30)  # what is over STOP_WITHIN_S fails below
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent
        assert code is not None, f"still running {took:.0f} s after {signal.Signals(signum).name}:\n{self.output}"
        self._drain()
        return code, took

    def _drain(self, timeout_s: float = 5) -> None:
        """The rest of the output; a process left behind may hold the pipe open, so only for a while."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Empty):
            while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
                self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)[-4000:]


@pytest.fixture
def tag():
    """A tag for the test's processes; whatever still carries it at the end is killed."""
    tag = uuid.uuid4().hex
    yield tag
    for pid, _ in tagged(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def assert_stopped(regl: Regl, code: int, took: float, tag: str, name: str = "SIGTERM") -> None:
    assert_nothing_left(tag)
    assert code == 128 + signal.Signals[name].value, regl.output
    assert f"regl: stopped ({name})" in regl.output
    assert took < STOP_WITHIN_S, f"took {took:.1f} s to stop"


def test_the_first_signal_raises_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Stopped) as stopped, stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal interrupts this
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # a second signal, while the first unwinds: ignored
                time.sleep(0.1)
        assert stop_reason(stopped.value) == ("SIGTERM", 143) and STOPPING.is_set()
        assert stop_reason(KeyboardInterrupt()) == ("SIGINT", 130)  # Ctrl-C outside `stop_on_signals`
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        STOPPING.clear()  # as the next command would: this process goes on


def test_end_kills_what_ignores_sigterm():
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('deaf', flush=True); "
    deaf += "time.sleep(9)"
    stubborn = subprocess.Popen([sys.executable, "-c", deaf], stdout=subprocess.PIPE, text=True)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(9)"])
    assert stubborn.stdout.readline() == "deaf\n"  # it ignores SIGTERM from here on
    started = time.monotonic()
    end([stubborn, polite], grace_s=1)
    assert time.monotonic() - started < 5
    assert (stubborn.returncode, polite.returncode) == (-signal.SIGKILL, -signal.SIGTERM)


FL = ["--dataset", "mnist-10k", "--clients", "2", "--rounds", "50", "--cpus", "1"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("name, group", [("SIGTERM", False), ("SIGINT", True)], ids=["sigterm", "ctrl-c"])
def test_fl_stops_and_leaves_no_process(tmp_path, tag, name, group):
    """SIGTERM to `regl fl`, or Ctrl-C to its process group, mid-run: Ray and the sandboxed run end with it."""
    regl = Regl(["fl", *FL, "--out-dir", str(tmp_path / "run")], tmp_path, tag)
    regl.wait_for(r"round 0/50\b", timeout_s=120)  # Ray is up and the rounds have begun
    assert len(tagged(tag)) > 3  # the sandbox, the run and Ray's processes
    code, took = regl.stop(signal.Signals[name], group=group)
    assert_stopped(regl, code, took, tag, name)
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_fl_killed_outright_takes_its_sandbox_with_it(tmp_path, tag):
    """SIGKILL cannot be caught: `unshare` dies with `regl` (PR_SET_PDEATHSIG), the run with it (--kill-child)."""
    regl = Regl(["fl", *FL, "--out-dir", str(tmp_path / "run")], tmp_path, tag)
    regl.wait_for(r"round 0/50\b", timeout_s=120)
    code, _ = regl.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert_nothing_left(tag)


@pytest.mark.e2e
@pytest.mark.slow
def test_bench_stops_its_running_cell_and_leaves_it_unfinished(tmp_path, tag):
    out = tmp_path / "bench"
    regl = Regl(["bench", *FL, "--arms", "none", "--out-dir", str(out)], tmp_path, tag)
    regl.wait_for(r"round 0/50\b", timeout_s=120)  # the cell's child run is under way
    code, took = regl.stop()
    assert_stopped(regl, code, took, tag)
    cell = out / "none-s0"
    # what the bench reads as a finished cell (regl.fl.bench.why_unfinished): neither is there
    assert cell.is_dir() and not (cell / "summary.json").exists() and not (cell / "bench-cell.json").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_deploy_stops_superlink_supernodes_and_services(tmp_path, tag):
    regl = Regl(["deploy", *FL[:-2], "--out-dir", str(tmp_path / "run")], tmp_path, tag)
    regl.wait_for(r"Successfully started run", timeout_s=240)
    running = " ".join(command for _, command in tagged(tag))
    for started in ("flower-superlink", "flower-supernode", "regl.cli serve", "flwr run"):
        assert started in running, running
    code, took = regl.stop()
    assert_stopped(regl, code, took, tag)


@pytest.mark.e2e
@pytest.mark.slow
def test_serve_stops_with_a_finetune_running_and_writes_no_lora(tmp_path, tag, service_base, client_folder):
    port, store = free_port(), tmp_path / "store"
    argv = ["serve", "--base", str(service_base), "--data", str(client_folder), "--dataset", "fashion-mnist"]
    regl = Regl([*argv, "--port", str(port), "--store", str(store), "--threads", "1"], tmp_path, tag)
    regl.wait_for(r"Uvicorn running on", timeout_s=120)
    url = f"http://127.0.0.1:{port}"
    job = httpx.post(f"{url}/v1/finetune", json={"steps": 5000, "batch_size": 2, "prior_per_class": 1}).json()["id"]
    deadline = time.monotonic() + 60
    while "step" not in httpx.get(f"{url}/v1/jobs/{job}").json()["message"]:
        assert time.monotonic() < deadline, regl.output
        time.sleep(0.1)
    code, took = regl.stop()
    assert_stopped(regl, code, took, tag)
    assert not list(store.rglob("*.safetensors"))  # no LoRA, whole or half


@pytest.mark.slow
def test_finetune_stops_between_checkpoints_and_resumes(tmp_path, tag, service_base, client_folder):
    out = tmp_path / "lora"
    argv = ["finetune", "--data", str(client_folder), "--base", str(service_base), "--out", str(out), "--threads", "1"]
    argv += ["--batch-size", "2", "--prior-per-class", "1", "--checkpoint-every", "3"]
    regl = Regl([*argv, "--steps", "5000"], tmp_path, tag)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.pt").exists():
        assert regl.process.poll() is None and time.monotonic() < deadline, regl.output
        time.sleep(0.1)
    code, took = regl.stop()
    assert_stopped(regl, code, took, tag)
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    step = torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"]  # a whole checkpoint
    assert step % 3 == 0 and step > 0

    resumed = subprocess.run(
        [sys.executable, "-m", "regl.cli", *argv, "--steps", str(step + 2), "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reported = [int(done) for done in re.findall(rf"\b(\d+)/{step + 2}\b", resumed.stderr)]  # steps done of all
    assert reported and min(reported) >= step, resumed.stderr[-3000:]  # from the checkpoint on, not from 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
