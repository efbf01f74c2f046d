"""HTTP errors the routes and jobs raise, shaped like FastAPI's own."""

from __future__ import annotations

import math

from fastapi import HTTPException, status


def field_error(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def busy(retry_after: float) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "the service is busy; retry later",
                         headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
