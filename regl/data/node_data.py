"""A federation node's own images, labelled by the run's class list, with a local test split held out.

A SuperNode started with `--node-config "data-dir='...'"` trains, fills and evaluates on what
it holds instead of a cut of a named dataset. Its ClientApp and its `regl serve` both read the
data here, so they hold out the same test images and agree on the class counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from regl.data.datasets import BUILTINS, ImageDataset, load_dataset, read_class_folders
from regl.errors import ReglError

LOCAL_TEST_FRACTION = 0.2
LOCAL_SPLIT_SEED = 0


@dataclass(frozen=True)
class NodeData:
    train: ImageDataset
    test: ImageDataset  # for the node's personalized accuracy; never trained or fine-tuned on


def run_class_names(dataset: str, classes: str) -> tuple[str, ...]:
    """The federation's class list: the run config's comma-separated `classes`, else the dataset's."""
    if classes:
        names = tuple(name.strip() for name in classes.split(","))
        if len(names) < 2 or "" in names or len(set(names)) != len(names):
            raise ReglError(f"classes must name at least two distinct classes, comma-separated; got {classes!r}")
        return names
    if dataset in BUILTINS:
        return BUILTINS[dataset].class_names
    return load_dataset(dataset).class_names


def node_key(dataset: str, data_dir: str) -> str:
    """What names a node's own data in its fill store's keys, beside the dataset whose prompts it uses."""
    return f"{dataset}@{Path(data_dir).resolve()}"


def load_labelled(path: str | Path, class_names: tuple[str, ...]) -> ImageDataset:
    """A folder with one subfolder per class it holds, each named as in `class_names`, or an npz of x and y.

    The npz's `y` indexes `class_names`; a folder may lack classes (a skewed client does),
    but a subfolder naming a class the run does not know is an error.
    """
    path = Path(path)
    if path.suffix == ".npz":
        return _load_npz(path, class_names)
    if not path.is_dir():
        raise ReglError(f"data folder {path} does not exist")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if not class_dirs:
        raise ReglError(f"data folder {path} holds no class subfolders (one per class, named as the run's classes)")
    unknown = [d.name for d in class_dirs if d.name not in class_names]
    if unknown:
        raise ReglError(
            f"data folder {path} has subfolders for classes the run does not know: {', '.join(unknown)}; "
            f"the run's classes: {', '.join(class_names)}"
        )
    x, y = read_class_folders([(class_names.index(d.name), d) for d in class_dirs])
    return ImageDataset(x, y, class_names)


def _load_npz(path: Path, class_names: tuple[str, ...]) -> ImageDataset:
    try:
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise ReglError(f"cannot read {path} as an npz of images x and labels y: {exc}") from exc
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y) or not len(y):
        raise ReglError(f"{path}: x must be uint8 N×H×W(×C) with one label in y per image, got {x.dtype} {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(class_names):
        raise ReglError(f"{path}: y must be class indices in [0, {len(class_names)}) of the run's classes")
    return ImageDataset(x, y.astype(np.int64), class_names)


def local_split(data: ImageDataset, test_fraction: float = LOCAL_TEST_FRACTION) -> NodeData:
    """Stratified: round(n × fraction) images of every class to the test split, at least one kept for training."""
    rng = np.random.default_rng(LOCAL_SPLIT_SEED)
    train, test = [], []
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return NodeData(data.subset(np.sort(np.concatenate(train))), data.subset(np.sort(np.concatenate(test))))


@lru_cache(maxsize=4)
def load_node_data(path: str, class_names: tuple[str, ...]) -> NodeData:
    """The node's data, split once per process; read-only, so no caller changes the cached copy."""
    node = local_split(load_labelled(path, class_names))
    for part in (node.train, node.test):
        part.x.flags.writeable = False
        part.y.flags.writeable = False
    return node
