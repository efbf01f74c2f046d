"""Request batching: concurrent generate requests share one pipeline call.

A worker takes the first waiting request, waits up to `wait_s` for more with the same
steps and guidance (any classes), up to `max_batch` images, runs them as one call in a
worker thread, and hands every caller its own slice. Requests that do not fit, or that
ask for other steps or guidance, wait for the next call in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

RunBatch = Callable[[list[int], list[int], int, float], np.ndarray]


class QueueFull(Exception):
    """More requests are waiting than the service accepts."""


@dataclass
class _Request:
    labels: list[int]
    seeds: list[int]
    steps: int
    guidance: float
    future: asyncio.Future = field(repr=False)

    @property
    def key(self) -> tuple[int, float]:
        return self.steps, self.guidance


class Batcher:
    def __init__(self, run_batch: RunBatch, max_batch: int, wait_s: float, max_queue: int) -> None:
        self.run_batch, self.max_batch, self.wait_s, self.max_queue = run_batch, max_batch, wait_s, max_queue
        self.waiting: list[_Request] = []
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regl-pipeline")
        self.stats = {"calls": 0, "requests": 0, "images": 0}  # pipeline calls so far
        self.seconds_per_image = 0.1  # measured; a moving average over the last calls
        self.current: list[_Request] = []  # the batch in the pipeline now
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for request in self.waiting + self.current:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the service is stopping"))
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def retry_after(self) -> float:
        """Seconds until the queue ahead of a new request is likely served."""
        waiting_images = sum(len(r.labels) for r in self.waiting + self.current)
        return waiting_images * self.seconds_per_image

    async def submit(self, labels: list[int], seeds: list[int], steps: int, guidance: float) -> np.ndarray:
        """The images for this request alone; raises QueueFull when `max_queue` requests wait."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFull
        request = _Request(labels, seeds, steps, guidance, asyncio.get_running_loop().create_future())
        self.waiting.append(request)
        self.arrived.set()
        try:
            return await request.future
        finally:
            if request in self.waiting:  # the caller gave up (timeout, disconnect) before its turn
                self.waiting.remove(request)

    def _take_batch(self) -> list[_Request]:
        self.waiting = [r for r in self.waiting if not r.future.done()]  # callers that gave up
        if not self.waiting:
            return []
        first = self.waiting[0]
        batch, size = [], 0
        for request in list(self.waiting):
            if request.key != first.key or (batch and size + len(request.labels) > self.max_batch):
                continue
            batch.append(request)
            size += len(request.labels)
            self.waiting.remove(request)
        return batch

    async def _fill_window(self) -> None:
        """Wait up to wait_s for more requests, or until a full batch is there."""
        deadline = time.perf_counter() + self.wait_s
        while sum(len(r.labels) for r in self.waiting) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            while not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
            await self._fill_window()
            self.current = self._take_batch()
            if self.current:
                await self._serve(self.current)
            self.current = []

    async def _serve(self, batch: list[_Request]) -> None:
        """One pipeline call; each caller gets its slice, or the call's error. The worker lives on."""
        labels = [label for r in batch for label in r.labels]
        seeds = [seed for r in batch for seed in r.seeds]
        started = time.perf_counter()
        try:
            images = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.run_batch, labels, seeds, batch[0].steps, batch[0].guidance
            )
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * (time.perf_counter() - started) / len(labels)
        self.stats["calls"] += 1
        self.stats["requests"] += len(batch)
        self.stats["images"] += len(labels)
        start = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(images[start : start + len(request.labels)])
            start += len(request.labels)
