"""A client's generator work made by its `regl serve` instead of in-process (node-config key `fill-service`):
its fill, and its rounds of the federation's adapter (`--fill-lora federated`).

The service plans from its own copy of the client's data; the caller sends its class
counts so a service that holds other data is refused, and checks that both plans agree.
Mixup images are not the service's to make: they come from other clients via the server.
A round trains on the service's copy too, and says which images by their digest, which the
server keeps with the round.

A service that took the request and then vanished (killed, out of memory) is waited for, up
to SERVICE_RETURN_S, and asked once more: `regl deploy` starts a dead service again with the
same settings and store folder, so the fill resumes from the store's last complete state and
the client's cached LoRA. One that never answered is reported at once (a wrong address).

Torch-free: a ClientApp whose node has a service moves arrays and never imports torch.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.fill.client import RemoteFill
from regl.fill.plan import FillPlan
from regl.fill.settings import FillSettings
from regl.generate.settings import ADAPTER_ROUND_OPTIONS, LoraSettings
from regl.options import request_options
from regl.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    import httpx

POLL_SECONDS = 0.5
SERVICE_RETURN_S = 300.0  # as long as `regl deploy` gives a service to come up
T = TypeVar("T")
Adapter = dict[str, np.ndarray]


def remote_fill(
    url: str,
    settings: FillSettings,
    run_seed: int,
    data: ImageDataset,
    target: np.ndarray | None,
    adapter: Mapping[str, np.ndarray] | None = None,
    timeout_s: float = 3600.0,
) -> RemoteFill:
    """The diffusion and noise shards of a plan, from the service at `url` (token from REGL_TOKEN).

    `adapter`: the federation's, sent along for `--fill-lora federated` and `federated+local`."""
    from regl.fl.remote_update import pack_arrays

    body = {
        **{name: getattr(settings, name) for name in request_options(FillSettings)},
        "mode": settings.mode,
        "mix": settings.mix,
        "target": None if target is None or settings.target != "global" else target.tolist(),
        "seed": run_seed,
        "expect_class_counts": data.class_counts().tolist(),
        "adapter": None if adapter is None else pack_arrays(dict(adapter)),
    }

    def make(plan: FillPlan) -> tuple[dict[str, ImageDataset], dict]:
        def attempt(http: httpx.Client, took: Callable[[], None]) -> tuple[dict[str, ImageDataset], dict]:
            started = time.perf_counter()
            job = _finished_job(http, url, "/v1/fill", body, timeout_s, took)
            if job["result"]["plan"] != plan.to_json():
                raise ReglError(
                    f"the fill service at {url} planned {job['result']['plan']['per_class']}, "
                    f"this client {plan.to_json()['per_class']}"
                )
            _check_same_base(url, job["result"]["key"].get("base"), settings.base_folder())
            with np.load(io.BytesIO(_npz(http, f"/v1/jobs/{job['id']}/images"))) as arrays:
                x, y, source = arrays["x"], arrays["y"].astype(np.int64), arrays["source"]
            shards = {str(s): ImageDataset(x[source == s], y[source == s], data.class_names) for s in np.unique(source)}
            timings = {**job["result"]["timings"], "service_seconds": time.perf_counter() - started}
            return shards, {**timings, "made_with": job["result"]["key"]}

        (shards, timings), retries = _asked(url, attempt)
        return shards, {**timings, **({"service_retries": retries} if retries else {})}

    return make


def remote_adapter_round(
    url: str,
    lora: LoraSettings,
    steps: int,
    train_a: bool,
    seed: int,
    adapter: Adapter,
    base: Path,
    timeout_s: float = 3600.0,
) -> tuple[Adapter, dict[str, Any]]:
    """One round of the federation's adapter trained by the service at `url` on its copy of the client's images:
    the trained adapter, and the round's result (loss, examples, the images' data_digest, seconds).

    `lora` gives the round's LoRA options (ADAPTER_ROUND_OPTIONS), `train_a=False` keeps the A factors
    (the ffa rule), `seed` the round's draws; `base`: the client's, which the service's must be.
    """
    from regl.fl.remote_update import pack_arrays

    body = {
        **{name: getattr(lora, name) for name in ADAPTER_ROUND_OPTIONS},
        "steps": steps,
        "train_a": train_a,
        "seed": seed,
        "adapter": pack_arrays(adapter),
    }

    def attempt(http: httpx.Client, took: Callable[[], None]) -> tuple[Adapter, dict[str, Any]]:
        job = _finished_job(http, url, "/v1/adapter-round", body, timeout_s, took)
        _check_same_base(url, job["result"]["base_fingerprint"], base)
        with np.load(io.BytesIO(_npz(http, f"/v1/jobs/{job['id']}/adapter")), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}, job["result"]

    return _asked(url, attempt)[0]


def remote_data_digest(url: str) -> str:
    """The digest of the client's images as the service at `url` holds them (what its rounds train on)."""
    import httpx

    try:
        info = _checked(httpx.get(f"{url.rstrip('/')}/v1/model", headers=_headers(), timeout=60.0), "GET /v1/model")
    except httpx.HTTPError as exc:
        raise ReglError(f"cannot reach the fill service at {url}: {exc}") from exc
    if info["data_digest"] is None:
        raise ReglError(f"the fill service at {url} holds no images; start it with the client's --data")
    return info["data_digest"]


def service_answers(url: str) -> bool:
    """Whether the service at `url` is up: /healthz (open without a token) answers 200."""
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['REGL_TOKEN']}"} if os.environ.get("REGL_TOKEN") else {}


def _asked(url: str, attempt: Callable[[httpx.Client, Callable[[], None]], T]) -> tuple[T, int]:
    """`attempt(http, took)`'s result and how often it was asked again (0 or 1).

    `attempt` calls `took()` once the service has taken its request: a service that did and then
    vanished is waited for and asked once more; one that never answered is reported at once.
    """
    import httpx

    answered = False

    def took() -> None:
        nonlocal answered
        answered = True

    def ask() -> T:
        with httpx.Client(base_url=url.rstrip("/"), headers=_headers(), timeout=60.0) as http:
            return attempt(http, took)

    try:
        return ask(), 0
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
        return ask(), 1
    except httpx.HTTPError as exc:
        raise ReglError(f"cannot reach the fill service at {url} (asked again after it came back): {exc}") from exc


def _finished_job(
    http: httpx.Client, url: str, path: str, body: dict, timeout_s: float, took: Callable[[], None]
) -> dict:
    """POST a job to `path`, wait for it, and return its record; a failed job is a ReglError with its error."""
    job_id = _checked(http.post(path, json=body), f"POST {path}")["id"]
    took()
    job = wait_until(
        lambda: _finished(_checked(http.get(f"/v1/jobs/{job_id}"), "GET /v1/jobs")),
        timeout_s,
        POLL_SECONDS,
        f"the fill service at {url} to finish job {job_id}",
    )
    if job["status"] == "failed":
        raise ReglError(f"the fill service at {url} failed its {job['kind']} job {job_id}: {job['error']}")
    return job


def _npz(http: httpx.Client, path: str) -> bytes:
    return _checked(http.get(path, headers={"Accept": "application/x-npz"}), f"GET {path}", raw=True)


def _finished(job: dict) -> dict | None:
    return None if job["status"] in ("queued", "running") else job


def _check_same_base(url: str, theirs: str | None, base: Path) -> None:
    """Images or adapters from another base model would pass for this client's base's; `theirs` is None
    for work that used no base (a noise fill)."""
    if theirs is None:
        return
    from regl.generate.generator import base_fingerprint

    ours = base_fingerprint(base)
    if theirs != ours:
        raise ReglError(
            f"the fill service at {url} generates with base {theirs}, this client's generator "
            f"names base {ours} ({base}); start the service with that --base"
        )


def _checked(response: httpx.Response, what: str, raw: bool = False) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        raise ReglError(f"the fill service answered {what} with {response.status_code}: {detail}")
    return response.content if raw else response.json()
