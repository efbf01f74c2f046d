"""A federated client's local update, for the node's ClientApp: this process has torch and the data loaded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter, HTTPException, status

from regl.data.node_data import run_class_names
from regl.fl.settings import ExperimentSettings
from regl.service.deps import RunLogDep, SettingsDep
from regl.service.errors import INVALID, UNREADABLE_BODY, field_error
from regl.service.schemas import TrainRequest, TrainResponse
from regl.service.settings import ServiceSettings

router = APIRouter(tags=["federated"])


def _run_settings(body: TrainRequest, settings: ServiceSettings) -> ExperimentSettings:
    """The run's settings on this node's data; a request for another client's data is a 409."""
    from regl.fl.experiment import class_names

    run = ExperimentSettings.from_config(body.config)
    if settings.classes:
        if not body.data_dir or Path(body.data_dir).resolve() != Path(settings.data).resolve():
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"this service holds {settings.data}, the request is for {body.data_dir!r}"
            )
        run = replace(run, data_dir=settings.data)
        if class_names(run) != run_class_names(settings.dataset, settings.classes):
            raise field_error("config", "the run's classes are not the ones this service was started with")
        return run
    same = (run.dataset, run.partition, body.client) == (settings.data, settings.partition_spec(), settings.client)
    if settings.client < 0 or body.data_dir or not same:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"this service holds {'client ' + str(settings.client) + ' of ' if settings.client >= 0 else ''}"
            f"{settings.data or 'no data'}, not this run's client {body.client}",
        )
    return run


@router.post(
    "/v1/train",
    responses={**UNREADABLE_BODY, **INVALID, 409: {"description": "the request is for another client's data"}},
)
def train(body: TrainRequest, settings: SettingsDep, runs: RunLogDep) -> TrainResponse:
    """Load the global weights, train one round on this client's data (and its fill), send the weights back."""
    from regl.fl.experiment import local_update
    from regl.fl.remote_update import pack_arrays, unpack_arrays

    run = _run_settings(body, settings)
    try:
        weights = unpack_arrays(body.weights)
    except ValueError as exc:
        raise field_error("weights", str(exc)) from exc
    if "server-round" not in body.config:
        raise field_error("config", "the round's config has no server-round")
    updated, metrics = local_update(run, body.client, weights, body.config)
    runs.record(run.name, run.num_rounds, body.client, body.config, metrics)
    return TrainResponse(weights=pack_arrays(updated), metrics=metrics)
