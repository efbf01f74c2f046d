"""A client's local update made by its node's warm `regl serve` (node-config key `train-service`).

Flower 1.41 starts a fresh ClientApp process for every message, and importing torch there
costs more than a small model's whole round; the node's service has torch, the data and the
model code loaded already. The ClientApp then only moves arrays: torch-free, like this module.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np

from regl.errors import ReglError


def pack_arrays(arrays: dict[str, np.ndarray]) -> str:
    """Named arrays as base64 npz text (a JSON field); names and order survive."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{i:04d}": a for i, a in enumerate(arrays.values())}, names=np.array(list(arrays)))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unpack_arrays(text: str) -> dict[str, np.ndarray]:
    """Inverse of pack_arrays; anything else is a ValueError."""
    try:
        with np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False) as npz:
            names = [str(n) for n in npz["names"]]
            return {name: npz[f"{i:04d}"] for i, name in enumerate(names)}
    except (OSError, EOFError, KeyError, ValueError, TypeError) as exc:  # EOFError: empty or cut off
        raise ValueError(f"not a packed set of arrays: {exc!r}") from exc


def remote_update(
    url: str,
    config: dict[str, Any],
    client_id: int,
    data_dir: str,
    weights: dict[str, np.ndarray],
    timeout_s: float = 3600.0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """POST /v1/train on the node's service: the run config as the server sent it, the global weights."""
    import httpx

    headers = {"Authorization": f"Bearer {os.environ['REGL_TOKEN']}"} if os.environ.get("REGL_TOKEN") else {}
    body = {"config": config, "client": client_id, "data_dir": data_dir, "weights": pack_arrays(weights)}
    try:
        response = httpx.post(f"{url.rstrip('/')}/v1/train", json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ReglError(f"cannot reach the training service at {url}: {exc}") from exc
    if response.status_code != 200:
        raise ReglError(f"the training service at {url} answered {response.status_code}: {response.text[:500]}")
    reply = response.json()
    return unpack_arrays(reply["weights"]), reply["metrics"]
