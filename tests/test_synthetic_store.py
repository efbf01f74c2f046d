import json
import shutil

import numpy as np
import pytest

from regl.data.datasets import ImageDataset
from regl.fill import store as synthetic_store
from regl.fill.store import MANIFEST, SyntheticStore

NAMES = ("a", "b", "c")
KEY = {"plan": {"diffusion": [0, 2, 3]}, "dataset": "mnist-10k", "base": "abc123", "lora": None, "steps": 20}


def _images(labels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (len(labels), 5, 5, 1), dtype=np.uint8)
    return ImageDataset(x, np.asarray(labels, dtype=np.int64), NAMES)


SHARDS = {"diffusion": _images([1, 1, 2, 2, 2], 0), "noise": _images([2], 1), "mixup": _images([], 2)}
SEEDS = {"diffusion": 11, "noise": 12, "mixup": 13}


def _assert_same(a, b):
    assert np.array_equal(a.x, b.x) and a.x.shape == b.x.shape
    assert np.array_equal(a.y, b.y) and a.y.dtype == b.y.dtype == np.int64
    assert a.class_names == b.class_names


@pytest.fixture
def store(tmp_path):
    return SyntheticStore(tmp_path / "clients" / "client-0")


def test_round_trip(store):
    written = store.write(KEY, SHARDS, SEEDS, NAMES)
    assert len(written) == 6
    _assert_same(store.load(dict(KEY)), written)
    manifest = json.loads((store.folder / MANIFEST).read_text())
    assert [(s["source"], s["counts"], s["seed"]) for s in manifest["shards"]] == [
        ("diffusion", [0, 2, 3], 11),
        ("noise", [0, 0, 1], 12),
        ("mixup", [0, 0, 0], 13),
    ]


def test_other_key_is_not_reused(store):
    store.write(KEY, SHARDS, SEEDS, NAMES)
    assert store.load({**KEY, "lora": "def456"}) is None
    assert store.load({k: v for k, v in KEY.items() if k != "steps"}) is None


def test_corrupted_shard_is_not_reused(store):
    store.write(KEY, SHARDS, SEEDS, NAMES)
    shard = store.folder / "diffusion.npz"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert store.load(KEY) is None


def test_missing_shard_is_not_reused(store):
    store.write(KEY, SHARDS, SEEDS, NAMES)
    (store.folder / "noise.npz").unlink()
    assert store.load(KEY) is None


def test_incomplete_folders_are_not_read(store):
    store.write(KEY, SHARDS, SEEDS, NAMES)
    leftover = store.folder.with_name(store.folder.name + ".tmp-abc")
    shutil.copytree(store.folder, leftover)
    shutil.rmtree(store.folder)
    assert store.load(KEY) is None  # a complete copy in a temp folder is not the store
    shutil.copytree(leftover, store.folder)
    (store.folder / MANIFEST).unlink()
    assert store.load(KEY) is None


def test_crash_mid_write_keeps_the_previous_store(store, monkeypatch):
    old = store.write(KEY, SHARDS, SEEDS, NAMES)
    real_save = synthetic_store._save_shard
    saved = []

    def crash_after_first(path, data):
        if saved:
            raise OSError("disk full")
        saved.append(path)
        real_save(path, data)

    monkeypatch.setattr(synthetic_store, "_save_shard", crash_after_first)
    new_key = {**KEY, "steps": 50}
    with pytest.raises(OSError, match="disk full"):
        store.write(
            new_key, {"diffusion": _images([0, 1], 5), "noise": _images([2], 6)}, {"diffusion": 1, "noise": 2}, NAMES
        )
    assert saved
    _assert_same(store.load(KEY), old)
    assert store.load(new_key) is None
    assert [p.name for p in store.folder.parent.iterdir()] == [store.folder.name]  # the half store is gone


def test_rewrite_replaces_the_store(store):
    store.write(KEY, SHARDS, SEEDS, NAMES)
    new_key = {**KEY, "steps": 50}
    written = store.write(new_key, {"noise": _images([0, 0], 7)}, {"noise": 3}, NAMES)
    assert store.load(KEY) is None
    _assert_same(store.load(new_key), written)
    assert sorted(p.name for p in store.folder.iterdir()) == [MANIFEST, "noise.npz"]
    assert [p.name for p in store.folder.parent.iterdir()] == [store.folder.name]


def test_empty_store_round_trip(store):
    written = store.write(KEY, {}, {}, NAMES)
    assert written.x.shape == (0, 0, 0, 0) and len(written) == 0
    loaded = store.load(KEY)
    assert loaded is not None
    _assert_same(loaded, written)


def test_store_of_empty_shards_keeps_the_image_shape(store):
    written = store.write(
        KEY, {"diffusion": _images([], 0), "noise": _images([], 1)}, {"diffusion": 0, "noise": 0}, NAMES
    )
    assert written.x.shape == (0, 5, 5, 1)
    _assert_same(store.load(KEY), written)


def test_bad_shards_are_refused(store):
    with pytest.raises(ValueError, match="unknown"):
        store.write(KEY, {"gan": _images([0], 0)}, {"gan": 0}, NAMES)
    with pytest.raises(ValueError, match="seeds"):
        store.write(KEY, {"noise": _images([0], 0)}, {}, NAMES)
    with pytest.raises(ValueError, match="class names"):
        store.write(KEY, {"noise": _images([0], 0)}, {"noise": 0}, ("x", "y", "z"))
    wide = ImageDataset(np.zeros((1, 6, 6, 1), np.uint8), np.zeros(1, np.int64), NAMES)
    with pytest.raises(ValueError, match="image shape"):
        store.write(KEY, {"noise": _images([0], 0), "mixup": wide}, {"noise": 0, "mixup": 0}, NAMES)
    assert not store.folder.parent.exists() or not any(store.folder.parent.iterdir())
