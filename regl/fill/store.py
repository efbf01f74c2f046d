"""A client's synthetic images on disk, reused only when they are exactly what is asked for.

The store folder holds one `<source>.npz` shard per source (x uint8 N×H×W×C, y int64)
and `manifest.json`: the caller's key (everything that determines the content: plan,
dataset, base-model and LoRA hashes, generator settings), the class names, and per
shard its source, per-class counts, seed and sha256. A write builds a fresh sibling
folder, manifest last, and swaps it in, so a crash never leaves a folder that reads as
complete; the store owns its folder and replaces it whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from regl.atomic import write_json_atomically
from regl.data.datasets import ImageDataset
from regl.fill.plan import SOURCES

MANIFEST = "manifest.json"


class SyntheticStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def load(self, key: dict) -> ImageDataset | None:
        """The stored images when the folder holds a complete store for exactly this key, else None."""
        read = self._read(key)
        if read is None:
            return None
        shards, class_names = read
        return _concatenated([d.x for d in shards.values()], [d.y for d in shards.values()], class_names)

    def load_shards(self, key: dict) -> dict[str, ImageDataset] | None:
        """Source → its images, when the store is complete and for exactly this key; else None."""
        read = self._read(key)
        return None if read is None else read[0]

    def _read(self, key: dict) -> tuple[dict[str, ImageDataset], tuple[str, ...]] | None:
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != _as_json(key):
            return None
        class_names = tuple(manifest["class_names"])
        shards = {}
        for shard in manifest["shards"]:
            try:
                blob = (self.folder / shard["file"]).read_bytes()
            except OSError:
                return None
            if hashlib.sha256(blob).hexdigest() != shard["sha256"]:
                return None
            with np.load(io.BytesIO(blob)) as arrays:
                shards[shard["source"]] = ImageDataset(arrays["x"], arrays["y"].astype(np.int64), class_names)
        return shards, class_names

    def write(
        self, key: dict, shards: dict[str, ImageDataset], seeds: dict[str, int], class_names: tuple[str, ...]
    ) -> ImageDataset:
        """Store one shard per source and return them all concatenated, in the order given.

        `seeds` gives the seed each shard was made with. `shards` may be empty (an empty
        plan); such a store holds no images and no image size: x is 0×0×0×0.
        """
        _check_shards(shards, seeds, class_names)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=self.folder.name + ".tmp-"))
        try:
            entries = []
            for source, data in shards.items():
                path = staging / f"{source}.npz"
                _save_shard(path, data)
                entries.append(
                    {
                        "source": source,
                        "file": path.name,
                        "counts": data.class_counts().tolist(),
                        "seed": seeds[source],
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    }
                )
            manifest = {"key": key, "class_names": list(class_names), "shards": entries}
            write_json_atomically(staging / MANIFEST, manifest)
            self._swap_in(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _concatenated([d.x for d in shards.values()], [d.y for d in shards.values()], class_names)

    def _swap_in(self, staging: Path) -> None:
        """Move the old store aside, rename the new one in, then delete the old one."""
        old = staging.with_name(staging.name.replace(".tmp-", ".old-", 1))
        if self.folder.exists():
            os.rename(self.folder, old)
        os.rename(staging, self.folder)
        shutil.rmtree(old, ignore_errors=True)


def _save_shard(path: Path, data: ImageDataset) -> None:
    np.savez(path, x=data.x, y=data.y.astype(np.int64))


def _as_json(value: dict) -> dict:
    """The key as it reads back from the manifest (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _concatenated(xs: list[np.ndarray], ys: list[np.ndarray], class_names: tuple[str, ...]) -> ImageDataset:
    if not xs:
        return ImageDataset(np.empty((0, 0, 0, 0), np.uint8), np.empty(0, np.int64), class_names)
    return ImageDataset(np.concatenate(xs), np.concatenate(ys).astype(np.int64), class_names)


def _check_shards(shards: dict[str, ImageDataset], seeds: dict[str, int], class_names: tuple[str, ...]) -> None:
    if set(shards) - set(SOURCES):
        raise ValueError(f"unknown shard sources {sorted(set(shards) - set(SOURCES))}; use {SOURCES}")
    if set(seeds) != set(shards):
        raise ValueError(f"seeds for {sorted(seeds)} but shards for {sorted(shards)}")
    shapes = {data.x.shape[1:] for data in shards.values()}
    if len(shapes) > 1:
        raise ValueError(f"shards differ in image shape: {sorted(shapes)}")
    for source, data in shards.items():
        if data.class_names != tuple(class_names):
            raise ValueError(f"shard {source!r} has other class names than the store")
