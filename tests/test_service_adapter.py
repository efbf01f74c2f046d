"""A node's share of the federated generator in its `regl serve`: adapter rounds, and the fill that draws with the
federation's adapter."""

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import CLASSES, FAST, service, wait_for

from regl.compute import Compute
from regl.data.datasets import load_dataset
from regl.fill.keys import adapter_digest
from regl.fl.remote_update import pack_arrays
from regl.generate.federated_lora import client_training, initial_adapter, local_round
from regl.generate.generator import base_fingerprint
from regl.generate.prompts import DEFAULT_TEMPLATE
from regl.generate.settings import LoraSettings

LORA = LoraSettings(rank=2, lr=1e-2, batch_size=4, prior_per_class=0)
ROUND = {"rank": 2, "targets": "attention", "lr": 1e-2, "batch_size": 4, "steps": 2, "train_a": False, "seed": 5}


@pytest.fixture(scope="module")
def api(service_base, client_folder, tmp_path_factory):
    with service(service_base, tmp_path_factory.mktemp("svc"), data=str(client_folder)) as client:
        yield client


@pytest.fixture(scope="module")
def start(service_base) -> dict[str, np.ndarray]:
    return initial_adapter(service_base, CLASSES, DEFAULT_TEMPLATE, LORA)


def _round(api, adapter: dict[str, np.ndarray], **changes) -> tuple[dict[str, np.ndarray], dict]:
    started = api.post("/v1/adapter-round", json={**ROUND, **changes, "adapter": pack_arrays(adapter)})
    assert started.status_code == 202, started.text
    assert started.json()["kind"] == "adapter-round"
    job = wait_for(api, started.json()["id"])
    assert job["status"] == "done", job
    response = api.get(f"/v1/jobs/{job['id']}/adapter")
    assert response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content)) as arrays:
        return {name: arrays[name] for name in arrays.files}, job["result"]


def test_a_round_through_the_service_is_the_same_round_in_process(api, start, service_base, client_folder):
    trained, result = _round(api, start)
    assert set(trained) == set(start)
    for name, value in trained.items():
        if ".lora_A." in name:  # ffa: the A factors are sent back as they came
            np.testing.assert_array_equal(value, start[name])
    assert any(np.abs(value).max() > 0 for name, value in trained.items() if ".lora_B." in name)  # B left zero
    data = load_dataset(str(client_folder))
    assert (result["examples"], result["data_digest"]) == (10, data.content_digest)
    assert result["base_fingerprint"] == base_fingerprint(service_base) and np.isfinite(result["loss"])
    assert api.get("/v1/model").json()["data_digest"] == data.content_digest

    training = client_training(service_base, data, CLASSES, DEFAULT_TEMPLATE, LORA, Compute("cpu"), train_a=False)
    here, loss = local_round(training, start, steps=2, seed=5)
    assert loss == result["loss"]
    for name, value in here.items():
        np.testing.assert_array_equal(trained[name], value)

    cached = api.app.state.adapter_trainings.training
    second, _ = _round(api, trained, seed=6)  # round 2 of the same recipe reuses the cached latents
    assert api.app.state.adapter_trainings.training is cached
    assert any(not np.array_equal(second[name], trained[name]) for name in trained if ".lora_B." in name)


def test_a_round_trains_under_the_clients_look_token_it_is_sent(api, start, service_base, client_folder):
    trained, result = _round(api, start, style_token="sks3")
    data = load_dataset(str(client_folder))
    lora = replace(LORA, style_token="sks3")
    training = client_training(service_base, data, CLASSES, DEFAULT_TEMPLATE, lora, Compute("cpu"), train_a=False)
    here, loss = local_round(training, start, steps=2, seed=5)
    assert loss == result["loss"]
    for name, value in here.items():
        np.testing.assert_array_equal(trained[name], value)
    plain, _ = _round(api, start)
    assert any(not np.array_equal(plain[name], trained[name]) for name in trained if ".lora_B." in name)


def _broken(start: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    name = sorted(start)[0]
    if how == "missing":
        return {k: v for k, v in start.items() if k != name}
    if how == "extra":
        return {**start, "up_blocks.9.attentions.0.to_q.lora_A.weight": start[name]}
    if how == "shape":
        return {**start, name: np.zeros((3, *start[name].shape[1:]), np.float32)}
    if how == "nan":
        return {**start, name: np.full_like(start[name], np.nan)}
    return {**start, name: start[name].astype(np.int64)}  # integers


def test_a_forgotten_round_takes_its_adapter_file_and_a_restart_clears_the_old_ones(
    service_base, client_folder, tmp_path, start, monkeypatch
):
    monkeypatch.setattr("regl.service.jobs.MAX_KEPT", 1)
    with service(service_base, tmp_path, data=str(client_folder)) as api:
        _, first = _round(api, start)
        _, second = _round(api, start, seed=6)  # submitting it forgot the first job
        assert [job["result"] for job in api.get("/v1/jobs").json()] == [second]
        assert not Path(first["adapter"]).exists() and Path(second["adapter"]).is_file()
    with service(service_base, tmp_path, data=str(client_folder)):  # a new process: no record points at it
        assert not Path(second["adapter"]).exists()


@pytest.mark.parametrize(
    "how, words",
    [
        ("missing", "1 of its"),
        ("extra", "1 unexpected (e.g. up_blocks.9"),
        ("shape", "has shape (3,"),
        ("nan", "non-finite"),
        ("ints", "must be floats, got int64"),
    ],
)
def test_a_malformed_adapter_is_a_422_that_says_what_is_wrong(api, start, how, words):
    response = api.post("/v1/adapter-round", json={**ROUND, "adapter": pack_arrays(_broken(start, how))})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "adapter"] and words in detail["msg"], detail


@pytest.mark.parametrize(
    "body, field",
    [
        ({"adapter": "not base64 npz"}, "adapter"),
        ({"rank": 3}, "adapter"),  # a rank-2 adapter sent as rank 3
        ({"targets": "all"}, "adapter"),
        ({"steps": 0}, "steps"),
        ({"train_a": "yes"}, "train_a"),
        ({"prior_per_class": 1}, "prior_per_class"),  # a round has no priors
        ({"style_token": "two words"}, "style_token"),
    ],
)
def test_bad_round_requests_name_the_field(api, start, body, field):
    response = api.post("/v1/adapter-round", json={**ROUND, "adapter": pack_arrays(start), **body})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == field, response.text


def test_only_a_finished_round_has_an_adapter(api):
    started = api.post("/v1/finetune", json={"steps": 1, "batch_size": 2, "prior_per_class": 0, "activate": False})
    finetune = wait_for(api, started.json()["id"])
    response = api.get(f"/v1/jobs/{finetune['id']}/adapter")
    assert response.status_code == 409 and "adapters come from finished adapter-round jobs" in response.json()["detail"]


FILL = {"mode": "diffusion", "supplement": 0.3, "lora_rank": 2, "seed": 3, **FAST}


def test_a_federated_fill_draws_with_the_adapter_it_is_sent(api, start):
    trained, _ = _round(api, start)
    assert api.app.state.adapter_trainings.training is not None
    started = api.post("/v1/fill", json={**FILL, "lora": "federated", "adapter": pack_arrays(trained)})
    assert started.status_code == 202, started.text
    job = wait_for(api, started.json()["id"])
    assert job["status"] == "done", job
    assert job["result"]["key"]["lora"] == {"federated": adapter_digest(trained)}
    assert job["result"]["images"] == 3
    assert api.app.state.adapter_trainings.training is None  # the rounds are over: their pipeline is freed


@pytest.mark.parametrize(
    "body, words",
    [
        ({"lora": "federated"}, "draws with the federation's adapter"),
        ({"lora": "client", "adapter": "start"}, "only lora federated and federated+local"),
        ({"lora": "federated", "lora_rank": 4, "adapter": "start"}, "a rank-4 LoRA of this base has (4,"),
    ],
)
def test_a_federated_fill_needs_a_fitting_adapter(api, start, body, words):
    if "adapter" in body:
        body = {**body, "adapter": pack_arrays(start)}
    response = api.post("/v1/fill", json={**FILL, **body})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "adapter"] and words in detail["msg"], detail


def test_the_document_describes_the_round_with_this_services_limits(api):
    from regl.service.schemas import MAX_SEED

    spec = api.get("/openapi.json").json()
    body = spec["components"]["schemas"]["AdapterRoundRequest"]["properties"]
    expected = {
        "adapter",
        "train_a",
        "seed",
        "rank",
        "targets",
        "lr",
        "batch_size",
        "cfg_dropout",
        "style_token",
        "steps",
    }
    assert set(body) == expected
    assert (body["seed"]["maximum"], body["steps"]["maximum"], body["steps"]["default"]) == (MAX_SEED, 5000, 20)
    assert (
        "/v1/jobs/{job_id}/adapter" in spec["paths"]
        and "data_digest" in spec["components"]["schemas"]["ModelInfo"]["properties"]
    )
