"""Waiting until something is so: the one poll-until-deadline loop, which gives up when the run is stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from regl.errors import ReglError
from regl.stopping import STOPPING

T = TypeVar("T")


class WaitTimeout(ReglError):
    """What was waited for did not happen in time; the message names it and the time."""


def wait_until(check: Callable[[], T | None], timeout_s: float, interval_s: float, what: str) -> T:
    """Call `check` every `interval_s` until it returns something other than None, and return that.

    `check` runs at once, and always at least once; it may raise to give up early (a process it
    watches exited), and its exception goes to the caller. After `timeout_s` (math.inf: no limit)
    WaitTimeout names `what` ("the service at … to come up"); once the run is stopped (SIGTERM,
    Ctrl-C: regl/stopping.py) a ReglError, as the ServerApp's wait for replies does.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if STOPPING.is_set():  # the main thread is unwinding; what is waited for no longer matters
            raise ReglError(f"the run was stopped while waiting for {what}")
        if (result := check()) is not None:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"gave up waiting for {what} after {timeout_s:g} s")
        STOPPING.wait(min(interval_s, left))  # a sleep that a stop cuts short
