"""What the node holds and takes part in, for its page: its data beside its fill, and its federated runs."""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, status

from regl.service import encoding
from regl.service.deps import JobsDep, ModelDep, RunLogDep
from regl.service.fill_job import fill_images
from regl.service.jobs import JobRunner
from regl.service.local_model import LocalModel
from regl.service.schemas import ClassView, NodeData, RunView

router = APIRouter(tags=["node"])
MAX_SAMPLES = 16


def _latest_fill(jobs: JobRunner, model: LocalModel) -> tuple[str | None, dict[str, np.ndarray] | None]:
    """The newest finished fill whose store is still there, and its images."""
    for job in sorted(jobs.all(), key=lambda job: job["finished"] or 0, reverse=True):
        if job["kind"] == "fill" and job["status"] == "done":
            try:
                return job["id"], fill_images(job, model)
            except FileNotFoundError:
                continue
    return None, None


def _node_data(model: LocalModel, jobs: JobRunner, samples: int) -> NodeData:
    data = model.data
    fill_job, fill = _latest_fill(jobs, model)
    classes = []
    for label, name in enumerate(model.class_names):
        real = data.x[data.y == label]
        synthetic = None if fill is None else fill["x"][fill["y"] == label]
        classes.append(
            ClassView(
                name=name,
                real=len(real),
                synthetic=None if synthetic is None else len(synthetic),
                real_samples=encoding.base64_pngs(real[:samples]),
                synthetic_samples=[] if synthetic is None else encoding.base64_pngs(synthetic[:samples]),
            )
        )
    return NodeData(images=len(data), fill_job=fill_job, classes=classes)


@router.get("/v1/data", responses={409: {"description": "the service was started without the client's images"}})
async def node_data(
    model: ModelDep, jobs: JobsDep, samples: Annotated[int, Query(ge=0, le=MAX_SAMPLES)] = 4
) -> NodeData:
    """The node's images per class beside the latest fill's, with `samples` of each."""
    if model.data is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the node's data needs its images; start the service with --data")
    return await asyncio.to_thread(_node_data, model, jobs, samples)


@router.get("/v1/runs")
async def runs(log: RunLogDep) -> list[RunView]:
    """The federated runs this node trained for, the most recent first."""
    return [RunView(**run) for run in log.all()]
