"""Class samples on request: diffusion through the batcher, natural noise, or mixup of the client's images."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response

from regl.errors import ReglError
from regl.service import encoding
from regl.service.batching import Batcher, QueueFull
from regl.service.deps import BatcherDep, ModelDep, SettingsDep
from regl.service.errors import BUSY, INVALID, UNREADABLE_BODY, busy, field_error
from regl.service.local_model import LocalModel, request_seeds
from regl.service.schemas import GenerateRequest, GenerateResponse
from regl.service.settings import ServiceSettings

router = APIRouter(tags=["generation"])


@router.post(
    "/v1/generate",
    response_model=GenerateResponse,
    responses={
        **UNREADABLE_BODY,
        **INVALID,
        **BUSY,
        200: {
            "content": {encoding.ZIP: {}, encoding.NPZ: {}},
            "description": "JSON with base64 PNGs; a zip of PNGs or an npz (x, y) when the Accept header asks for "
            "application/zip or application/x-npz",
        },
        409: {"description": "mixup of a class this client does not hold, or no client data"},
        503: {"description": "the pipeline failed, or the service is stopping"},
        504: {"description": "not served within the request timeout"},
    },
)
async def generate(
    body: GenerateRequest, request: Request, model: ModelDep, batcher: BatcherDep, settings: SettingsDep
) -> Response:
    if body.n > settings.max_images_per_request:
        raise field_error("n", f"n must be at most {settings.max_images_per_request}, got {body.n}")
    try:
        label = model.label(body.class_)
    except ReglError as exc:
        raise field_error("class", str(exc)) from exc
    images = await _images(body, label, model, batcher, settings)
    name = model.class_names[label]
    wanted = encoding.wanted_format(request.headers.get("accept"))
    if wanted == encoding.ZIP:
        zipped = await asyncio.to_thread(encoding.zip_of_pngs, images, name.replace(" ", "-").replace("/", "-"))
        return Response(zipped, media_type=encoding.ZIP)
    if wanted == encoding.NPZ:
        return Response(encoding.npz_bytes(x=images, y=np.full(len(images), label, np.int64)), media_type=encoding.NPZ)
    pngs = await asyncio.to_thread(encoding.base64_pngs, images)
    return JSONResponse(
        GenerateResponse(
            class_=name,
            label=label,
            n=len(images),
            seed=body.seed,
            source=body.source,
            width=images.shape[2],
            height=images.shape[1],
            channels=images.shape[3],
            images=pngs,
        ).model_dump(by_alias=True)
    )


async def _images(
    body: GenerateRequest, label: int, model: LocalModel, batcher: Batcher, settings: ServiceSettings
) -> np.ndarray:
    try:
        if body.source == "noise":
            return await asyncio.to_thread(model.noise, body.n, body.seed)
        if body.source == "mixup":
            return await asyncio.to_thread(model.mixup, label, body.n, body.seed)
        return await asyncio.wait_for(
            batcher.submit([label] * body.n, request_seeds(body.seed, body.n), body.steps, body.guidance),
            settings.request_timeout_s,
        )
    except QueueFull as exc:
        raise busy(batcher.retry_after()) from exc
    except TimeoutError as exc:
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT, f"not served within {settings.request_timeout_s:g} s"
        ) from exc
    except ReglError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except (RuntimeError, MemoryError) as exc:  # the pipeline failed, or the service is stopping
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"generation failed: {exc}") from exc
