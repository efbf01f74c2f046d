"""A server-side warm start: the initial global model trained on balanced data before round 1.

`--init synthetic` is the recipe of Federated Generative Learning (Zhang et al. 2023): the
server generates N images of every class from the class prompts with the *base* model (no
client data involved) and trains the global model on them, so FedAvg starts from a model
that already knows every class; the images are kept in a synthetic store beside the
clients' and reused by any later run with the same key. `--init public` is transfer
learning from the public pool instead: N real images of every class, which needs public
data the synthetic start does not.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regl.data.datasets import ImageDataset, load_split
from regl.fill.keys import compute_key, seeds_key
from regl.fill.store import SyntheticStore
from regl.fl.progress import Write, count_progress
from regl.fl.settings import ExperimentSettings
from regl.generate.settings import TORCH_THREADS
from regl.seeds import derive_seed
from regl.train.loop import train

SOURCE = "diffusion"


def warm_start_key(settings: ExperimentSettings) -> dict:
    """Everything that decides the warm-start images."""
    from regl.generate.generator import base_fingerprint

    return {
        "warm_start": settings.warm_start_per_class,
        "dataset": settings.dataset,
        "seed": settings.seed,
        **seeds_key(),
        **settings.fill.sampling_key(),
        "base": base_fingerprint(settings.fill.base_folder()),
        **compute_key(settings.fill.compute()),
    }


def warm_start_data(settings: ExperimentSettings, write: Write) -> tuple[ImageDataset, float]:
    """N base-generated images of every class (from the store when made before); and the seconds spent."""
    from regl.generate.generator import Generator, image_seed, to_dataset_format
    from regl.generate.prompts import template_for

    key = warm_start_key(settings)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    store = SyntheticStore(Path(settings.fill.store) / f"server-warm-start-{digest}")
    if (stored := store.load(key)) is not None:
        return stored, 0.0
    started = time.perf_counter()
    like = load_split(settings.dataset).test
    generator = Generator(
        settings.fill.base_folder(), like.class_names, template_for(settings.dataset), compute=settings.fill.compute()
    )
    labels = [c for c in range(like.num_classes) for _ in range(settings.warm_start_per_class)]
    seed = derive_seed(settings.seed, "warm-start-images")
    images = generator.generate(
        labels,
        [image_seed(seed, i) for i in range(len(labels))],
        **settings.fill.sampling(),
        on_batch=count_progress("warm start", "images", len(labels), write),
    )
    made = ImageDataset(
        to_dataset_format(images, like.resolution, like.channels), np.asarray(labels, np.int64), like.class_names
    )
    stored = store.write(key, {SOURCE: made}, {SOURCE: seed}, like.class_names)
    return stored, time.perf_counter() - started


def public_data(settings: ExperimentSettings) -> ImageDataset:
    """N images of every class from the public pool (all it holds of a class with fewer), drawn with the seed."""
    pool = load_split(settings.dataset).public
    rng = np.random.default_rng(derive_seed(settings.seed, "warm-start-public"))
    picks = []
    for c in range(pool.num_classes):
        indices = np.flatnonzero(pool.y == c)
        picks.append(rng.choice(indices, size=min(settings.warm_start_per_class, len(indices)), replace=False))
    return pool.subset(np.sort(np.concatenate(picks)))


def warm_start(settings: ExperimentSettings, model: torch.nn.Module, write: Write) -> dict[str, float]:
    """Train `model` in place on the warm-start images; returns the generate and train seconds.

    The clients are idle until round 1, so this takes the machine's cores, not the server's one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        if settings.init == "public":
            data, generate_seconds = public_data(settings), 0.0
        else:
            data, generate_seconds = warm_start_data(settings, write)
        started = time.perf_counter()
        warm = replace(settings.train, epochs=settings.warm_start_epochs)
        train(model, data, warm, seed=derive_seed(settings.seed, "warm-start-train"))
        return {"generate_seconds": generate_seconds, "train_seconds": time.perf_counter() - started}
    finally:
        torch.set_num_threads(threads)
