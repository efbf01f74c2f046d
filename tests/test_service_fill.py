"""A client's fill made by its `regl serve` (run-config key fill-service) rather than in-process."""

import json
from dataclasses import replace

import numpy as np
import pytest

from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.fill.store import SyntheticStore
from regl.fl.experiment import ExperimentSettings, client_data, prepare_fill, training_data
from regl.service.app import create_app
from regl.service.settings import ServiceSettings
from regl.service.threaded_server import ThreadedServer

PARTITION = PartitionSpec(kind="classes", num_clients=2, classes_per_client=5)
pytestmark = pytest.mark.e2e  # each test serves uvicorn on loopback


def _service(tmp_path, client: int) -> ThreadedServer:
    return ThreadedServer(
        create_app(
            ServiceSettings(
                data="mnist-10k",
                client=client,
                clients=2,
                partition="classes",
                classes_per_client=5,
                threads=1,
                store=tmp_path / "service-store",
            )
        )
    )


def _settings(tmp_path, url: str) -> ExperimentSettings:
    fill = FillSettings(
        mode="diffusion+noise",
        supplement=0.01,
        lora_steps=2,
        prior_per_class=1,
        steps=2,
        store=str(tmp_path / "client-store"),
        service=url,
    )
    return ExperimentSettings(dataset="mnist-10k", partition=PARTITION, fill=fill)


def test_client_fill_comes_from_its_service_and_lands_in_its_store(tmp_path):
    with _service(tmp_path, client=0) as server:
        settings = _settings(tmp_path, server.url)
        metrics = prepare_fill(settings, 0, target=None, mixed=None)
    real = client_data(settings, 0)
    made_count = metrics["synthetic-images"]
    assert made_count == metrics["planned-diffusion"] + metrics["planned-noise"] == round(0.01 * len(real))
    assert metrics["service-seconds"] > 0 and metrics["finetune-seconds"] > 0
    assert len(training_data(settings, 0, None)) == len(real) + made_count  # training reads the client's own store
    # what the client stored is exactly what the service made
    service_manifests = list((tmp_path / "service-store" / "fill").glob("client-0-*/manifest.json"))
    assert len(service_manifests) == 1
    key = json.loads(service_manifests[0].read_text())["key"]
    made = SyntheticStore(service_manifests[0].parent).load_shards(key)
    stored = training_data(settings, 0, None)
    made_x = np.concatenate([made["diffusion"].x, made["noise"].x])
    assert np.array_equal(stored.x[len(real) :], made_x)
    missing = set(range(10)) - set(real.y.tolist())
    assert set(made["diffusion"].y.tolist()) <= missing  # only the classes the client lacks


def test_a_service_holding_another_clients_data_is_refused(tmp_path):
    with _service(tmp_path, client=1) as server, pytest.raises(ReglError, match="other data"):
        prepare_fill(_settings(tmp_path, server.url), 0, target=None, mixed=None)


def test_an_unreachable_service_is_named(tmp_path):
    with pytest.raises(ReglError, match="cannot reach the fill service at http://127.0.0.1:9"):
        prepare_fill(_settings(tmp_path, "http://127.0.0.1:9"), 0, target=None, mixed=None)


def test_a_federated_generator_round_and_its_fill_go_to_the_service(tmp_path):
    """The round the service trains is the one this process would; the fill then draws with the adapter it sends."""
    from regl.fl.federated_generator import adapter_round, client_data_digest, forget_trainings, initial_adapter

    with _service(tmp_path, client=0) as server:
        settings = _settings(tmp_path, server.url)
        settings = replace(settings, fill=replace(settings.fill, mode="diffusion", lora="federated", adapter_steps=2))
        start = initial_adapter(settings)
        trained, metrics, digest = adapter_round(settings, 0, start, server_round=1)
        assert client_data_digest(settings, 0) == digest == client_data(settings, 0).content_digest
        fill = prepare_fill(settings, 0, target=None, mixed=None, adapter=trained)
        log = [job["kind"] for job in server.app.state.jobs.all()]
    assert log == ["fill", "adapter-round"]  # newest first
    assert fill["service-seconds"] > 0 and fill["synthetic-images"] == fill["planned-diffusion"] > 0
    in_process = replace(settings, fill=replace(settings.fill, service=""))
    here, here_metrics, here_digest = adapter_round(in_process, 0, start, server_round=1)
    forget_trainings()
    assert here_digest == digest
    assert (here_metrics["examples"], here_metrics["loss"]) == (metrics["examples"], metrics["loss"])
    for name, value in here.items():
        np.testing.assert_array_equal(trained[name], value)
