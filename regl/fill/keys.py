"""The keys a client's fill is stored under: what its images depend on, hashed; and the seeds of its sources
(from regl.seeds, whose version every key carries)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from regl.compute import Compute
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.generate.settings import PADDING, PRIOR_SEED, LoraSettings
from regl.seeds import SEED_DERIVATION, derive_seed

# FillSettings fields newer than the stores in use
ADDED_LATER = (
    "lora_style_token",
    "lora_rank",
    "lora_targets",
    "lora_lr",
    "lora_cfg_dropout",
    "adapter_rounds",
    "adapter_steps",
    "adapter_rule",
    "adapter_dp_noise",
    "adapter_dp_clip",
    "sampler",
    "lora_early_stop",  # reaches a store's key through its LoRA's settings (lora_settings_key)
)
LORA_ADDED_LATER = ("targets", "cfg_dropout")  # LoraSettings fields newer than the LoRAs in use
LORA_WAS = {"client": True, "none": False}  # `lora` was a bool before the federated generator


def settings_key(settings: FillSettings) -> dict:
    """The settings in a store's key; a setting added later is left out at its default, and `lora` keeps its old
    bool form, so a key's settings part reads as before those options existed (every key also carries the seed
    derivation, `seeds_key`, so stores made before it are not reused whatever this part says).

    Device and dtype are keyed by what they resolve to (`compute_key`), not by name.
    """
    return {
        name: LORA_WAS.get(value, value) if name == "lora" else value
        for name, value in asdict(settings).items()
        if not (name in ADDED_LATER and value == getattr(FillSettings(), name)) and name not in ("device", "dtype")
    }


def lora_settings_key(settings: LoraSettings) -> dict:
    """A LoRA's settings in a key, with how its training images were padded (PADDING) and, where it has priors,
    their seed; settings added later are left out at their defaults, so stores made before the choices existed
    (with the same padding and priors) are found again."""
    chosen = {
        name: value
        for name, value in asdict(settings).items()
        if not (name in LORA_ADDED_LATER and value == getattr(LoraSettings(), name))
    }
    priors = {"prior_seed": PRIOR_SEED} if settings.prior_per_class else {}  # shared priors (lora.prior_images)
    return {**chosen, "padding": PADDING, **priors}


def compute_key(compute: Compute) -> dict:
    """Images and LoRAs made on the CPU in float32 (every store before devices were chosen) carry no key."""
    return {} if compute == Compute("cpu") else {"compute": compute.describe()}


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def adapter_digest(adapter: dict[str, np.ndarray]) -> str:
    """A LoRA adapter by content: its tensors' names, shapes, dtypes and bytes."""
    hasher = hashlib.sha256()
    for name in sorted(adapter):
        array = np.ascontiguousarray(adapter[name])
        hasher.update(f"{name}:{array.dtype}:{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()[:16]


def source_seed(run_seed: int, client_id: int, source: str) -> int:
    """The seed of a client's fill source (a shard of its store, or "lora": its LoRA's seed)."""
    return derive_seed(run_seed, f"fill-{source}", client_id)


def seeds_key() -> dict:
    """Which derivation made the seeds (regl.seeds): a store made with other seeds is not this one."""
    return {"seeds": SEED_DERIVATION}


def check_made_alike(ours: dict, theirs: dict) -> None:
    """Images a service made in another precision, with another LoRA recipe, other seeds or from other images
    (of the same class counts) must not land under this key."""
    if "data" in ours and theirs.get("data") != ours["data"]:
        raise ReglError(
            "the fill service made its images from other data than this client's (content digest "
            f"{str(theirs.get('data') or 'none')[:16]}, this client's {ours['data'][:16]}): start the service "
            "with the client's own images (--data, and the run's --classes for a node)"
        )
    if ours.get("look") != theirs.get("look"):
        raise ReglError(
            f"the fill service made its images in look {theirs.get('look') or 'none'}, this client's are in "
            f"{ours.get('look') or 'none'}: start the service with the run's --look"
        )
    if ours.get("seeds") != theirs.get("seeds"):
        raise ReglError(
            f"the fill service made its images with seed derivation {theirs.get('seeds') or 1}, this client's fill "
            f"asks for {ours.get('seeds') or 1}: the service and this client need the same ReGL version"
        )
    for part in ("compute", "lora"):
        if ours.get(part) != theirs.get(part):
            raise ReglError(
                f"the fill service made its images with {part} {theirs.get(part) or 'cpu float32'}, this client's "
                f"fill asks for {ours.get(part) or 'cpu float32'}: the service and this client need the same ReGL "
                "version, device and dtype"
            )
