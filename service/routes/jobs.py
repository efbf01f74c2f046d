"""Background jobs: start a LoRA fine-tune or a fill, follow them, fetch a fill's images."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import Response
from pydantic import BaseModel

from regl.service import encoding
from regl.service.deps import JobsDep, ModelDep, SettingsDep
from regl.service.errors import BUSY, INVALID, UNREADABLE_BODY, busy, field_error
from regl.service.fill_job import fill_images, fill_work, finetune_work
from regl.service.jobs import Job, JobRunner, JobsFull
from regl.service.local_model import LocalModel
from regl.service.schemas import FillRequest, FinetuneRequest, JobInfo

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
async def fill(body: FillRequest, model: ModelDep, jobs: JobsDep, settings: SettingsDep) -> JobInfo:
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
    return _submit(jobs, "fill", fill_work(body, model, settings))


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
    found = _job(jobs, job_id)
    if found["kind"] != "fill" or found["status"] != "done":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is a {found['kind']} job, {found['status']}; images come from finished fill jobs",
        )
    try:
        body = await asyncio.to_thread(lambda: encoding.npz_bytes(**fill_images(found, model)))
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_410_GONE, str(exc)) from exc
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


def _job(jobs: JobRunner, job_id: str) -> dict:
    found = jobs.get(job_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
    return found
