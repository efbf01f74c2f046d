"""Progress of a long loop: tqdm's bar on a terminal, a plain line every few percent elsewhere.

A bar redrawn with carriage returns is unreadable in a log file (`regl finetune 2> log`: a
300-step fine-tune leaves hundreds of updates on one line), so when the stream is not a
terminal the loop writes `what: done/total unit, elapsed, time left` every `LINE_EVERY` of
the total and at the end, in the style of `regl fl`'s per-round lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from regl.fl.progress import duration

LINE_EVERY = 0.05  # of the total: about 20 lines for a whole run


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    file: IO[str] | None = None,
):
    """A tqdm bar when `file` (default: stderr, as tqdm) is a terminal, else a `LineProgress`.

    Both iterate over `iterable`, count with `update(n)` and `n`, take `set_postfix(...)`, and
    work as a context manager.
    """
    stream = sys.stderr if file is None else file
    isatty = getattr(stream, "isatty", None)
    if disable or (isatty is not None and isatty()):
        from tqdm import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=stream)
    if total is None:
        total = len(iterable)  # type: ignore[arg-type]
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, file=stream)


class LineProgress:
    """tqdm's counting interface, written as whole lines: one per `LINE_EVERY` of the total, and the last."""

    def __init__(
        self, iterable: Iterable[Any] | None, *, total: int, initial: int, desc: str, unit: str, file: IO[str]
    ) -> None:
        self.iterable, self.total, self.n = iterable, total, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.every = max(1, round(total * LINE_EVERY))
        self.next_line = (initial // self.every + 1) * self.every
        self.started, self.started_at = time.perf_counter(), initial
        self.postfix = ""

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_line or self.n >= self.total > self.n - n:
            self.next_line = (self.n // self.every + 1) * self.every
            self._write()

    def close(self) -> None:
        pass

    def _write(self) -> None:
        elapsed = time.perf_counter() - self.started
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}s, {duration(elapsed)} elapsed"
        done_here = self.n - self.started_at
        if done_here > 0 and self.n < self.total:
            line += f", about {duration(elapsed / done_here * (self.total - self.n))} left"
        if self.postfix:
            line += f"; {self.postfix}"
        print(line, file=self.file, flush=True)
