"""The service's background jobs: LoRA fine-tunes and fills, their progress, failures and stops."""

import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import FAST, build_client_folder, decode, service, wait_for

from regl.service import jobs as jobs_module
from regl.service.app import create_app
from regl.service.jobs import JobRunner
from regl.service.settings import ServiceSettings


def test_unknown_job_and_images_of_a_finetune_job(api):
    assert api.get("/v1/jobs/nope").status_code == 404
    job = wait_for(
        api,
        api.post("/v1/finetune", json={"steps": 2, "batch_size": 2, "prior_per_class": 1, "activate": False}).json()[
            "id"
        ],
    )
    assert job["status"] == "done"
    assert api.get("/v1/jobs").json()[0] == job  # the list, newest first
    assert api.get(f"/v1/jobs/{job['id']}/images").status_code == 409


def test_a_forgotten_job_record_is_handed_to_on_forget(monkeypatch):
    monkeypatch.setattr(jobs_module, "MAX_KEPT", 2)
    forgotten = []
    runner = JobRunner(8, on_forget=forgotten.append)
    ids = []
    for i in range(4):
        ids.append(runner.submit("count", lambda job, i=i: {"i": i})["id"])
        deadline = time.monotonic() + 10
        while runner.get(ids[-1])["status"] != "done" and time.monotonic() < deadline:
            time.sleep(0.01)
    assert runner.shutdown(5)
    assert [(record["id"], record["result"]) for record in forgotten] == [(ids[0], {"i": 0}), (ids[1], {"i": 1})]
    assert [job["id"] for job in runner.all()] == [ids[3], ids[2]]


def test_finetune_job_reports_progress_and_activates_its_lora(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, data=str(client_folder)) as api:
        before = decode(api.post("/v1/generate", json={"class": "cat", "n": 2, **FAST}).json()["images"])
        body = {"steps": 4, "batch_size": 2, "prior_per_class": 1, "lr": 0.05, "style_token": "sks"}
        started = api.post("/v1/finetune", json=body)
        assert started.status_code == 202 and started.json()["kind"] == "finetune"
        job = wait_for(api, started.json()["id"])
        assert (job["status"], job["progress"], job["error"]) == ("done", 1.0, None)
        lora = tmp_path / "store" / "lora" / job["id"]
        assert (lora / "pytorch_lora_weights.safetensors").is_file()
        assert json.loads((lora / "regl_lora.json").read_text())["settings"]["style_token"] == "sks"
        assert api.get("/v1/model").json()["lora"] == job["result"]["lora"]
        after = decode(api.post("/v1/generate", json={"class": "cat", "n": 2, **FAST}).json()["images"])
        assert not np.array_equal(before, after)


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/finetune", {"steps": 5000, "batch_size": 2, "prior_per_class": 1}),
        ("/v1/fill", {"mode": "diffusion", "lora": "client", "lora_steps": 5000, "prior_per_class": 1}),
    ],
)
def test_stopping_service_stops_its_running_job(service_base, client_folder, tmp_path, route, body):
    app = create_app(
        ServiceSettings(
            base=service_base, dataset="fashion-mnist", data=str(client_folder), threads=1, store=tmp_path / "store"
        )
    )
    with TestClient(app) as api:
        job_id = api.post(route, json=body).json()["id"]
        deadline = time.monotonic() + 120
        while "step" not in api.get(f"/v1/jobs/{job_id}").json()["message"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        queued = api.post(route, json=body).json()["id"]
    # the lifespan's end waited for the worker: no thread is left building or training models
    assert not app.state.jobs.worker.is_alive()
    stopped, never_started = app.state.jobs.get(job_id), app.state.jobs.get(queued)
    assert stopped["status"] == "failed" and "stopped the job at" in stopped["error"], stopped
    assert stopped["progress"] < 0.5
    assert never_started["status"] == "failed" and "before the job started" in never_started["error"]


def test_failed_finetune_is_recorded_and_the_service_keeps_serving(service_base, client_folder, tmp_path):
    (tmp_path / "store").write_text("a file where the store folder should be")
    with service(service_base, tmp_path, data=str(client_folder)) as api:
        job = wait_for(api, api.post("/v1/finetune", json={"steps": 2, "batch_size": 2}).json()["id"])
        assert job["status"] == "failed" and "store" in job["error"]
        assert api.post("/v1/generate", json={"class": "cat", **FAST}).status_code == 200
        assert api.get("/v1/model").json()["lora"] is None


def test_fill_plans_makes_and_serves_the_store(api):
    started = api.post(
        "/v1/fill",
        json={
            "mode": "diffusion+noise",
            "mix": "3:1",
            "supplement": 1.0,
            "lora": "none",
            "expect_class_counts": [6, 3, 1],
            **FAST,
        },
    )
    assert started.status_code == 202
    job = wait_for(api, started.json()["id"])
    assert job["status"] == "done", job
    plan = job["result"]["plan"]
    assert plan["total"] == 10 and sum(plan["counts"]["diffusion"]) + sum(plan["counts"]["noise"]) == 10
    npz = api.get(f"/v1/jobs/{job['id']}/images")
    with np.load(io.BytesIO(npz.content)) as arrays:
        assert arrays["x"].shape == (10, 20, 20, 1)
        for source in ("diffusion", "noise"):
            assert np.bincount(arrays["y"][arrays["source"] == source], minlength=3).tolist() == plan["counts"][source]
    # the same request again reuses the store
    again = wait_for(
        api, api.post("/v1/fill", json={"mode": "diffusion+noise", "mix": "3:1", "lora": "none", **FAST}).json()["id"]
    )
    assert again["result"]["timings"] == {"reused": 1} and again["result"]["store"] == job["result"]["store"]


@pytest.mark.parametrize(
    "body, status, word",
    [
        ({"expect_class_counts": [1, 1, 1]}, 409, "other data"),
        ({"target": [1.0, 2.0]}, 422, "target"),
        ({"target": [1.0, -1.0, 1.0]}, 422, "target"),
        ({"mode": "diffusion+noise", "mix": "1:2:3"}, 422, "'mix'"),
        ({"mode": "sketch"}, 422, "'mode'"),
        ({"mode": "none"}, 422, "makes no images"),
        ({"mode": "diffusion+oracle"}, 422, "benchmark arm of regl bench"),
        ({"lora_steps": 6000}, 422, "lora_steps"),
        ({"lora_style_token": "a photo"}, 422, "lora_style_token"),
        ({"supplement": -0.5}, 422, "supplement"),
        ({"target": [0.0, 0.0, 0.0]}, 422, "target"),
        ({"mode": "diffusion+noise", "mix": "0:0"}, 422, "'mix'"),
        ({"mix": " 3"}, 422, "'mix'"),  # plain decimals only, as the document's pattern says
        ({"lora": 1}, 422, "'lora'"),
    ],
)
def test_bad_fill_requests(api, body, status, word):
    response = api.post("/v1/fill", json=body)
    assert response.status_code == status and word in str(response.json()["detail"]), response.json()


def test_routes_that_need_client_data_say_so(service_base, tmp_path):
    with service(service_base, tmp_path, dataset=str(build_client_folder(tmp_path / "names"))) as api:
        assert api.get("/v1/model").json()["data_images"] is None
        for route, body in (("/v1/finetune", {}), ("/v1/fill", {})):
            response = api.post(route, json=body)
            assert response.status_code == 409 and "--data" in response.json()["detail"]
        mixup = api.post("/v1/generate", json={"class": "cat", "source": "mixup"})
        assert mixup.status_code == 409 and "--data" in mixup.json()["detail"]
        assert api.post("/v1/generate", json={"class": "cat", **FAST}).status_code == 200


def test_finetune_steps_over_the_cap(api):
    response = api.post("/v1/finetune", json={"steps": 5001})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "steps"]
    assert api.post("/v1/finetune", json={"activate": 0}).json()["detail"][0]["loc"] == ["body", "activate"]


def test_a_cap_below_the_default_steps_is_the_default(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, data=str(client_folder), max_finetune_steps=3) as api:
        steps = api.get("/openapi.json").json()["components"]["schemas"]["FinetuneRequest"]["properties"]["steps"]
        assert (steps["default"], steps["maximum"]) == (3, 3)
        started = api.post("/v1/finetune", json={"batch_size": 2, "prior_per_class": 1, "activate": False})
        assert started.status_code == 202 and wait_for(api, started.json()["id"])["status"] == "done"
