"""The FastAPI app: its routes, the lifespan that loads the model once, and the token.

With a token set, every /v1 route needs `Authorization: Bearer $REGL_TOKEN`; the page at /
and /healthz hold no data and stay open, and the API description is not served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse

from regl.errors import ReglError
from regl.service.adapter_job import AdapterTrainings, clear_adapter_rounds, forget_adapter
from regl.service.batching import Batcher
from regl.service.deps import require_token
from regl.service.errors import UNAUTHORIZED
from regl.service.jobs import JobRunner
from regl.service.local_model import LocalModel
from regl.service.openapi import service_openapi
from regl.service.routes import generate, health, jobs, model, node, page, train
from regl.service.runs import RunLog
from regl.service.settings import ServiceSettings

log = logging.getLogger("regl.service")
MAX_PENDING_JOBS = 8
JOB_STOP_WAIT_S = 60  # a job stops at its next progress report: a LoRA step or a pipeline call


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once; on the way out fail the waiting requests and stop the jobs.

    The adapter rounds' training (latents, a pipeline) is kept in the app's state from round to round.
    """
    import torch

    settings: ServiceSettings = app.state.settings
    torch.set_num_threads(settings.threads)
    loaded = await asyncio.to_thread(LocalModel, settings)
    batcher = Batcher(loaded.diffusion, settings.max_batch, settings.batch_wait_ms / 1000, settings.max_queue)
    batcher.start()
    clear_adapter_rounds(settings)
    app.state.model, app.state.batcher = loaded, batcher
    app.state.jobs = JobRunner(MAX_PENDING_JOBS, on_forget=forget_adapter)
    app.state.adapter_trainings, app.state.runs = AdapterTrainings(), RunLog()
    log.info(
        "serving %s%s, %d classes",
        settings.base,
        f" + LoRA {loaded.lora}" if loaded.lora else "",
        len(loaded.class_names),
    )
    yield
    await batcher.stop()
    wait_s = app.state.job_stop_wait_s
    if not await asyncio.to_thread(app.state.jobs.shutdown, wait_s):
        log.warning("a background job did not stop within %g s; abandoned", wait_s)


def create_app(settings: ServiceSettings | None = None, job_stop_wait_s: float = JOB_STOP_WAIT_S) -> FastAPI:
    """`job_stop_wait_s`: how long the app's end waits for a running job to stop (`JobRunner.shutdown`)."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="ReGL local generation service",
        description="Class samples from the client's generator (diffusion, natural noise, mixup), its LoRA "
        "fine-tunes and its synthetic fill. Raw images never leave the machine it runs on.",
        version="0.1.0",
        lifespan=lifespan,
        # with a token every API route is closed, the API description included
        **({"docs_url": None, "redoc_url": None, "openapi_url": None} if settings.token else {}),
    )
    app.state.settings, app.state.job_stop_wait_s = settings, job_stop_wait_s
    app.openapi = lambda: service_openapi(app)
    app.include_router(page.router)
    app.include_router(health.router)
    guarded = {"dependencies": [Depends(require_token)], "responses": UNAUTHORIZED} if settings.token else {}
    for router in (model.router, generate.router, jobs.router, train.router, node.router):
        app.include_router(router, **guarded)

    @app.exception_handler(ReglError)
    async def regl_error(request: Request, exc: ReglError) -> JSONResponse:
        """A library error no route turned into its own answer: the request asked for something impossible."""
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    return app
