"""What the service serves: one loaded pipeline, the client's data, and the three image sources.

Loaded once in the app's lifespan. Pipeline calls are serialised by a lock: the batcher's
worker and a fine-tune swapping in its new LoRA never touch the pipeline at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from regl.compute import resolve
from regl.data.datasets import BUILTINS, ImageDataset, class_index, load_dataset
from regl.errors import ReglError
from regl.generate.generator import Generator, image_seed, to_dataset_format
from regl.service.settings import ServiceSettings


def load_client_data(settings: ServiceSettings) -> ImageDataset | None:
    """The client's own images: a folder, a built-in dataset, one client's share of it, or a federation node's
    training split (with `classes`)."""
    if not settings.data:
        return None
    if settings.classes:
        from regl.data.node_data import load_node_data, run_class_names

        return load_node_data(settings.data, run_class_names(settings.dataset, settings.classes)).train
    if settings.client < 0:
        return load_dataset(settings.data)
    if settings.data not in BUILTINS:
        raise ReglError(f"client {settings.client} of a partition needs a built-in dataset, got {settings.data!r}")
    if not 0 <= settings.client < settings.clients:
        raise ReglError(f"client must be in [0, {settings.clients}), got {settings.client}")
    from regl.fl.experiment import ExperimentSettings, client_data

    spec = settings.partition_spec()
    return client_data(
        ExperimentSettings(dataset=settings.data, partition=spec, seed=settings.partition_seed), settings.client
    )


class LocalModel:
    def __init__(self, settings: ServiceSettings) -> None:
        from regl.generate.prompts import template_for

        self.settings = settings
        self.data = load_client_data(settings)
        # what the fill store's keys name the data by, and whose prompt template it takes
        if settings.classes:  # a federation node's own data, prompted as its run's dataset
            from regl.data.node_data import node_key

            self.dataset, prompts_of = node_key(settings.dataset, settings.data), settings.dataset
        else:
            self.dataset = prompts_of = settings.data or settings.dataset
        if self.data is not None:
            self.class_names = self.data.class_names
            self.resolution, self.channels = self.data.resolution, self.data.channels
        elif settings.dataset in BUILTINS:
            self.class_names, self.resolution, self.channels = BUILTINS[settings.dataset].class_names, 28, 1
        else:
            sample = load_dataset(settings.dataset)
            self.class_names, self.resolution, self.channels = sample.class_names, sample.resolution, sample.channels
        self.template = template_for(prompts_of)
        self.lock = threading.Lock()
        self.compute = resolve(settings.device, settings.dtype)
        self.generator = Generator(
            settings.base, self.class_names, self.template, lora=settings.lora, compute=self.compute
        )

    @property
    def lora(self) -> Path | None:
        return self.generator.lora

    def label(self, name_or_index: str | int) -> int:
        return class_index(self.class_names, name_or_index)

    def diffusion(self, labels: list[int], seeds: list[int], steps: int, guidance: float) -> np.ndarray:
        """One pipeline call for any mix of classes.

        Image i depends on (labels[i], seeds[i]) alone, up to one grey level that batched
        float arithmetic may move.
        """
        with self.lock:
            images = self.generator.generate(
                labels, seeds, steps=steps, guidance=guidance, batch_size=self.settings.max_batch
            )
        return to_dataset_format(images, self.resolution, self.channels)

    def noise(self, n: int, seed: int) -> np.ndarray:
        from regl.generate.natural_noise import natural_noise

        return natural_noise(n, seed, self.resolution, self.channels)

    def mixup(self, label: int, n: int, seed: int) -> np.ndarray:
        """DP-LabelHide mixes of this client's own images for `label`."""
        from regl.fill.mixup import MixupSettings, label_hide_mixup

        if self.data is None:
            raise ReglError("mixup mixes the client's own images; start the service with --data")
        if not np.any(self.data.y == label):
            raise ReglError(f"this client holds no images of class {self.class_names[label]!r} to mix")
        mixed, _ = label_hide_mixup(self.data, {label: n}, MixupSettings(), seed=seed)
        return mixed.x

    def use_lora(self, lora: Path) -> None:
        """Swap in a freshly trained LoRA; loaded beside the old pipeline, then switched under the lock."""
        generator = Generator(self.settings.base, self.class_names, self.template, lora=lora, compute=self.compute)
        with self.lock:
            self.generator = generator


def request_seeds(seed: int, n: int) -> list[int]:
    return [image_seed(seed, i) for i in range(n)]
