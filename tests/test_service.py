"""The service's routes through TestClient: generation, errors, token, limits, the document."""

import io
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from service_fixtures import CLASSES, FAST, decode, service

from regl.environment import cpu
from regl.errors import ReglError
from regl.service.settings import ServiceSettings


def test_healthz_and_model(api, service_base):
    assert api.get("/healthz").json() == {"status": "ok"}
    info = api.get("/v1/model").json()
    assert info["classes"] == list(CLASSES) and info["lora"] is None
    assert (info["resolution"], info["channels"], info["device"], info["data_images"]) == (20, 1, "cpu", 10)
    assert info["base"] == str(service_base) and len(info["base_fingerprint"]) == 16
    bf16 = {"avx512_bf16", "amx_bf16"} & set(cpu()["isa_flags"])
    assert info["dtype"] == ("float32, bfloat16 autocast" if bf16 else "float32")  # auto on this CPU


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


@pytest.mark.slow
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
