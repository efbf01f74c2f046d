"""The ServerApp's wait for replies: Flower's Grid polls every 3 s, longer than a small model's whole round.

`QuickGrid` is the run's Grid with `send_and_receive` polling every PULL_SECONDS instead;
the fill phase waits the same way.
"""

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from regl.errors import ReglError
from regl.stopping import STOPPING

PULL_SECONDS = 0.2


def pull_replies(
    grid: Grid, message_ids: set[str], timeout: float | None, on_reply: Callable[[Message], None] | None = None
) -> list[Message]:
    """The replies to `message_ids` as they come (`on_reply` sees each), until all are in or `timeout` passes."""
    waiting, replies = set(message_ids), []
    deadline = None if timeout is None else time.monotonic() + timeout
    while waiting and (deadline is None or time.monotonic() < deadline):
        if STOPPING.is_set():  # the main thread is unwinding; the replies will not come
            raise ReglError("the run was stopped")
        for reply in grid.pull_messages(waiting):
            waiting.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            if on_reply is not None:
                on_reply(reply)
        if waiting:
            time.sleep(PULL_SECONDS)
    return replies


class QuickGrid:
    """A Grid whose `send_and_receive` polls every PULL_SECONDS; everything else is the wrapped Grid's."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return pull_replies(self._grid, set(self._grid.push_messages(messages)), timeout)
