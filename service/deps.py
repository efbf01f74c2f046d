"""What the routes share, as `Annotated` dependencies: settings, the loaded model, the batcher, the jobs, the token.

`create_app` puts the settings on `app.state`, and its lifespan the model, the batcher, the
job runner, the adapter rounds' cached training and the log of the runs the node trains for; a
route names what it needs by type (`model: ModelDep`) and FastAPI hands it over, so routes hold
no state of their own and tests can override any of it.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from regl.service.adapter_job import AdapterTrainings
from regl.service.batching import Batcher
from regl.service.jobs import JobRunner
from regl.service.local_model import LocalModel
from regl.service.runs import RunLog
from regl.service.settings import ServiceSettings


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_model(request: Request) -> LocalModel:
    return request.app.state.model


def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


def get_adapter_trainings(request: Request) -> AdapterTrainings:
    return request.app.state.adapter_trainings


def get_runs(request: Request) -> RunLog:
    return request.app.state.runs


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
ModelDep = Annotated[LocalModel, Depends(get_model)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
AdapterTrainingsDep = Annotated[AdapterTrainings, Depends(get_adapter_trainings)]
RunLogDep = Annotated[RunLog, Depends(get_runs)]
BearerDep = Annotated[
    HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False, description="the service's REGL_TOKEN"))
]


def require_token(settings: SettingsDep, credentials: BearerDep) -> None:
    """401 unless the request carries the service's token.

    `create_app` puts this on the API routes only when a token is set, so the OpenAPI
    document asks for a bearer token exactly when the service does.
    """
    if settings.token is None:
        raise RuntimeError("require_token guards a service without a token")
    expected = settings.token.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
