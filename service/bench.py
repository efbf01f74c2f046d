"""`regl bench-service`: what request batching buys.

32 concurrent callers each ask for 1–4 images of some class; the same requests one at a
time; and raw pipeline calls without HTTP at batch sizes 1–64. Throughput in images/s,
latency p50/p95 per request. On a 2-core CPU one request already keeps both cores busy, so
the measure of batching there is the concurrent throughput as a fraction of the best raw
batch's (target ≥ 90%); ≥ 5× the sequential throughput is the GPU target. Each is measured
`repeats` times and the fastest run kept: on a shared CPU one pipeline call's time varies by
±20%. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from regl.service.app import create_app
from regl.service.settings import ServiceSettings
from regl.service.threaded_server import ThreadedServer


def _requests(callers: int, num_classes: int, steps: int, guidance: float) -> list[dict]:
    return [
        {"class": (7 * i) % num_classes, "n": 1 + i % 4, "seed": i, "steps": steps, "guidance": guidance}
        for i in range(callers)
    ]


async def _concurrent(url: str, asks: list[dict]) -> tuple[float, list[float]]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=len(asks))) as http:

        async def one(ask: dict) -> float:
            started = time.perf_counter()
            response = await http.post("/v1/generate", json=ask, headers={"Accept": "application/x-npz"})
            response.raise_for_status()
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(ask) for ask in asks))
        return time.perf_counter() - started, list(latencies)


def _sequential(url: str, asks: list[dict]) -> tuple[float, list[float]]:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        for ask in asks:
            one = time.perf_counter()
            http.post("/v1/generate", json=ask, headers={"Accept": "application/x-npz"}).raise_for_status()
            latencies.append(time.perf_counter() - one)
        return time.perf_counter() - started, latencies


def _line(name: str, images: int, seconds: float, latencies: list[float] | None = None) -> str:
    line = f"{name:<28} {images:>4} images in {seconds:6.2f} s = {images / seconds:6.2f} images/s"
    if latencies:
        line += f"   latency p50 {np.percentile(latencies, 50):5.2f} s, p95 {np.percentile(latencies, 95):5.2f} s"
    return line


RAW_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _raw_call(model, batch: int, steps: int, guidance: float) -> float:
    started = time.perf_counter()
    model.diffusion([i % len(model.class_names) for i in range(batch)], list(range(batch)), steps, guidance)
    return time.perf_counter() - started


def run_service_bench(settings: ServiceSettings, callers: int, steps: int, guidance: float, repeats: int) -> dict:
    app = create_app(settings)
    with ThreadedServer(app) as server:
        model = app.state.model
        asks = _requests(callers, len(model.class_names), steps, guidance)
        images = sum(ask["n"] for ask in asks)
        asyncio.run(_concurrent(server.url, asks[:2]))  # warm-up
        seq_seconds, seq_latencies = min(_sequential(server.url, asks) for _ in range(repeats))
        calls_before = app.state.batcher.stats["calls"]
        con_seconds, con_latencies = min(asyncio.run(_concurrent(server.url, asks)) for _ in range(repeats))
        calls = (app.state.batcher.stats["calls"] - calls_before) / repeats
        raw = {b: b / min(_raw_call(model, b, steps, guidance) for _ in range(repeats)) for b in RAW_BATCHES}
        compute = model.compute.describe()
    print(f"generator on {compute}; fastest of {repeats} runs each")
    print(_line("one request at a time", images, seq_seconds, seq_latencies))
    print(
        _line(f"{callers} concurrent callers", images, con_seconds, con_latencies)
        + f"   ({calls:g} pipeline calls a run)"
    )
    print("raw pipeline calls: " + ", ".join(f"batch {b} {speed:.2f}" for b, speed in raw.items()) + " images/s")
    best = max(raw, key=raw.get)
    speedup = (images / con_seconds) / (images / seq_seconds)
    of_raw = (images / con_seconds) / raw[best]
    print(
        f"batching: {100 * of_raw:.0f}% of the best raw batch's throughput (batch {best}, target ≥ 90% on a CPU); "
        f"{speedup:.2f}× the sequential throughput (≥ 5× is the GPU target)"
    )
    return {
        "compute": compute,
        "images": images,
        "sequential_seconds": seq_seconds,
        "concurrent_seconds": con_seconds,
        "raw_images_per_second": raw,
        "best_raw_batch": best,
        "speedup": speedup,
        "fraction_of_best_raw": of_raw,
        "pipeline_calls": calls,
        "concurrent_p50": float(np.percentile(con_latencies, 50)),
        "concurrent_p95": float(np.percentile(con_latencies, 95)),
        "sequential_p50": float(np.percentile(seq_latencies, 50)),
        "sequential_p95": float(np.percentile(seq_latencies, 95)),
    }
