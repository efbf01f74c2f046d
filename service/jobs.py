"""Background jobs (LoRA fine-tunes, fills): one at a time in a worker thread, each with its record.

A job that fails keeps its error in its record; the service goes on serving.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from regl.errors import ReglError

MAX_KEPT = 1000  # finished job records kept; the oldest go first


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


class JobCancelled(Exception):
    """Raised inside a job's work when the service stops."""


class JobRunner:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regl-jobs")

    def pending(self) -> int:
        with self.lock:
            return sum(job.status in ("queued", "running") for job in self.jobs.values())

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def submit(self, kind: str, work: Callable[[Job], dict[str, Any]]) -> Job:
        """Queue `work(job)`; it may update job.progress and job.message and returns the result."""
        from service.batching import QueueFull

        if self.pending() >= self.max_pending:
            raise QueueFull
        job = Job(id=uuid.uuid4().hex[:12], kind=kind)
        with self.lock:
            self.jobs[job.id] = job
            self._forget_oldest()
        self.executor.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]]) -> None:
        job.status, job.started = "running", time.time()
        try:
            job.result = work(job)
            job.status, job.progress, job.message = "done", 1.0, "done"
        except ReglError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # recorded, never raised into the server
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            logging.getLogger("regl.service").exception("job %s (%s) failed", job.id, job.kind)
        finally:
            job.finished = time.time()

    def _forget_oldest(self) -> None:
        done = [j for j in self.jobs.values() if j.status in ("done", "failed")]
        for job in sorted(done, key=lambda j: j.created)[: max(0, len(self.jobs) - MAX_KEPT)]:
            del self.jobs[job.id]

    def shutdown(self) -> None:
        """Queued jobs are dropped; a running one stops at its next progress report."""
        with self.lock:
            for job in self.jobs.values():
                job.cancelled.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
