"""A client's fill made by its `regl serve` instead of in-process (run-config key `fill-service`).

The service plans from its own copy of the client's data; the caller sends its class
counts so a service that holds other data is refused, and checks that both plans agree.
Mixup images are not the service's to make: they come from other clients via the server.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.fill.client import RemoteFill
from regl.fill.plan import FillPlan
from regl.fill.settings import FillSettings
from regl.options import request_options

POLL_SECONDS = 0.5


def remote_fill(
    url: str,
    settings: FillSettings,
    run_seed: int,
    data: ImageDataset,
    target: np.ndarray | None,
    timeout_s: float = 3600.0,
) -> RemoteFill:
    """The diffusion and noise shards of a plan, from the service at `url` (token from REGL_TOKEN)."""
    import httpx

    headers = {"Authorization": f"Bearer {os.environ['REGL_TOKEN']}"} if os.environ.get("REGL_TOKEN") else {}
    body = {
        **{name: getattr(settings, name) for name in request_options(FillSettings)},
        "mode": settings.mode,
        "mix": settings.mix,
        "target": None if target is None or settings.target != "global" else target.tolist(),
        "seed": run_seed,
        "expect_class_counts": data.class_counts().tolist(),
    }

    def make(plan: FillPlan) -> tuple[dict[str, ImageDataset], dict]:
        try:
            return _make(plan)
        except httpx.HTTPError as exc:
            raise ReglError(f"cannot reach the fill service at {url}: {exc}") from exc

    def _make(plan: FillPlan) -> tuple[dict[str, ImageDataset], dict]:
        started = time.perf_counter()
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0) as http:
            job = _checked(http.post("/v1/fill", json=body), "POST /v1/fill")
            deadline = time.monotonic() + timeout_s
            while job["status"] in ("queued", "running"):
                if time.monotonic() > deadline:
                    raise ReglError(f"the fill service at {url} did not finish job {job['id']} in {timeout_s:g} s")
                time.sleep(POLL_SECONDS)
                job = _checked(http.get(f"/v1/jobs/{job['id']}"), "GET /v1/jobs")
            if job["status"] == "failed":
                raise ReglError(f"the fill service at {url} failed: {job['error']}")
            if job["result"]["plan"] != plan.to_json():
                raise ReglError(
                    f"the fill service at {url} planned {job['result']['plan']['per_class']}, "
                    f"this client {plan.to_json()['per_class']}"
                )
            _check_same_base(url, job["result"]["key"], settings)
            response = http.get(f"/v1/jobs/{job['id']}/images", headers={"Accept": "application/x-npz"})
            with np.load(io.BytesIO(_checked(response, "GET images", raw=True))) as arrays:
                x, y, source = arrays["x"], arrays["y"].astype(np.int64), arrays["source"]
        shards = {str(s): ImageDataset(x[source == s], y[source == s], data.class_names) for s in np.unique(source)}
        timings = {**job["result"]["timings"], "service_seconds": time.perf_counter() - started}
        return shards, {**timings, "made_with": job["result"]["key"]}

    return make


def _check_same_base(url: str, key: dict, settings: FillSettings) -> None:
    """Images from another base model would be stored under this client's base fingerprint."""
    if "base" not in key:
        return
    from regl.generate.generator import base_fingerprint

    ours = base_fingerprint(settings.base_folder())
    if key["base"] != ours:
        raise ReglError(
            f"the fill service at {url} generates with base {key['base']}, this client's fill "
            f"names base {ours} ({settings.base_folder()}); start the service with that --base"
        )


def _checked(response, what: str, raw: bool = False):
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        raise ReglError(f"the fill service answered {what} with {response.status_code}: {detail}")
    return response.content if raw else response.json()
