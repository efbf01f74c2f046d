"""A client's share of the federated generator: a few LoRA steps from the federation's adapter, on its own images.

The server (regl/fl/adapter_aggregation.py) averages what the clients send back; round after
round the adapter learns every class in the federation's look although no client holds more
than a few classes and no image leaves its client. Only the adapter's arrays travel.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regl.compute import Compute
from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate.generator import ADAPTER, LORA_METADATA, Generator, base_fingerprint
from regl.generate.lora import LoraTraining, add_adapter, lora_config, start_training
from regl.generate.settings import LoraSettings

Adapter = dict[str, np.ndarray]


def adapter_arrays(generator: Generator) -> Adapter:
    """The adapter's tensors as peft names them (`...to_q.lora_A.weight`), float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(generator.pipe.unet, adapter_name=ADAPTER)
    return {name: value.detach().float().cpu().numpy() for name, value in state.items()}


def load_adapter(generator: Generator, adapter: Adapter) -> None:
    from peft.utils import set_peft_model_state_dict

    state = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in adapter.items()}
    set_peft_model_state_dict(generator.pipe.unet, state, adapter_name=ADAPTER)


def initial_adapter(base: Path, class_names: tuple[str, ...], template: str, settings: LoraSettings) -> Adapter:
    """The adapter every client starts round 1 from: peft's initialisation (B = 0) at the settings' seed."""
    generator = Generator(base, class_names, template, compute=Compute("cpu"))
    add_adapter(generator.pipe.unet, settings)
    return adapter_arrays(generator)


def check_adapter(adapter: Adapter, base: Path, settings: LoraSettings) -> None:
    """Raise, naming what is wrong, unless the adapter has exactly the arrays and shapes of a LoRA of the settings'
    rank and layers on the base, in finite floats: peft loads a partial adapter without a word, and trains from it.

    The layout comes from the UNet's config on the meta device (no weights read or allocated), in this thread
    only: a pipeline another thread loads meanwhile is not touched."""
    from diffusers import UNet2DConditionModel
    from peft.utils import get_peft_model_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(base) / "unet"))
        unet.add_adapter(lora_config(settings), adapter_name=ADAPTER)
    layout = {name: tuple(value.shape) for name, value in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}
    missing, unexpected = sorted(set(layout) - set(adapter)), sorted(set(adapter) - set(layout))
    if missing or unexpected:
        raise ReglError(
            f"the adapter is not a rank-{settings.rank} LoRA of the {settings.targets} layers of this base: "
            f"{len(missing)} of its {len(layout)} arrays missing{_examples(missing)}, "
            f"{len(unexpected)} unexpected{_examples(unexpected)}"
        )
    for name, shape in layout.items():
        value = adapter[name]
        if value.shape != shape:
            raise ReglError(
                f"the adapter's {name} has shape {value.shape}; a rank-{settings.rank} LoRA of this base has {shape}"
            )
        if value.dtype.kind != "f":
            raise ReglError(f"the adapter's {name} must be floats, got {value.dtype}")
        if not np.isfinite(value).all():
            raise ReglError(f"the adapter's {name} holds non-finite values")


def _examples(names: list[str]) -> str:
    return f" (e.g. {', '.join(names[:2])})" if names else ""


def client_training(
    base: Path,
    data: ImageDataset,
    class_names: tuple[str, ...],
    template: str,
    settings: LoraSettings,
    compute: Compute,
    train_a: bool = True,
) -> LoraTraining:
    """A client's cached latents and prompts for its rounds: its own images only (no priors: the other clients
    hold the classes it lacks)."""
    generator = Generator(base, class_names, template, compute=compute)
    return start_training(generator, data, replace(settings, prior_per_class=0), compute, train_a=train_a)


def local_round(
    training: LoraTraining, adapter: Adapter, steps: int, seed: int, on_step: Callable[[int], None] | None = None
) -> tuple[Adapter, float]:
    """`steps` steps from the federation's adapter, with a fresh optimiser; the trained adapter and the last loss.
    `on_step(step)` after each step (a service's job reports progress and stops there)."""
    load_adapter(training.generator, adapter)
    params = [p for p in training.generator.pipe.unet.parameters() if p.requires_grad]
    training.optimizer = torch.optim.AdamW(params, lr=training.settings.lr)
    training.rng = torch.Generator().manual_seed(seed)
    training.steps(0, steps, on_step=on_step)
    return adapter_arrays(training.generator), training.losses[-1]


def save_adapter(adapter: Adapter, base: Path, out: Path, metadata: dict) -> None:
    """The adapter in diffusers' LoRA format, loadable with a stock `pipe.load_lora_weights(out)`.

    Written to a folder of this process's own, then renamed into place; clients sharing a store
    may save the same adapter at once, and the first rename wins (the content is the same).
    """
    from diffusers import StableDiffusionPipeline

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    layers = {name: torch.from_numpy(value) for name, value in adapter.items()}  # peft's names, as diffusers loads
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    meta = {**metadata, "base": str(base), "base_fingerprint": base_fingerprint(base)}
    (tmp / LORA_METADATA).write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another client saved it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / LORA_METADATA).is_file():
            raise
