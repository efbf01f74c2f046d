"""A tiny random SD base, a 3-class client folder, and a uvicorn server in a thread, for the service tests."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "owl")


def build_base(folder: Path) -> Path:
    from regl.prompts import class_prompts, prompt_words
    from regl.tiny_sd import TEST_SD, build_pipeline

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """Real uvicorn on a free loopback port, in this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
