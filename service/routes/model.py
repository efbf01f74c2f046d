"""What the service serves: base and fingerprint, LoRA, classes, image format, its data (count and digest) and
limits."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from regl.service.deps import ModelDep, SettingsDep
from regl.service.schemas import ModelInfo

router = APIRouter(tags=["service"])


@router.get("/v1/model")
async def model_info(model: ModelDep, settings: SettingsDep) -> ModelInfo:
    from regl.generate.generator import base_fingerprint

    return ModelInfo(
        base=str(settings.base),
        base_fingerprint=await asyncio.to_thread(base_fingerprint, settings.base),
        lora=str(model.lora) if model.lora else None,
        classes=list(model.class_names),
        resolution=model.resolution,
        channels=model.channels,
        device=model.compute.device,
        dtype=model.compute.precision,
        data_images=None if model.data is None else len(model.data),
        data_digest=None if model.data is None else await asyncio.to_thread(lambda: model.data.content_digest),
        max_images_per_request=settings.max_images_per_request,
        max_batch=settings.max_batch,
    )
