"""The OpenAPI document of a running service: FastAPI's, plus what depends on settings and the model.

FastAPI writes the document from the routes and the pydantic models. What those cannot
know is added here, so that every request the document allows is one the service serves:
the caps the routes enforce (images per request, LoRA steps), the served classes, and
the client's class count that a fill's target must match. The bearer token needs nothing
here: `create_app` puts the token check on the API routes only when a token is set.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from regl.service.local_model import LocalModel
from regl.service.schemas import MAX_SEED
from regl.service.settings import ServiceSettings

MAX_INDEX_DIGITS = 9  # class "0007" is index 7; longer strings are names only (regl.data.datasets.class_index)


def service_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's document, made once the model is loaded and kept, as FastAPI keeps its own."""
    if app.openapi_schema is None:
        model: LocalModel | None = getattr(app.state, "model", None)
        if model is None:
            raise RuntimeError(
                "the OpenAPI document describes a started service: start the app (its lifespan "
                "loads the model) before asking for it"
            )
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _add_service_limits(document["components"]["schemas"], app.state.settings, model)
        app.openapi_schema = document
    return app.openapi_schema


def _add_service_limits(schemas: dict[str, Any], settings: ServiceSettings, model: LocalModel) -> None:
    """Write what the routes check against settings and the model into the request bodies' schemas."""
    generate = schemas["GenerateRequest"]["properties"]
    generate["n"]["maximum"] = settings.max_images_per_request
    generate["class"]["anyOf"] = _class_choices(model.class_names)
    # FastAPI writes limits as floats, and 2**63 - 1 as 2**63
    for body in ("GenerateRequest", "FillRequest", "AdapterRoundRequest"):
        schemas[body]["properties"]["seed"]["maximum"] = MAX_SEED
    for body in ("FinetuneRequest", "AdapterRoundRequest"):
        _cap(schemas[body]["properties"]["steps"], settings.max_finetune_steps)
    fill = schemas["FillRequest"]["properties"]
    _cap(fill["lora_steps"], settings.max_finetune_steps)
    target = next(choice for choice in fill["target"]["anyOf"] if choice["type"] == "array")
    target.update(
        minItems=len(model.class_names),
        maxItems=len(model.class_names),
        contains={"type": "number", "exclusiveMinimum": 0},
    )


def _cap(field: dict[str, Any], cap: int) -> None:
    """The route's cap (service/routes/jobs.py `_within_cap`): the maximum, and the default when lower."""
    field["maximum"] = cap
    field["default"] = min(field["default"], cap)


def _class_choices(class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """An index, a name, or an index written as a decimal string (leading zeros allowed)."""
    indices = "|".join(str(i) for i in range(len(class_names)))
    return [
        {"type": "integer", "minimum": 0, "maximum": len(class_names) - 1},
        {"type": "string", "enum": list(class_names)},
        {"type": "string", "pattern": f"^0*(?:{indices})$", "maxLength": MAX_INDEX_DIGITS},
    ]
