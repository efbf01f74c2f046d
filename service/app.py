"""The FastAPI app: routes, the lifespan that loads the model once, token and limits.

Every route but /healthz needs `Authorization: Bearer $REGL_TOKEN` when a token is set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from regl.errors import ReglError
from service import encoding
from service.batching import Batcher, QueueFull
from service.errors import busy, field_error
from service.fill_job import finetune_work, fill_work
from service.jobs import JobRunner, JobsFull
from service.local_model import LocalModel, request_seeds
from service.schemas import FillRequest, FinetuneRequest, GenerateRequest, GenerateResponse, JobInfo, ModelInfo
from service.settings import ServiceSettings

log = logging.getLogger("regl.service")
MAX_PENDING_JOBS = 8
JOB_STOP_WAIT_S = 60  # a job stops at its next progress report: a LoRA step or a pipeline call
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        torch.set_num_threads(settings.threads)
        model = await asyncio.to_thread(LocalModel, settings)
        batcher = Batcher(model.diffusion, settings.max_batch, settings.batch_wait_ms / 1000, settings.max_queue)
        batcher.start()
        app.state.model, app.state.batcher, app.state.jobs = model, batcher, JobRunner(MAX_PENDING_JOBS)
        log.info("serving %s%s, %d classes", settings.base, f" + LoRA {model.lora}" if model.lora else "",
                 len(model.class_names))
        yield
        await batcher.stop()
        if not await asyncio.to_thread(app.state.jobs.shutdown, JOB_STOP_WAIT_S):
            log.warning("a background job did not stop within %d s; abandoned", JOB_STOP_WAIT_S)

    def authorize(credentials: BearerDep) -> None:
        if settings.token is None:
            return
        expected = settings.token.get_secret_value()
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="ReGL local generation service",
        description="Class samples from the client's generator (diffusion, natural noise, mixup), its LoRA "
                    "fine-tunes and its synthetic fill. Raw images never leave the machine it runs on.",
        version="0.1.0", lifespan=lifespan,
        # with a token every route but /healthz is closed, the API description included
        **({"docs_url": None, "redoc_url": None, "openapi_url": None} if settings.token else {}),
    )
    register_routes(app, settings, Depends(authorize))

    @app.exception_handler(ReglError)
    async def regl_error(request: Request, exc: ReglError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    return app


def _model(request: Request) -> LocalModel:
    return request.app.state.model


def _batcher(request: Request) -> Batcher:
    return request.app.state.batcher


def _jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


ModelDep = Annotated[LocalModel, Depends(_model)]
BatcherDep = Annotated[Batcher, Depends(_batcher)]
JobsDep = Annotated[JobRunner, Depends(_jobs)]

ERRORS = {401: {"description": "missing or wrong bearer token"},
          422: {"description": "a field is malformed or out of range; the message names it"}}


def register_routes(app: FastAPI, settings: ServiceSettings, auth) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[auth], responses=ERRORS, tags=["service"])
    async def model_info(model: ModelDep) -> ModelInfo:
        from regl.generate.generator import base_fingerprint

        return ModelInfo(
            base=str(settings.base), base_fingerprint=await asyncio.to_thread(base_fingerprint, settings.base),
            lora=str(model.lora) if model.lora else None, classes=list(model.class_names),
            resolution=model.resolution, channels=model.channels, device=str(model.generator.pipe.device),
            data_images=None if model.data is None else len(model.data),
            max_images_per_request=settings.max_images_per_request, max_batch=settings.max_batch)

    @app.post("/v1/generate", dependencies=[auth], tags=["generation"], response_model=GenerateResponse,
              responses={**ERRORS,
                         200: {"content": {encoding.ZIP: {}, encoding.NPZ: {}},
                               "description": "JSON with base64 PNGs; a zip of PNGs or an npz (x, y) when "
                                              "the Accept header asks for application/zip or application/x-npz"},
                         409: {"description": "mixup of a class this client does not hold, or no client data"},
                         429: {"description": "the queue is full; see Retry-After"},
                         504: {"description": "not served within the request timeout"}})
    async def generate(body: GenerateRequest, request: Request, model: ModelDep, batcher: BatcherDep) -> Response:
        if body.n > settings.max_images_per_request:
            raise field_error("n", f"n must be at most {settings.max_images_per_request}, got {body.n}")
        try:
            label = model.label(body.class_)
        except ReglError as exc:
            raise field_error("class", str(exc)) from exc
        images = await _images(body, label, model, batcher)
        name = model.class_names[label]
        wanted = encoding.wanted_format(request.headers.get("accept"))
        if wanted == encoding.ZIP:
            zipped = await asyncio.to_thread(encoding.zip_of_pngs, images, name.replace(" ", "-").replace("/", "-"))
            return Response(zipped, media_type=encoding.ZIP)
        if wanted == encoding.NPZ:
            return Response(encoding.npz_bytes(x=images, y=np.full(len(images), label, np.int64)),
                            media_type=encoding.NPZ)
        pngs = await asyncio.to_thread(encoding.base64_pngs, images)
        return JSONResponse(GenerateResponse(
            class_=name, label=label, n=len(images), seed=body.seed, source=body.source,
            width=images.shape[2], height=images.shape[1], channels=images.shape[3],
            images=pngs).model_dump(by_alias=True))

    async def _images(body: GenerateRequest, label: int, model: LocalModel, batcher: Batcher) -> np.ndarray:
        try:
            if body.source == "noise":
                return await asyncio.to_thread(model.noise, body.n, body.seed)
            if body.source == "mixup":
                return await asyncio.to_thread(model.mixup, label, body.n, body.seed)
            return await asyncio.wait_for(
                batcher.submit([label] * body.n, request_seeds(body.seed, body.n), body.steps, body.guidance),
                settings.request_timeout_s)
        except QueueFull as exc:
            raise busy(batcher.retry_after()) from exc
        except TimeoutError as exc:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT,
                                f"not served within {settings.request_timeout_s:g} s") from exc
        except ReglError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except (RuntimeError, MemoryError) as exc:  # the pipeline failed, or the service is stopping
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"generation failed: {exc}") from exc

    def _needs_data(model: LocalModel, what: str) -> None:
        if model.data is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{what} needs the client's images; "
                                                          "start the service with --data")

    def _submit(jobs: JobRunner, kind: str, work) -> JobInfo:
        try:
            return JobInfo(**jobs.submit(kind, work))
        except JobsFull as exc:
            raise busy(60) from exc

    job_responses = {**ERRORS, 409: {"description": "the service has no client data (or other data)"},
                     429: {"description": "too many jobs pending; see Retry-After"}}

    @app.post("/v1/finetune", dependencies=[auth], status_code=status.HTTP_202_ACCEPTED, responses=job_responses,
              tags=["jobs"])
    async def finetune(body: FinetuneRequest, model: ModelDep, jobs: JobsDep) -> JobInfo:
        """Start fine-tuning a LoRA on the client's images; follow it at /v1/jobs/{id}."""
        _needs_data(model, "fine-tuning")
        if body.steps > settings.max_finetune_steps:
            raise field_error("steps", f"steps must be at most {settings.max_finetune_steps}, got {body.steps}")
        return _submit(jobs, "finetune", finetune_work(body, model, settings))

    @app.post("/v1/fill", dependencies=[auth], status_code=status.HTTP_202_ACCEPTED, responses=job_responses,
              tags=["jobs"])
    async def fill(body: FillRequest, model: ModelDep, jobs: JobsDep) -> JobInfo:
        """Plan and make the client's synthetic fill into its store; the images at /v1/jobs/{id}/images."""
        _needs_data(model, "the fill")
        if body.lora_steps > settings.max_finetune_steps:
            raise field_error("lora_steps", f"lora_steps must be at most {settings.max_finetune_steps}, "
                                            f"got {body.lora_steps}")
        counts = model.data.class_counts().tolist()
        if body.expect_class_counts is not None and body.expect_class_counts != counts:
            raise HTTPException(status.HTTP_409_CONFLICT, f"the service holds other data (class counts {counts}) "
                                                          f"than the caller ({body.expect_class_counts})")
        if body.target is not None and (len(body.target) != len(counts) or min(body.target) < 0
                                        or not 0 < sum(body.target) < math.inf):
            raise field_error("target", f"target must be {len(counts)} non-negative weights with a positive sum")
        return _submit(jobs, "fill", fill_work(body, model, settings))

    @app.get("/v1/jobs/{job_id}", dependencies=[auth], responses={**ERRORS, 404: {"description": "no such job"}},
             tags=["jobs"])
    async def job(job_id: str, jobs: JobsDep) -> JobInfo:
        return JobInfo(**_job(jobs, job_id))

    @app.get("/v1/jobs/{job_id}/images", dependencies=[auth], tags=["jobs"],
             responses={**ERRORS, 200: {"content": {encoding.NPZ: {}}, "description": "x, y, source per image"},
                        404: {"description": "no such job"}, 409: {"description": "not a finished fill job"},
                        410: {"description": "the fill's store was replaced since"}})
    async def job_images(job_id: str, model: ModelDep, jobs: JobsDep) -> Response:
        from service.fill_job import fill_images

        found = _job(jobs, job_id)
        if found["kind"] != "fill" or found["status"] != "done":
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is a {found['kind']} job, {found['status']}; "
                                                          "images come from finished fill jobs")
        try:
            body = await asyncio.to_thread(lambda: encoding.npz_bytes(**fill_images(found, model)))
        except FileNotFoundError as exc:
            raise HTTPException(status.HTTP_410_GONE, str(exc)) from exc
        return Response(body, media_type=encoding.NPZ)

    def _job(jobs: JobRunner, job_id: str) -> dict:
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}")
        return found
