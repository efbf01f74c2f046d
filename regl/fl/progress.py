"""What a run prints while it works: one line per round and one per client whose fill is done.

Each line says how far the run is and about how long the rest takes, so a long fill or a
slow round is never silent; everything else (Flower's and Ray's logs) goes to the run's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Write = Callable[[str], None]


def print_line(line: str) -> None:
    """The default way out: stdout, flushed, so a piped run shows each line as it happens."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """45s, 6m 05s, 1h 02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class RoundProgress:
    """`round i/N: accuracy, elapsed, time left`; the time left is the mean round so far times the rounds left."""

    def __init__(self, num_rounds: int, started: float, write: Write) -> None:
        self.num_rounds, self.started, self.write = num_rounds, started, write
        self.rounds_started = started

    def round_done(self, server_round: int, accuracy: float, missing_clients: tuple[int, ...] = ()) -> None:
        now = time.perf_counter()
        line = f"round {server_round}/{self.num_rounds}: accuracy {100 * accuracy:.2f}%"
        if server_round == 0:
            self.rounds_started = now
            self.write(f"{line} (the initial model)")
            return
        line += f", {duration(now - self.started)} elapsed"
        left = self.num_rounds - server_round
        if left:
            line += f", about {duration((now - self.rounds_started) / server_round * left)} left"
        if missing_clients:
            names = ", ".join(map(str, missing_clients))
            line += f"; no update from client{'s' if len(missing_clients) > 1 else ''} {names} (see rounds.json)"
        self.write(line)


class FillProgress:
    """`fill: client c done (i/N), images made, elapsed, time left`, the time left at the mean pace so far."""

    def __init__(self, num_clients: int, write: Write) -> None:
        self.num_clients, self.write = num_clients, write
        self.started = time.perf_counter()
        self.done = self.images = 0

    def client_done(self, client: int, images: int) -> None:
        self.done += 1
        self.images += images
        elapsed = time.perf_counter() - self.started
        line = (
            f"fill: client {client} done ({self.done}/{self.num_clients}), {self.images} images made, "
            f"{duration(elapsed)} elapsed"
        )
        left = self.num_clients - self.done
        if left:
            line += f", about {duration(elapsed / self.done * left)} left"
        self.write(line)


def count_progress(what: str, unit: str, total: int, write: Write, lines: int = 10) -> Callable[[int], None]:
    """An `on_batch(done)` that writes about `lines` lines `what: done/total unit, elapsed, time left`."""
    started = time.perf_counter()
    step = max(1, total // lines)
    next_line = step

    def on_batch(done: int) -> None:
        nonlocal next_line
        if done < next_line and done < total:
            return
        next_line = (done // step + 1) * step
        elapsed = time.perf_counter() - started
        line = f"{what}: {done}/{total} {unit}, {duration(elapsed)} elapsed"
        if done < total:
            line += f", about {duration(elapsed / done * (total - done))} left"
        write(line)

    return on_batch
