"""Request and response bodies of the service's routes.

Numbers are typed the way JSON Schema reads them: `true` is not a number and "7" is not an
integer, but 7.0 is one. Limits that depend on the running service (the caps on n and on
fine-tune steps, the served classes, the client's class count) are checked by the routes
and written into the OpenAPI document by service/openapi.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import permutations
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictStr, create_model

from regl.fill.plan import SOURCES
from regl.fill.settings import FillSettings
from regl.generate.settings import ADAPTER_ROUND_OPTIONS, LoraSettings, SamplingSettings
from regl.options import config_fields, default_of, request_options

MAX_SEED = 2**63 - 1
SAMPLING = SamplingSettings()
MAX_TARGET_WEIGHT = 1e12  # keeps a target's sum finite


def _integral_float_to_int(value: object) -> object:
    """JSON Schema counts 7.0 as an integer; pydantic's strict int does not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, Strict(), BeforeValidator(_integral_float_to_int)]
JsonFloat = Annotated[float, Strict()]  # strict refuses booleans and strings, and still takes integers
JSON_TYPES = {int: JsonInt, float: JsonFloat, bool: StrictBool, str: StrictStr}


def option_fields(settings: type, names: Iterable[str]) -> dict[str, Any]:
    """A request model's fields for the named options of `settings`, as declared: type, default, range, help."""
    declared = {cf.field.name: cf for cf in config_fields(settings)}
    out = {}
    for name in names:
        cf = declared[name]
        o = cf.option
        limits = {"ge": o.ge, "gt": o.gt, "le": o.le, "pattern": o.pattern}
        field = Field(default_of(cf.field), description=o.help, **{k: v for k, v in limits.items() if v is not None})
        out[name] = (Literal[o.choices] if o.choices else JSON_TYPES[cf.kind], field)
    return out


def request_fields(settings: type) -> dict[str, Any]:
    """A request model's fields for the options `settings` declares `request=True`."""
    return option_fields(settings, request_options(settings))


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"examples": [{"class": 0, "n": 1, "seed": 7}, {"class": 0, "n": 1, "source": "noise"}]},
    )

    class_: JsonInt | Annotated[StrictStr, Field(max_length=200)] = Field(
        alias="class", description="class name, or index (an integer or a decimal string)"
    )
    n: JsonInt = Field(1, ge=1, description="number of images; at most the service's max_images_per_request")
    seed: JsonInt = Field(0, ge=0, le=MAX_SEED, description="image i depends only on (class, seed, i)")
    steps: JsonInt = Field(SAMPLING.steps, ge=1, le=200, description="diffusion denoising steps")
    guidance: JsonFloat = Field(SAMPLING.guidance, ge=0.0, le=30.0, description="classifier-free guidance scale")
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
    device: str = Field(description="where the generator runs: cpu or cuda")
    dtype: str = Field(description="its weights' dtype, and the autocast one when on: e.g. float32, bfloat16 autocast")
    data_images: int | None = Field(description="images in the client's data; null without --data")
    data_digest: str | None = Field(
        description="the client's data by content (sha256 of images, labels and class names); null without --data"
    )
    max_images_per_request: int
    max_batch: int


class _FinetuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"rank": 4, "lr": 0.001}]})

    seed: JsonInt = Field(0, ge=0, le=2**31 - 1)
    activate: StrictBool = Field(True, description="serve with the new LoRA once it is trained")


# LoraSettings' options a fine-tune request takes, as declared there; steps at most the service's max_finetune_steps
FinetuneRequest = create_model("FinetuneRequest", __base__=_FinetuneRequest, **request_fields(LoraSettings))


# A fill's mode names distinct sources joined by '+'; its mix gives one weight per source, at least one
# positive. The fill checks both (service/fill_job.py, with the library's messages); the document says the same.
# The oracle needs the client's true domain transform: a benchmark ceiling (regl bench), not something a
# client's service makes.
SERVICE_SOURCES = tuple(source for source in SOURCES if source != "oracle")
FILL_MODES = tuple("+".join(p) for k in range(1, len(SERVICE_SOURCES) + 1) for p in permutations(SERVICE_SOURCES, k))
DEFAULT_FILL_MODE = "diffusion"
_WEIGHT = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_ZERO = r"(?:0+(?:\.0*)?|\.0+)"
_POSITIVE = r"(?:[0-9]*[1-9][0-9]*(?:\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)"
MIX_PATTERN = rf"^(?:{_WEIGHT}(?::{_WEIGHT})*)?$"  # plain decimals: no signs, exponents, spaces, inf or nan


def _mix_pattern(weights: int) -> str:
    """Empty, or `weights` colon-separated weights of which at least one is positive."""
    first_positive = [":".join([_ZERO] * i + [_POSITIVE] + [_WEIGHT] * (weights - 1 - i)) for i in range(weights)]
    return f"^(?:|{'|'.join(first_positive)})$"


def _mix_fits_mode() -> list[dict]:
    """The mode–mix rule in JSON Schema: one alternative per number of sources, mode required but by default."""
    rule = []
    for count in range(1, len(SERVICE_SOURCES) + 1):
        modes = [mode for mode in FILL_MODES if mode.count("+") == count - 1]
        rule.append(
            {
                "properties": {"mode": {"enum": modes}, "mix": {"pattern": _mix_pattern(count)}},
                **({} if DEFAULT_FILL_MODE in modes else {"required": ["mode"]}),
            }
        )
    return rule


class _FillRequest(BaseModel):
    """What a fill request holds beyond FillSettings' declared request options (`request_fields`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": _mix_fits_mode(),
            "examples": [{"mode": "diffusion+noise", "mix": "75:25", "supplement": 0.2, "seed": 0}],
        },
    )

    mode: StrictStr = Field(
        DEFAULT_FILL_MODE,
        max_length=64,
        json_schema_extra={"enum": list(FILL_MODES)},
        description="sources joined by '+': diffusion, noise, mixup; mixup images come from "
        "other clients through the Flower server and are not made here",
    )
    mix: StrictStr = Field(
        "",
        max_length=64,
        pattern=MIX_PATTERN,
        description="weights of the mode's sources in order, e.g. 75:25, at least one positive; empty: equal weights",
    )
    target: list[Annotated[JsonFloat, Field(ge=0.0, le=MAX_TARGET_WEIGHT)]] | None = Field(
        None,
        max_length=10_000,
        description="class composition to fill towards, one weight per class, at least one positive; null: uniform",
    )
    seed: JsonInt = Field(0, ge=0, le=MAX_SEED)
    expect_class_counts: list[JsonInt] | None = Field(
        None,
        max_length=10_000,
        description="the caller's class counts; refused (409) when the service holds other data",
    )
    adapter: StrictStr | None = Field(
        None,
        description="the federation's adapter, packed as an adapter round's: what lora federated and "
        "federated+local draw with; null for the other lora modes",
    )


# the rest of the body: FillSettings' options declared `request=True` (lora_steps at most max_finetune_steps)
FillRequest = create_model("FillRequest", __base__=_FillRequest, **request_fields(FillSettings))


class _AdapterRoundRequest(BaseModel):
    """One round of the federation's adapter on the client's images, as a node's ClientApp forwards it
    (regl/fill/remote.py); beside these, the LoRA options the round depends on and its steps."""

    model_config = ConfigDict(extra="forbid")

    adapter: StrictStr = Field(
        description="the federation's adapter: base64 npz of its arrays, as peft names them, and their names "
        "(packed as /v1/train's weights)"
    )
    train_a: StrictBool = Field(
        False, description="train the A factors too; false keeps them as sent (FFA-LoRA: the ffa rule)"
    )
    seed: JsonInt = Field(0, ge=0, le=MAX_SEED, description="the round's images, timesteps and noise")


# LoraSettings' options a round depends on, as declared there; steps as FillSettings declares a round's
# (at most the service's max_finetune_steps)
AdapterRoundRequest = create_model(
    "AdapterRoundRequest",
    __base__=_AdapterRoundRequest,
    **option_fields(LoraSettings, ADAPTER_ROUND_OPTIONS),
    steps=option_fields(FillSettings, ["adapter_steps"])["adapter_steps"],
)


class AdapterRoundResult(BaseModel):
    """A finished adapter round's result (its job's `result`); the trained adapter at /v1/jobs/{id}/adapter."""

    adapter: str = Field(description="where the service keeps the trained adapter (an npz)")
    loss: float = Field(description="the denoising loss of the round's last step")
    examples: int = Field(description="the client's images the round drew from")
    data_digest: str = Field(description="those images by content, as /v1/model's data_digest")
    base_fingerprint: str = Field(description="the base the round trained on, as /v1/model's")
    seconds: float = Field(description="the round's time in the service, caching the latents included")


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


class TrainRequest(BaseModel):
    """One federated round's local update, as a node's ClientApp forwards it (regl/fl/remote_update.py)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, str | int | float | bool | list[str] | list[int] | list[float] | list[bool]] = Field(
        description="the run config as the server sent it for this round (kebab-case keys, server-round included)"
    )
    client: JsonInt = Field(ge=0, description="the node's partition-id")
    data_dir: StrictStr = Field("", max_length=4096, description="the node's own data folder; empty: a partition")
    weights: StrictStr = Field(description="the global model: base64 npz of its arrays and their names")


class TrainResponse(BaseModel):
    weights: str = Field(description="the client's updated model, packed as the request's")
    metrics: dict[str, str | int | float | bool | list[int] | list[float]]


class ClassView(BaseModel):
    name: str
    real: int = Field(description="the node's own images of the class")
    synthetic: int | None = Field(description="the latest finished fill's images of the class; null without one")
    real_samples: list[str] = Field(description="some of the node's images of the class, base64 PNG")
    synthetic_samples: list[str] = Field(description="some of the fill's images of the class, base64 PNG")


class NodeData(BaseModel):
    """What the node holds, beside what its fill added: the page's histogram and samples."""

    images: int
    fill_job: str | None = Field(description="the finished fill job the synthetic counts come from")
    classes: list[ClassView]


class RoundTrained(BaseModel):
    round: int
    train_loss: float
    personalized_accuracy: float = Field(description="the node's updated model on its own classes' test images")


class RunView(BaseModel):
    """A federated run this node trained for, as its rounds' requests told it."""

    name: str
    client: int
    num_rounds: int
    rounds_trained: list[RoundTrained]
    global_accuracy: list[float] = Field(
        description="the global model's test accuracy after rounds 0 (before training), 1, … as the server sent it "
        "with the node's latest round: one round behind the server"
    )
    updated: float
