"""The keys a client's fill is stored under: what its images depend on, hashed; and the seeds of its sources."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from regl.compute import Compute
from regl.errors import ReglError
from regl.fill.settings import FillSettings

ADDED_LATER = ("lora_style_token",)  # FillSettings fields newer than the stores in use


def settings_key(settings: FillSettings) -> dict:
    """The settings in a store's key; a setting added later is left out at its default, so older stores still count.

    Device and dtype are keyed by what they resolve to (`compute_key`), not by name.
    """
    return {
        name: value
        for name, value in asdict(settings).items()
        if not (name in ADDED_LATER and value == getattr(FillSettings(), name)) and name not in ("device", "dtype")
    }


def compute_key(compute: Compute) -> dict:
    """Images and LoRAs made on the CPU in float32 (every store before devices were chosen) carry no key."""
    return {} if compute == Compute("cpu") else {"compute": compute.describe()}


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def source_seed(run_seed: int, client_id: int, source: str) -> int:
    return int(hashlib.sha256(f"{run_seed}/{client_id}/{source}".encode()).hexdigest()[:12], 16)


def check_made_alike(ours: dict, theirs: dict) -> None:
    """Images a service made in another precision or with another LoRA recipe must not land under this key."""
    for part in ("compute", "lora"):
        if ours.get(part) != theirs.get(part):
            raise ReglError(
                f"the fill service made its images with {part} {theirs.get(part) or 'cpu float32'}, this client's "
                f"fill asks for {ours.get(part) or 'cpu float32'}: the service and this client need the same ReGL "
                "version, device and dtype"
            )
