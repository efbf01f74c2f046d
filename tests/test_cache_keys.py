"""Fill stores, LoRAs and base images of a folder's or a node's images are keyed by what the images are, not where.

Replacing the images in the same folder (same class counts) must not reuse the old fill or LoRA;
unchanged images must. A built-in dataset's keys stay what they were (tests/test_domain_runs.py).
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regl.data import datasets, node_data
from regl.data.datasets import ImageDataset
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.client import ClientFill, with_fill
from regl.fill.keys import check_made_alike
from regl.fill.settings import FillSettings, client_plan
from regl.fl import experiment
from regl.fl.experiment import client_data, client_fill, prepare_fill, training_data
from regl.fl.settings import ExperimentSettings
from tests.service_fixtures import CLASSES, service, wait_for

PER_CLASS = (6, 3, 2)  # a node's local split keeps 5, 2 and 2 for training


def write_images(root: Path, seed: int, per_class: tuple[int, ...] = PER_CLASS) -> Path:
    """20×20 grayscale PNGs, one subfolder per class; a second call with another seed overwrites the same files."""
    rng = np.random.default_rng(seed)
    for name, count in zip(CLASSES, per_class):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def new_run() -> None:
    """What a fresh process would see: the node's data and the clients' shares loaded again."""
    node_data.load_node_data.cache_clear()
    experiment.client_view.cache_clear()
    experiment.run_split.cache_clear()
    datasets.load_split.cache_clear()
    datasets.load_dataset.cache_clear()


@pytest.fixture
def digests(monkeypatch):
    """Every content digest computed, in order."""
    made = []
    real = datasets.array_digest
    monkeypatch.setattr(datasets, "array_digest", lambda *args: made.append(real(*args)) or made[-1])
    return made


def node_run(folder: Path, store: Path, **fill) -> ExperimentSettings:
    run = ExperimentSettings(dataset="fashion-mnist", classes=",".join(CLASSES), test_data=str(folder))
    return replace(run, data_dir=str(folder), fill=FillSettings(store=str(store), **fill))


def test_the_digest_is_of_the_content_once_per_dataset_and_its_own_for_a_subset_or_concatenation(digests):
    rng = np.random.default_rng(0)
    data = ImageDataset(rng.integers(0, 255, (6, 5, 5, 1), dtype=np.uint8), np.array([0, 0, 1, 1, 2, 2]), CLASSES)
    first = data.content_digest
    assert data.content_digest == first and digests == [first]  # cached on the object
    part = data.subset(np.arange(3))
    both = with_fill(data, part)
    assert len(digests) == 1  # a subset or concatenation is digested only when asked
    assert len({first, part.content_digest, both.content_digest}) == 3 and len(digests) == 3
    assert ImageDataset(data.x.copy(), data.y.astype(np.int32), CLASSES).content_digest == first  # not identity
    pixel = data.x.copy()
    pixel[2, 1, 1, 0] ^= 1
    others = [
        ImageDataset(pixel, data.y, CLASSES),
        ImageDataset(data.x, data.y[::-1].copy(), CLASSES),
        ImageDataset(data.x, data.y, ("cat", "dog", "emu")),
        ImageDataset(data.x.reshape(6, 5, 1, 5), data.y, CLASSES),
    ]
    assert first not in {other.content_digest for other in others}


def test_a_nodes_images_replaced_in_place_get_a_fresh_fill_and_unchanged_ones_reuse_it(tmp_path, digests):
    folder, store = write_images(tmp_path / "node", seed=0), tmp_path / "store"
    run = node_run(folder, store, mode="noise", supplement=0.5)
    made = prepare_fill(run, 0, target=None, mixed=None)
    assert made["reused"] == 0 and made["synthetic-images"] > 0
    first_data = client_data(run, 0)
    key = client_fill(run, 0).store_key(client_plan(run.fill, first_data.class_counts(), None))
    assert key["data"] == first_data.content_digest and key["dataset"] == f"fashion-mnist@{folder.resolve()}"
    for _ in range(3):  # each round asks for the fill and the data again: one digest per load
        training_data(run, 0, None)
        client_fill(run, 0)
    assert digests == [first_data.content_digest]

    new_run()  # the same images, read again
    assert prepare_fill(run, 0, target=None, mixed=None)["reused"] == 1
    assert len(digests) == 2 and digests[1] == digests[0]

    write_images(folder, seed=1)  # other images under the same names, of the same classes
    new_run()
    replaced = client_data(run, 0)
    assert replaced.class_counts().tolist() == first_data.class_counts().tolist()
    assert not np.array_equal(replaced.x, first_data.x)
    again = prepare_fill(run, 0, target=None, mixed=None)
    assert again["reused"] == 0
    other_key = client_fill(run, 0).store_key(client_plan(run.fill, replaced.class_counts(), None))
    assert other_key["data"] == replaced.content_digest != key["data"]
    assert {k: v for k, v in other_key.items() if k != "data"} == {k: v for k, v in key.items() if k != "data"}
    assert len(list(store.glob("client-0-*/manifest.json"))) == 2
    assert len(training_data(run, 0, None)) == len(replaced) + again["synthetic-images"]


def test_a_folder_datasets_client_is_keyed_by_its_share_and_a_built_in_clients_is_not(tmp_path):
    folder = write_images(tmp_path / "folder", seed=0, per_class=(10, 10, 10))
    run = ExperimentSettings(dataset=str(folder), partition=PartitionSpec("iid", 2), fill=FillSettings(mode="noise"))
    fill = client_fill(run, 1)
    assert fill.data_digest == client_data(run, 1).content_digest != client_data(run, 0).content_digest
    assert "data" in fill.store_key(client_plan(run.fill, client_data(run, 1).class_counts(), None))
    builtin = ExperimentSettings(dataset="mnist-10k", fill=FillSettings(mode="noise"))
    assert client_fill(builtin, 0).data_digest == ""
    assert "data" not in client_fill(builtin, 0).store_key(
        client_plan(builtin.fill, client_data(builtin, 0).class_counts(), None)
    )
    with pytest.raises(ValueError, match="needs the digest"):
        ClientFill(str(folder), "a photo of a {}", 0, 0, FillSettings(mode="noise"))
    other = ClientFill(str(folder), "a photo of a {}", 1, 0, FillSettings(mode="noise"), None, "0" * 64)
    with pytest.raises(ValueError, match="keyed by other images"):
        other.make(client_data(run, 1), client_plan(run.fill, client_data(run, 1).class_counts(), None), None)


def _count(store: Path, prefix: str) -> int:
    return len(list(store.glob(f"{prefix}-client-0-*")))


@pytest.mark.slow
def test_a_nodes_replaced_images_train_a_fresh_lora_and_draw_fresh_base_images(tmp_path, service_base):
    folder, store = write_images(tmp_path / "node", seed=0), tmp_path / "store"
    sampling = {"mode": "diffusion", "supplement": 0.5, "steps": 1, "base": str(service_base)}
    run = node_run(folder, store, lora_steps=1, prior_per_class=0, **sampling)
    base_run = node_run(folder, store, lora="none", **sampling)

    def make() -> None:
        for settings in (run, base_run):
            data = client_data(settings, 0)
            client_fill(settings, 0).make_shards(data, client_plan(settings.fill, data.class_counts(), None), {})

    make()
    assert (_count(store, "lora"), _count(store, "base")) == (1, 1)
    new_run()
    make()  # the same images: the LoRA and the base images are reused
    assert (_count(store, "lora"), _count(store, "base")) == (1, 1)
    write_images(folder, seed=1)
    new_run()
    make()
    assert (_count(store, "lora"), _count(store, "base")) == (2, 2)


def test_the_services_fill_of_a_node_names_its_images_as_the_node_does(tmp_path, service_base):
    folder = write_images(tmp_path / "node", seed=0)
    run = node_run(folder, tmp_path / "store", mode="noise", supplement=0.5)
    with service(service_base, tmp_path, data=str(folder), classes=",".join(CLASSES)) as api:
        job = wait_for(api, api.post("/v1/fill", json={"mode": "noise", "supplement": 0.5, "seed": 0}).json()["id"])
    assert job["status"] == "done", job
    ours = client_fill(run, 0).store_key(client_plan(run.fill, client_data(run, 0).class_counts(), None))
    assert job["result"]["key"]["data"] == ours["data"] == client_data(run, 0).content_digest
    assert job["result"]["key"]["dataset"] == ours["dataset"]


def test_images_a_service_made_from_other_images_are_refused(tmp_path):
    ours = {"data": "a" * 64, "compute": None}
    check_made_alike(ours, dict(ours))
    check_made_alike({}, {"data": "b" * 64})  # a built-in dataset's client: its class counts were checked
    with pytest.raises(ReglError, match="from other data than this client's"):
        check_made_alike(ours, {**ours, "data": "b" * 64})
    with pytest.raises(ReglError, match="from other data than this client's"):
        check_made_alike(ours, {"compute": None})
