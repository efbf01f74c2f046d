"""Background jobs (LoRA fine-tunes, fills): one at a time in a worker thread, each with its record.

A job that fails keeps its error in its record; the service goes on serving. A stopping
service tells every job to stop and waits a bounded time for the running one, which stops
at its next progress report. The wait matters beyond tidiness: diffusers builds models
under process-wide patches (`no_init_weights`, accelerate's `init_empty_weights`), so a
job still loading a pipeline corrupts any model another thread builds meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from regl.errors import ReglError

MAX_KEPT = 1000  # finished job records kept; the oldest go first


class JobCancelled(Exception):
    """Raised inside a job's work when the service stops."""


@dataclass
class Job:
    id: str
    kind: str
    status: str = "queued"  # queued, running, done, failed
    progress: float = 0.0  # 0 … 1
    message: str = ""
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def report(self, message: str, progress: float) -> None:
        """Progress from inside the work; raises JobCancelled once the service is stopping."""
        if self.cancelled.is_set():
            raise JobCancelled(f"the service stopped the job at: {message}")
        self.progress, self.message = progress, message

    def public(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cancelled"}


class JobsFull(Exception):
    """As many jobs are pending as the service accepts."""


class JobRunner:
    def __init__(self, max_pending: int, on_forget: Callable[[dict[str, Any]], None] | None = None) -> None:
        """`on_forget(record)` is called for a finished job whose record goes, to remove what only it pointed at."""
        self.max_pending = max_pending
        self.on_forget = on_forget
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.todo: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="regl-jobs", daemon=True)  # never blocks exit
        self.worker.start()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A consistent snapshot of the job's record."""
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else job.public()

    def all(self) -> list[dict[str, Any]]:
        """Snapshots of the kept jobs, newest first."""
        with self.lock:
            return [job.public() for job in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)]

    def submit(self, kind: str, work: Callable[[Job], dict[str, Any]]) -> dict[str, Any]:
        """Queue `work(job)`; it may set job.progress and job.message (under no lock) and returns the result."""
        with self.lock:
            if sum(job.status in ("queued", "running") for job in self.jobs.values()) >= self.max_pending:
                raise JobsFull
            job = Job(id=uuid.uuid4().hex[:12], kind=kind)
            self.jobs[job.id] = job
            self._forget_oldest()
            self.todo.put((job, work))
            return job.public()

    def _work(self) -> None:
        while (item := self.todo.get()) is not None:
            job, work = item
            if job.cancelled.is_set():
                self._finish(job, "failed", error="the service stopped before the job started")
                continue
            with self.lock:
                job.status, job.started = "running", time.time()
            try:
                result = work(job)
            except (ReglError, JobCancelled) as exc:
                self._finish(job, "failed", error=str(exc))
            except Exception as exc:  # recorded, never raised into the server
                logging.getLogger("regl.service").exception("job %s (%s) failed", job.id, job.kind)
                self._finish(job, "failed", error=f"{type(exc).__name__}: {exc}")
            else:
                self._finish(job, "done", result=result)

    def _finish(self, job: Job, status: str, error: str | None = None, result: dict | None = None) -> None:
        with self.lock:
            job.error, job.result, job.finished = error, result or {}, time.time()
            if status == "done":
                job.progress, job.message = 1.0, "done"
            job.status = status  # last: a poller that sees the final status sees the rest too

    def _forget_oldest(self) -> None:
        done = [j for j in self.jobs.values() if j.status in ("done", "failed")]
        for job in sorted(done, key=lambda j: j.created)[: max(0, len(self.jobs) - MAX_KEPT)]:
            del self.jobs[job.id]
            if self.on_forget is not None:
                self.on_forget(job.public())

    def shutdown(self, wait_s: float) -> bool:
        """Every job is told to stop: queued ones never start, a running one stops at its next report.

        Waits up to `wait_s` for the worker; False when it is still busy (then abandoned).
        """
        with self.lock:
            for job in self.jobs.values():
                job.cancelled.set()
        self.todo.put(None)
        self.worker.join(wait_s)
        return not self.worker.is_alive()
