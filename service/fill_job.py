"""The service's background work: a LoRA fine-tune on the client's images, and the client's fill.

Both are the library's own (`regl.generate.lora`, `regl.fill.client`); this module turns a request into
the work a job runs and reports progress into its record. A fill with the federated generator draws with
the federation's adapter, which comes with the request (service/adapter_job.py has the rounds that train it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from regl.compute import resolve
from regl.data.datasets import BUILTINS
from regl.data.domains import ClientDomain
from regl.errors import ReglError
from regl.fill.client import ClientFill
from regl.fill.keys import adapter_digest
from regl.fill.settings import FillSettings, client_plan
from regl.options import request_options
from regl.service.adapter_job import AdapterTrainings, received_adapter
from regl.service.errors import field_error
from regl.service.jobs import Job
from regl.service.local_model import LocalModel
from regl.service.schemas import FillRequest, FinetuneRequest
from regl.service.settings import ServiceSettings


def finetune_work(body: FinetuneRequest, model: LocalModel, settings: ServiceSettings) -> Callable[[Job], dict]:
    from regl.generate.lora import finetune_lora
    from regl.generate.settings import LoraSettings

    lora_settings = LoraSettings(
        **{name: getattr(body, name) for name in request_options(LoraSettings)}, seed=body.seed
    )

    def work(job: Job) -> dict[str, Any]:
        out = Path(settings.store) / "lora" / job.id

        def on_step(step: int) -> None:
            job.report(f"step {step}/{body.steps}", step / body.steps)

        result = finetune_lora(
            model.data,
            model.class_names,
            model.template,
            settings.base,
            out,
            lora_settings,
            show_progress=False,
            on_step=on_step,
            compute=resolve(settings.device, settings.dtype, "training"),
            prior_cache=Path(settings.store) / "priors",
        )
        if body.activate:
            job.message = "loading the new LoRA"
            model.use_lora(out)
        return {"lora": str(out), "active": body.activate, "steps_run": result.steps_run, "timings": result.timings}

    return work


def _fill(body: FillRequest, model: LocalModel, settings: ServiceSettings) -> tuple[ClientFill, np.ndarray | None]:
    """The client's fill for this request; a bad mode, mix or adapter is a 422 naming the field."""
    fill_settings = FillSettings(
        **{name: getattr(body, name) for name in request_options(FillSettings)},
        mode=body.mode,
        mix=body.mix,
        target="uniform" if body.target is None else "global",
        base=str(settings.base),
        store=str(Path(settings.store) / "fill"),
        device=settings.device,
        dtype=settings.dtype,
    )
    try:
        sources = fill_settings.sources
    except ReglError as exc:
        raise field_error("mode", str(exc)) from exc
    if "oracle" in sources:
        raise field_error("mode", "the oracle fill is a benchmark arm of regl bench, not a service fill")
    if not sources:
        raise field_error(
            "mode", f"fill mode {body.mode!r} makes no images; name at least one of diffusion, noise, mixup"
        )
    try:
        fill_settings.check()
    except ReglError as exc:
        raise field_error("mix", str(exc)) from exc
    federated = body.lora.startswith("federated")
    adapter = None
    if body.adapter is not None:
        if not federated:
            raise field_error(
                "adapter", f"only lora federated and federated+local draw with an adapter, not {body.lora}"
            )
        adapter = received_adapter(body.adapter, settings.base, body.lora_rank, body.lora_targets)
    elif federated and "diffusion" in sources:
        raise field_error("adapter", f"lora {body.lora} draws with the federation's adapter: send it in adapter")
    target = None if body.target is None else np.asarray(body.target, dtype=np.float64)
    client = max(settings.client, 0)
    # a simulated client of a built-in dataset has its partition's look; a folder's images have their own
    domain = None
    if settings.client >= 0:
        domain = ClientDomain(settings.domain, client, settings.clients, settings.partition_seed)
    # a folder's or a node's images are named in the fill's keys by their content, a built-in dataset's by its name
    digest = "" if model.dataset in BUILTINS else model.data.content_digest
    look = settings.look if settings.client >= 0 else "none"
    fill = ClientFill(
        model.dataset,
        model.template,
        client,
        body.seed,
        fill_settings,
        domain,
        digest,
        adapter_digest="" if adapter is None else adapter_digest(adapter),
        look=look,
        adapter=adapter,
    )
    return fill, target


def fill_work(
    body: FillRequest, model: LocalModel, settings: ServiceSettings, trainings: AdapterTrainings
) -> Callable[[Job], dict]:
    """Raises on a bad mode, mix or adapter before the job is queued."""
    client, target = _fill(body, model, settings)

    def work(job: Job) -> dict[str, Any]:
        if client.adapter is not None:
            trainings.clear()  # the generator's rounds are over: free their pipeline before the fill loads one
        plan = client_plan(client.settings, model.data.class_counts(), target)
        job.message = f"making {plan.total()} images"
        synthetic, timings = client.make(model.data, plan, mixed=None, on_progress=job.report)
        key = client.store_key(plan)
        return {
            "store": str(client.store_folder(key)),
            "key": key,
            "images": len(synthetic),
            "plan": plan.to_json(),
            "timings": timings,
        }

    return work


def fill_images(job: dict, model: LocalModel) -> dict[str, np.ndarray]:
    """A finished fill's images (from the job's record) as arrays: x, y and each image's source."""
    from regl.fill.store import SyntheticStore

    shards = SyntheticStore(Path(job["result"]["store"])).load_shards(job["result"]["key"])
    if shards is None:
        raise FileNotFoundError(f"the store of fill job {job['id']} is gone or was replaced")
    if not shards:
        shape = (0, model.resolution, model.resolution, model.channels)
        return {"x": np.empty(shape, np.uint8), "y": np.empty(0, np.int64), "source": np.empty(0, "<U9")}
    return {
        "x": np.concatenate([s.x for s in shards.values()]),
        "y": np.concatenate([s.y for s in shards.values()]),
        "source": np.concatenate([np.full(len(s), name, "<U9") for name, s in shards.items()]),
    }
