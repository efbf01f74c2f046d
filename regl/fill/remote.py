"""A client's fill made by its `regl serve` instead of in-process (run-config key `fill-service`).

The service plans from its own copy of the client's data; the caller sends its class
counts so a service that holds other data is refused, and checks that both plans agree.
Mixup images are not the service's to make: they come from other clients via the server.

A service that took the request and then vanished (killed, out of memory) is waited for, up
to SERVICE_RETURN_S, and asked once more: `regl deploy` starts a dead service again with the
same settings and store folder, so the fill resumes from the store's last complete state and
the client's cached LoRA. One that never answered is reported at once (a wrong address).
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
from regl.waiting import WaitTimeout, wait_until

POLL_SECONDS = 0.5
SERVICE_RETURN_S = 300.0  # as long as `regl deploy` gives a service to come up


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
        answered = False  # whether the service took this request: one that did and then vanished is waited for

        def attempt() -> tuple[dict[str, ImageDataset], dict]:
            nonlocal answered
            started = time.perf_counter()
            with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0) as http:
                job_id = _checked(http.post("/v1/fill", json=body), "POST /v1/fill")["id"]
                answered = True
                job = wait_until(
                    lambda: _finished(_checked(http.get(f"/v1/jobs/{job_id}"), "GET /v1/jobs")),
                    timeout_s,
                    POLL_SECONDS,
                    f"the fill service at {url} to finish job {job_id}",
                )
                if job["status"] == "failed":
                    raise ReglError(f"the fill service at {url} failed: {job['error']}")
                if job["result"]["plan"] != plan.to_json():
                    raise ReglError(
                        f"the fill service at {url} planned {job['result']['plan']['per_class']}, "
                        f"this client {plan.to_json()['per_class']}"
                    )
                _check_same_base(url, job["result"]["key"], settings)
                response = http.get(f"/v1/jobs/{job_id}/images", headers={"Accept": "application/x-npz"})
                with np.load(io.BytesIO(_checked(response, "GET images", raw=True))) as arrays:
                    x, y, source = arrays["x"], arrays["y"].astype(np.int64), arrays["source"]
            shards = {str(s): ImageDataset(x[source == s], y[source == s], data.class_names) for s in np.unique(source)}
            timings = {**job["result"]["timings"], "service_seconds": time.perf_counter() - started}
            return shards, {**timings, "made_with": job["result"]["key"]}

        try:
            return attempt()
        except httpx.TransportError as exc:
            if not answered and isinstance(exc, httpx.ConnectError):
                raise ReglError(f"cannot reach the fill service at {url}: {exc}") from exc
            gone = exc
        except httpx.HTTPError as exc:
            raise ReglError(f"cannot reach the fill service at {url}: {exc}") from exc
        try:
            wait_until(lambda: service_answers(url) or None, SERVICE_RETURN_S, 1.0, "it to come back")
        except WaitTimeout as exc:
            raise ReglError(f"the fill service at {url} went away ({gone!r}); {exc}") from gone
        try:
            shards, timings = attempt()
        except httpx.HTTPError as exc:
            raise ReglError(f"cannot reach the fill service at {url} (asked again after it came back): {exc}") from exc
        return shards, {**timings, "service_retries": 1}

    return make


def service_answers(url: str) -> bool:
    """Whether the service at `url` is up: /healthz (open without a token) answers 200."""
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _finished(job: dict) -> dict | None:
    return None if job["status"] in ("queued", "running") else job


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
