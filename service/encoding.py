"""Images on the wire: base64 PNGs in JSON, or a zip of PNGs, or an npz, as the caller asks."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
from PIL import Image

JSON = "application/json"
ZIP = "application/zip"
NPZ = "application/x-npz"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def base64_pngs(images: np.ndarray) -> list[str]:
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]


def zip_of_pngs(images: np.ndarray, prefix: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i, image in enumerate(images):
            archive.writestr(f"{prefix}_{i:05d}.png", png_bytes(image))
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def wanted_format(accept: str | None) -> str:
    """The first of JSON, ZIP and NPZ that the Accept header names; JSON when it names none."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in (JSON, ZIP, NPZ):
            return media
    return JSON
