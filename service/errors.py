"""HTTP errors the routes and jobs raise, shaped like FastAPI's own, and their entries in the OpenAPI document."""

from __future__ import annotations

import math

from fastapi import HTTPException, status

UNAUTHORIZED = {401: {"description": "missing or wrong bearer token"}}
INVALID = {422: {"description": "a field is malformed or out of range; the message names it"}}
# FastAPI answers 400 itself when it cannot read a body at all (not UTF-8); malformed JSON is a 422
UNREADABLE_BODY = {400: {"description": "the body could not be read: it is not UTF-8 text"}}
BUSY = {429: {"description": "the service is busy; see Retry-After"}}


def field_error(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    )


def busy(retry_after: float) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "the service is busy; retry later",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )
