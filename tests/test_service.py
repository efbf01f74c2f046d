"""The local generation service through FastAPI's TestClient: every route and every error."""

import base64
import io
import threading
import time
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_fixtures import CLASSES, build_client_folder

from regl.errors import ReglError
from service.app import create_app
from service.settings import ServiceSettings

FAST = {"steps": 2, "guidance": 2.0}


def service(service_base, tmp_path, **overrides) -> TestClient:
    settings = {
        "base": service_base,
        "dataset": str(overrides.pop("dataset", "fashion-mnist")),
        "threads": 1,
        "store": tmp_path / "store",
        **overrides,
    }
    return TestClient(create_app(ServiceSettings(**settings)))


@pytest.fixture(scope="module")
def api(service_base, client_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("svc")
    with service(service_base, folder, data=str(client_folder), max_images_per_request=8) as client:
        yield client


def wait_for(client: TestClient, job_id: str, headers=None) -> dict:
    deadline = time.monotonic() + 300
    while (job := client.get(f"/v1/jobs/{job_id}", headers=headers).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def decode(images: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in images])


def test_healthz_and_model(api, service_base):
    assert api.get("/healthz").json() == {"status": "ok"}
    info = api.get("/v1/model").json()
    assert info["classes"] == list(CLASSES) and info["lora"] is None
    assert (info["resolution"], info["channels"], info["device"], info["data_images"]) == (20, 1, "cpu", 10)
    assert info["base"] == str(service_base) and len(info["base_fingerprint"]) == 16


def test_generate_json_by_name_and_index_reproducible_per_seed(api):
    a = api.post("/v1/generate", json={"class": "dog", "n": 3, "seed": 5, **FAST})
    assert a.status_code == 200
    body = a.json()
    assert (body["class"], body["label"], body["n"], body["source"]) == ("dog", 1, 3, "diffusion")
    images = decode(body["images"])
    assert images.shape == (3, 20, 20) and images.dtype == np.uint8
    again = decode(api.post("/v1/generate", json={"class": 1, "n": 3, "seed": 5, **FAST}).json()["images"])
    other = decode(api.post("/v1/generate", json={"class": 1, "n": 3, "seed": 6, **FAST}).json()["images"])
    assert np.array_equal(images, again) and not np.array_equal(images, other)


def test_generate_zip_and_npz_bodies(api):
    zipped = api.post("/v1/generate", json={"class": "owl", "n": 2, **FAST}, headers={"Accept": "application/zip"})
    assert zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.namelist() == ["owl_00000.png", "owl_00001.png"]
    npz = api.post("/v1/generate", json={"class": "owl", "n": 2, **FAST}, headers={"Accept": "application/x-npz"})
    with np.load(io.BytesIO(npz.content)) as arrays:
        assert arrays["x"].shape == (2, 20, 20, 1) and arrays["y"].tolist() == [2, 2]
    json_body = api.post("/v1/generate", json={"class": "owl", "n": 2, **FAST})
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:  # the same images in either body
        first = np.asarray(Image.open(archive.open("owl_00000.png")))
    assert np.array_equal(first, decode(json_body.json()["images"])[0])


def test_noise_and_mixup_sources(api):
    noise = api.post("/v1/generate", json={"class": "cat", "n": 4, "seed": 1, "source": "noise"}).json()
    images = decode(noise["images"])
    assert images.shape == (4, 20, 20) and images.std() > 10 and noise["source"] == "noise"
    mixed = api.post("/v1/generate", json={"class": "owl", "n": 2, "seed": 1, "source": "mixup"})
    assert mixed.status_code == 200 and decode(mixed.json()["images"]).shape == (2, 20, 20)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"class": "zebra"}, "class"),
        ({"class": 7}, "class"),
        ({"class": "cat", "n": 9}, "n"),  # over this service's max_images_per_request
        ({"class": "cat", "n": 0}, "n"),
        ({"class": "cat", "n": 10**9}, "n"),
        ({"class": "cat", "steps": 0}, "steps"),
        ({"class": "cat", "guidance": -1}, "guidance"),
        ({"class": "cat", "seed": -1}, "seed"),
        ({"class": "cat", "source": "gan"}, "source"),
        ({"class": "cat", "colour": "red"}, "colour"),
        ({"n": 2}, "class"),
        ({"class": "²"}, "class"),  # a digit to isdigit(), not a decimal index
        ({"class": True}, "class"),
        ({"class": "x" * 201}, "class"),
        ({"class": "cat", "n": True}, "n"),  # JSON types: a boolean is no number, "2" no integer
        ({"class": "cat", "n": "2"}, "n"),
        ({"class": "cat", "guidance": False}, "guidance"),
    ],
)
def test_bad_generate_requests_name_the_field(api, body, field):
    response = api.post("/v1/generate", json=body)
    assert response.status_code == 422
    assert any(field in map(str, error["loc"]) for error in response.json()["detail"]), response.json()


def test_malformed_json_is_422_and_the_server_keeps_serving(api):
    response = api.post("/v1/generate", content=b'{"class": "cat", "n": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    assert api.post("/v1/generate", json={"class": "cat", **FAST}).status_code == 200


def test_a_body_that_is_not_utf8_is_the_documented_400(api):
    response = api.post("/v1/generate", content=b'{"class": "\xff"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "400" in api.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]["responses"]


def test_integral_floats_are_integers(api):
    """JSON Schema counts 1.0 as an integer, so the service does too."""
    body = api.post("/v1/generate", json={"class": 1.0, "n": 2.0, "seed": 3.0, **FAST}).json()
    assert (body["label"], body["n"], body["seed"]) == (1, 2, 3)


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


def test_finetune_job_reports_progress_and_activates_its_lora(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, data=str(client_folder)) as api:
        before = decode(api.post("/v1/generate", json={"class": "cat", "n": 2, **FAST}).json()["images"])
        started = api.post("/v1/finetune", json={"steps": 4, "batch_size": 2, "prior_per_class": 1, "lr": 0.05})
        assert started.status_code == 202 and started.json()["kind"] == "finetune"
        job = wait_for(api, started.json()["id"])
        assert (job["status"], job["progress"], job["error"]) == ("done", 1.0, None)
        assert (tmp_path / "store" / "lora" / job["id"] / "pytorch_lora_weights.safetensors").is_file()
        assert api.get("/v1/model").json()["lora"] == job["result"]["lora"]
        after = decode(api.post("/v1/generate", json={"class": "cat", "n": 2, **FAST}).json()["images"])
        assert not np.array_equal(before, after)


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/finetune", {"steps": 5000, "batch_size": 2, "prior_per_class": 1}),
        ("/v1/fill", {"mode": "diffusion", "lora": True, "lora_steps": 5000, "prior_per_class": 1}),
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
            "lora": False,
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
        api, api.post("/v1/fill", json={"mode": "diffusion+noise", "mix": "3:1", "lora": False, **FAST}).json()["id"]
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
        ({"lora_steps": 6000}, 422, "lora_steps"),
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


def test_token_is_required_by_the_api_not_by_the_page_or_healthz(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, dataset=client_folder, token="s3cret") as api:
        assert api.get("/healthz").status_code == 200
        for method, route in (
            ("get", "/v1/model"),
            ("post", "/v1/generate"),
            ("post", "/v1/finetune"),
            ("post", "/v1/fill"),
            ("get", "/v1/jobs"),
            ("get", "/v1/jobs/x"),
            ("get", "/v1/jobs/x/images"),
        ):
            assert getattr(api, method)(route).status_code == 401
            wrong = getattr(api, method)(route, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert api.get("/docs").status_code == 404 and api.get("/openapi.json").status_code == 404
        page = api.get("/")  # the page holds no data: it asks for the token and sends it to the API
        assert page.status_code == 200 and "s3cret" not in page.text
        paths = api.app.openapi()["paths"]  # what the operator has: the API asks for the bearer token
        assert paths["/v1/model"]["get"]["security"] == [{"HTTPBearer": []}]
        assert "401" in paths["/v1/generate"]["post"]["responses"]
        assert "security" not in paths["/healthz"]["get"] and "security" not in paths["/"]["get"]
        good = {"Authorization": "Bearer s3cret"}
        assert api.get("/v1/model", headers=good).status_code == 200
        assert api.post("/v1/generate", json={"class": "cat", **FAST}, headers=good).status_code == 200


def test_an_empty_token_means_no_token(monkeypatch):
    monkeypatch.setenv("REGL_TOKEN", "")
    assert ServiceSettings().token is None


def test_non_loopback_host_needs_a_token():
    with pytest.raises(ReglError, match="without a token"):
        ServiceSettings(host="0.0.0.0").check_exposure()
    ServiceSettings(host="0.0.0.0", token="t").check_exposure()
    ServiceSettings(host="::1").check_exposure()
    ServiceSettings(host="localhost").check_exposure()


def test_full_queue_answers_429_with_retry_after(service_base, client_folder, tmp_path):
    """One request waits in a long batching window; with room for one, the next is refused."""
    with service(service_base, tmp_path, dataset=client_folder, max_queue=1, batch_wait_ms=3000) as api:
        first: dict = {}
        waiting = threading.Thread(
            target=lambda: first.update(response=api.post("/v1/generate", json={"class": "cat", **FAST}))
        )
        waiting.start()
        time.sleep(1.0)
        refused = api.post("/v1/generate", json={"class": "dog", **FAST})
        waiting.join()
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert first["response"].status_code == 200


def test_request_timeout_answers_504(service_base, client_folder, tmp_path):
    with service(service_base, tmp_path, dataset=client_folder, request_timeout_s=0.2, batch_wait_ms=2000) as api:
        response = api.post("/v1/generate", json={"class": "cat", **FAST})
        assert response.status_code == 504 and "0.2" in response.json()["detail"]
        assert api.get("/healthz").status_code == 200


def test_openapi_document_has_examples_and_this_services_limits(api):
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    routes = {
        "/",
        "/healthz",
        "/v1/model",
        "/v1/generate",
        "/v1/finetune",
        "/v1/fill",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/images",
    }
    assert routes <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    generate = schemas["GenerateRequest"]
    assert generate["examples"][0]["class"] == 0  # fits any service
    assert generate["properties"]["n"]["maximum"] == 8  # this service's max_images_per_request
    assert {"type": "string", "enum": list(CLASSES)} in generate["properties"]["class"]["anyOf"]
    assert generate["properties"]["seed"]["maximum"] == 2**63 - 1
    steps = schemas["FinetuneRequest"]["properties"]["steps"]
    assert (steps["default"], steps["maximum"]) == (300, 5000)
    target = schemas["FillRequest"]["properties"]["target"]["anyOf"][0]
    assert target["minItems"] == target["maxItems"] == len(CLASSES)
    # no token: no security scheme, no 401
    assert "securitySchemes" not in spec["components"]
    assert all(
        "security" not in op and "401" not in op["responses"] for path in spec["paths"].values() for op in path.values()
    )


def test_the_page_is_served_with_a_strict_content_security_policy(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page.text and "default-src 'none'" in policy
    assert nonce not in api.get("/").text  # a fresh one each time
