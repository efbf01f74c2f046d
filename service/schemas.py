"""Request and response bodies of the service's routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", json_schema_extra={
        "examples": [{"class": "sneaker", "n": 4, "seed": 7}, {"class": 3, "n": 2, "source": "noise"}]})

    class_: StrictInt | Annotated[StrictStr, Field(max_length=200)] = Field(alias="class",
                                                                             description="class name or index")
    n: int = Field(1, ge=1, description="number of images; at most the service's max_images_per_request")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="image i depends only on (class, seed, i)")
    steps: int = Field(20, ge=1, le=200, description="diffusion denoising steps")
    guidance: float = Field(3.0, ge=0.0, le=30.0, description="classifier-free guidance scale")
    source: Literal["diffusion", "noise", "mixup"] = "diffusion"


class GenerateResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    label: int
    n: int
    seed: int
    source: str
    width: int
    height: int
    channels: int
    images: list[str] = Field(description="base64-encoded PNGs")


class ModelInfo(BaseModel):
    base: str
    base_fingerprint: str
    lora: str | None
    classes: list[str]
    resolution: int
    channels: int
    device: str
    data_images: int | None = Field(description="images in the client's data; null without --data")
    max_images_per_request: int
    max_batch: int


class FinetuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"steps": 300, "rank": 4}]})

    steps: int = Field(300, ge=1, le=100_000)
    rank: int = Field(4, ge=1, le=128)
    lr: float = Field(1e-3, gt=0, le=1.0)
    batch_size: int = Field(32, ge=1, le=1024)
    prior_per_class: int = Field(32, ge=0, le=1000, description="base images per missing class (prior preservation)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    activate: bool = Field(True, description="serve with the new LoRA once it is trained")


class FillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"mode": "diffusion+noise", "mix": "75:25", "supplement": 0.2, "seed": 0}]})

    mode: str = Field("diffusion", max_length=64,
                      description="sources joined by '+': diffusion, noise, mixup; mixup images come from other "
                                  "clients through the Flower server and are not made here")
    supplement: float = Field(1.0, ge=0.0, le=10.0, description="synthetic images per real image")
    mix: str = Field("", max_length=64, description="weights of the mode's sources in order, e.g. 75:25")
    target: list[float] | None = Field(None, max_length=10_000,
                                       description="class composition to fill towards; null: uniform")
    lora: bool = Field(True, description="fine-tune a LoRA on the client's images first")
    lora_steps: int = Field(300, ge=1, le=100_000)
    prior_per_class: int = Field(32, ge=0, le=1000)
    steps: int = Field(20, ge=1, le=200)
    guidance: float = Field(3.0, ge=0.0, le=30.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    expect_class_counts: list[int] | None = Field(
        None, max_length=10_000, description="the caller's class counts; refused (409) when the service holds other data")


class JobInfo(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    progress: float
    message: str
    error: str | None
    result: dict
    created: float
    started: float | None
    finished: float | None
