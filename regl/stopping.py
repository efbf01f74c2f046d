"""Stopping on SIGTERM as on Ctrl-C, and taking the processes a command started down with it.

`timeout`, Slurm's scancel, systemd and `docker stop` send SIGTERM; Ctrl-C sends SIGINT.
While a command runs (`stop_on_signals`), either raises `Stopped`, a KeyboardInterrupt, in
the main thread: it unwinds through the command's `finally` and `with` blocks, which stop
the processes it started (`end`), and files are never half-written because they are written
to a temporary file and renamed (regl/atomic.py). Only the first signal raises: Ctrl-C
reaches the whole process group at once, and a parent passing SIGTERM on to a child that
already has it must not cut the child's cleanup short. What does not end within GRACE_S
of SIGTERM is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

GRACE_S = 10.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # prctl(2)
# Set by the first signal: threads that wait in loops (the ServerApp's wait for replies) give up on it.
STOPPING = threading.Event()


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_reason(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """The signal's name and the exit code, the shell's 128 + its number; a plain KeyboardInterrupt is SIGINT."""
    signum = interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT
    return signal.Signals(signum).name, 128 + signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first SIGTERM or SIGINT raises `Stopped` in the main thread; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():  # only it can take signals
        yield
        return
    STOPPING.clear()

    def handler(signum: int, frame: object) -> None:
        if not STOPPING.is_set():
            STOPPING.set()
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def end(processes: Iterable[subprocess.Popen], grace_s: float = GRACE_S) -> None:
    """SIGTERM to each that still runs, then SIGKILL to what is left after one shared `grace_s`."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def call(argv: list[str], **popen: Any) -> int:
    """`subprocess.call`, but stopped it ends the child as `end` does instead of killing it at once."""
    process = subprocess.Popen(argv, **popen)
    try:
        return process.wait()
    except BaseException:
        end([process])
        raise


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ')'
                    if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # it exited meanwhile
    return found


def dies_with_this_process() -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGKILL when this process dies, however it dies."""
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()  # looked up before the fork

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # this process died before the child asked
            os._exit(1)

    return preexec
