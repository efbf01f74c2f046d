"""`wait_until`: the one poll-until-deadline loop (regl/waiting.py)."""

import threading
import time

import pytest

from regl.errors import ReglError
from regl.stopping import STOPPING
from regl.waiting import WaitTimeout, wait_until


@pytest.fixture(autouse=True)
def not_stopping():
    STOPPING.clear()
    yield
    STOPPING.clear()


def test_returns_the_first_answer_that_is_not_none():
    answers = iter([None, None, 0, 5])
    calls = []

    def check():
        calls.append(1)
        return next(answers)

    assert wait_until(check, 10, 0.001, "an answer") == 0  # a falsy answer counts: only None means "not yet"
    assert len(calls) == 3


def test_checks_at_once_and_at_least_once():
    assert wait_until(lambda: "here", 0, 10, "it") == "here"


def test_times_out_naming_what_and_the_time():
    calls = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"^gave up waiting for the service at x to come up after 0.2 s$"):
        wait_until(lambda: calls.append(1), 0.2, 0.05, "the service at x to come up")
    assert 0.2 <= time.monotonic() - started < 2
    assert 3 <= len(calls) <= 6  # every interval, and once more at the deadline
    assert isinstance(WaitTimeout("x"), ReglError)  # the CLI prints it as one line


def test_gives_up_when_the_run_is_stopped():
    timer = threading.Timer(0.2, STOPPING.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(ReglError, match="the run was stopped while waiting for the replies") as stopped:
        wait_until(lambda: None, 60, 10, "the replies")  # the stop cuts the 10 s interval short
    assert time.monotonic() - started < 5
    assert not isinstance(stopped.value, WaitTimeout)
    timer.join()


def test_a_stopped_run_is_not_waited_for_at_all():
    STOPPING.set()
    with pytest.raises(ReglError, match="stopped"):
        wait_until(lambda: pytest.fail("checked after the stop"), 60, 1, "anything")


def test_the_checks_exception_ends_the_wait():
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("its process exited")
        return None

    with pytest.raises(RuntimeError, match="its process exited"):
        wait_until(check, 60, 0.001, "the process")
    assert len(calls) == 2
