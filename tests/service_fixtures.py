"""A tiny random SD base and a skewed 3-class client folder, for the service tests."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from regl.service.app import create_app
from regl.service.settings import ServiceSettings

CLASSES = ("cat", "dog", "owl")


def build_base(folder: Path) -> Path:
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    pipe = build_pipeline(TEST_SD, prompt_words(class_prompts(CLASSES, "a photo of a {}")), folder / "work", seed=0)
    pipe.save_pretrained(folder / "model")
    return folder / "model"


def build_client_folder(root: Path, per_class: tuple[int, ...] = (6, 3, 1)) -> Path:
    """20×20 grayscale PNGs, a skewed client: 6 cats, 3 dogs, 1 owl."""
    rng = np.random.default_rng(0)
    for name, count in zip(CLASSES, per_class):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


FAST = {"steps": 2, "guidance": 2.0}  # the cheapest sampling a test can ask for


def service(service_base: Path, tmp_path: Path, **overrides) -> TestClient:
    """An in-process client of a service on the tiny base; `overrides` are ServiceSettings fields."""
    settings = {
        "base": service_base,
        "dataset": str(overrides.pop("dataset", "fashion-mnist")),
        "threads": 1,
        "store": tmp_path / "store",
        **overrides,
    }
    return TestClient(create_app(ServiceSettings(**settings)))


def wait_for(client: TestClient, job_id: str, headers=None) -> dict:
    """The job's record once it is done or failed (at most 5 minutes)."""
    deadline = time.monotonic() + 300
    while (job := client.get(f"/v1/jobs/{job_id}", headers=headers).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def decode(images: list[str]) -> np.ndarray:
    """Base64 PNGs of a JSON response as one array."""
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in images])
