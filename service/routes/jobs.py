"""Background jobs: start a LoRA fine-tune, a fill or a round of the federation's adapter, follow them, fetch a
fill's images or a round's adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import Response
from pydantic import BaseModel

from regl.service import encoding
from regl.service.adapter_job import adapter_round_work, received_adapter
from regl.service.deps import AdapterTrainingsDep, JobsDep, ModelDep, SettingsDep
from regl.service.errors import BUSY, INVALID, UNREADABLE_BODY, busy, field_error
from regl.service.fill_job import fill_images, fill_work, finetune_work
from regl.service.jobs import Job, JobRunner, JobsFull
from regl.service.local_model import LocalModel
from regl.service.schemas import AdapterRoundRequest, FillRequest, FinetuneRequest, JobInfo

router = APIRouter(tags=["jobs"])
Body = TypeVar("Body", bound=BaseModel)
NO_JOB = {404: {"description": "no such job"}}
STARTS_A_JOB = {
    **UNREADABLE_BODY,
    **INVALID,
    **BUSY,
    409: {"description": "the service has no client data (or other data)"},
}


@router.post("/v1/finetune", status_code=status.HTTP_202_ACCEPTED, responses=STARTS_A_JOB)
async def finetune(body: FinetuneRequest, model: ModelDep, jobs: JobsDep, settings: SettingsDep) -> JobInfo:
    """Start fine-tuning a LoRA on the client's images; follow it at /v1/jobs/{id}."""
    _needs_data(model, "fine-tuning")
    body = _within_cap(body, "steps", settings.max_finetune_steps)
    return _submit(jobs, "finetune", finetune_work(body, model, settings))


@router.post("/v1/fill", status_code=status.HTTP_202_ACCEPTED, responses=STARTS_A_JOB)
async def fill(
    body: FillRequest, model: ModelDep, jobs: JobsDep, settings: SettingsDep, trainings: AdapterTrainingsDep
) -> JobInfo:
    """Plan and make the client's synthetic fill into its store; the images at /v1/jobs/{id}/images."""
    _needs_data(model, "the fill")
    body = _within_cap(body, "lora_steps", settings.max_finetune_steps)
    counts = model.data.class_counts().tolist()
    if body.expect_class_counts is not None and body.expect_class_counts != counts:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"the service holds other data (class counts {counts}) than the caller ({body.expect_class_counts})",
        )
    if body.target is not None and (len(body.target) != len(counts) or not sum(body.target) > 0):
        raise field_error("target", f"target must be {len(counts)} non-negative weights with a positive sum")
    work = await asyncio.to_thread(fill_work, body, model, settings, trainings)  # a sent adapter is checked
    return _submit(jobs, "fill", work)


@router.post("/v1/adapter-round", status_code=status.HTTP_202_ACCEPTED, responses=STARTS_A_JOB)
async def adapter_round(
    body: AdapterRoundRequest, model: ModelDep, jobs: JobsDep, settings: SettingsDep, trainings: AdapterTrainingsDep
) -> JobInfo:
    """Train the federation's adapter a round on the client's images; the trained one at /v1/jobs/{id}/adapter.

    The client's latents are cached for the next round of the same LoRA options. An adapter that is not a LoRA
    of the request's rank and layers on the service's base is a 422.
    """
    _needs_data(model, "an adapter round")
    body = _within_cap(body, "steps", settings.max_finetune_steps)
    adapter = await asyncio.to_thread(received_adapter, body.adapter, settings.base, body.rank, body.targets)
    return _submit(jobs, "adapter-round", adapter_round_work(body, adapter, model, settings, trainings))


@router.get("/v1/jobs")
async def all_jobs(jobs: JobsDep) -> list[JobInfo]:
    """The jobs this service keeps (the last 1000 finished and all pending), newest first."""
    return [JobInfo(**job) for job in jobs.all()]


@router.get("/v1/jobs/{job_id}", responses=NO_JOB)
async def job(job_id: str, jobs: JobsDep) -> JobInfo:
    return JobInfo(**_job(jobs, job_id))


@router.get(
    "/v1/jobs/{job_id}/images",
    responses={
        **NO_JOB,
        200: {"content": {encoding.NPZ: {}}, "description": "x, y, source per image"},
        409: {"description": "not a finished fill job"},
        410: {"description": "the fill's store was replaced since"},
    },
)
async def job_images(job_id: str, model: ModelDep, jobs: JobsDep) -> Response:
    found = _finished(jobs, job_id, "fill", "images")
    try:
        body = await asyncio.to_thread(lambda: encoding.npz_bytes(**fill_images(found, model)))
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_410_GONE, str(exc)) from exc
    return Response(body, media_type=encoding.NPZ)


@router.get(
    "/v1/jobs/{job_id}/adapter",
    responses={
        **NO_JOB,
        200: {"content": {encoding.NPZ: {}}, "description": "the trained adapter's arrays, as peft names them"},
        409: {"description": "not a finished adapter round"},
        410: {"description": "the round's adapter was removed since"},
    },
)
async def job_adapter(job_id: str, jobs: JobsDep) -> Response:
    found = _finished(jobs, job_id, "adapter-round", "adapters")
    try:
        body = await asyncio.to_thread(Path(found["result"]["adapter"]).read_bytes)
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_410_GONE, f"the adapter of job {job_id} was removed") from exc
    return Response(body, media_type=encoding.NPZ)


def _within_cap(body: Body, field: str, cap: int) -> Body:
    """`field` at most the service's cap: a value sent above it is a 422; the default is lowered to it.

    The OpenAPI document says the same (service/openapi.py): maximum and default both from the cap.
    """
    value = getattr(body, field)
    if field not in body.model_fields_set:
        return body.model_copy(update={field: min(value, cap)})
    if value > cap:
        raise field_error(field, f"{field} must be at most {cap}, got {value}")
    return body


def _needs_data(model: LocalModel, what: str) -> None:
    if model.data is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{what} needs the client's images; start the service with --data"
        )


def _submit(jobs: JobRunner, kind: str, work: Callable[[Job], dict]) -> JobInfo:
    try:
        return JobInfo(**jobs.submit(kind, work))
    except JobsFull as exc:
        raise busy(60) from exc


def _finished(jobs: JobRunner, job_id: str, kind: str, what: str) -> dict:
    """The record of a finished job of `kind`, whose `what` the caller asks for; a 409 for any other job."""
    found = _job(jobs, job_id)
    if found["kind"] != kind or found["status"] != "done":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is a {found['kind']} job, {found['status']}; {what} come from finished {kind} jobs",
        )
    return found


def _job(jobs: JobRunner, job_id: str) -> dict:
    found = jobs.get(job_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return found
