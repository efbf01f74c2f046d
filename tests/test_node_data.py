"""A node's own data: labelled by the run's class list, a local test split held out, trained on by its service."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from regl.data.node_data import load_labelled, local_split, node_key, run_class_names
from regl.errors import ReglError
from regl.fl.settings import ExperimentSettings
from tests.service_fixtures import CLASSES, build_client_folder, service


def test_folder_labels_follow_the_run_class_list_not_the_folder_order(tmp_path):
    folder = tmp_path / "node"
    for name, count in (("owl", 2), ("cat", 3)):  # a skewed node: no dogs
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(folder / name / f"{i}.png")
    data = load_labelled(folder, CLASSES)
    assert data.class_names == CLASSES
    assert data.class_counts().tolist() == [3, 0, 2]
    assert data.x.shape == (5, 20, 20, 1)


def test_unknown_class_folder_names_the_class_and_the_run_classes(tmp_path):
    folder = build_client_folder(tmp_path / "node")
    (folder / "zebra").mkdir()
    with pytest.raises(ReglError, match="zebra.*the run's classes: cat, dog, owl"):
        load_labelled(folder, CLASSES)
    with pytest.raises(ReglError, match="does not exist"):
        load_labelled(tmp_path / "missing", CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReglError, match="no class subfolders"):
        load_labelled(tmp_path / "empty", CLASSES)


def test_npz_node_data_and_its_bad_forms(tmp_path):
    x = np.zeros((4, 20, 20), np.uint8)
    np.savez(tmp_path / "good.npz", x=x, y=np.array([0, 2, 2, 1]))
    assert load_labelled(tmp_path / "good.npz", CLASSES).class_counts().tolist() == [1, 1, 2]
    np.savez(tmp_path / "label.npz", x=x, y=np.array([0, 3, 2, 1]))
    with pytest.raises(ReglError, match=r"class indices in \[0, 3\)"):
        load_labelled(tmp_path / "label.npz", CLASSES)
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    with pytest.raises(ReglError, match="cannot read"):
        load_labelled(tmp_path / "corrupt.npz", CLASSES)


def test_local_split_is_stratified_deterministic_and_keeps_a_training_image(tmp_path):
    data = load_labelled(build_client_folder(tmp_path / "node", per_class=(10, 5, 1)), CLASSES)
    node = local_split(data)
    assert node.test.class_counts().tolist() == [2, 1, 0]  # round(20%); the lone owl stays in training
    assert node.train.class_counts().tolist() == [8, 4, 1]
    again = local_split(data)
    assert np.array_equal(node.test.x, again.test.x) and np.array_equal(node.train.y, again.train.y)
    train_rows = {row.tobytes() for row in node.train.x}
    assert not any(row.tobytes() in train_rows for row in node.test.x)


def test_run_class_names_and_the_settings_that_need_a_test_set(tmp_path):
    assert run_class_names("mnist-10k", "") == tuple(str(d) for d in range(10))
    assert run_class_names("mnist-10k", "cat, dog,owl") == CLASSES
    for bad in ("cat", "cat,,dog", "cat,cat"):
        with pytest.raises(ReglError, match="at least two distinct"):
            run_class_names("mnist-10k", bad)
    with pytest.raises(ReglError, match="--test-data"):
        ExperimentSettings(classes="cat,dog").check()
    assert node_key("fashion-mnist", str(tmp_path / "a" / ".." / "b")) == f"fashion-mnist@{tmp_path / 'b'}"


def test_the_node_trains_on_its_training_split_and_tests_on_the_rest(tmp_path):
    import torch

    from regl.fl.experiment import client_data, local_update, new_model, personalized_test_set

    torch.set_num_threads(1)
    folder = build_client_folder(tmp_path / "node", per_class=(10, 5, 2))
    run = ExperimentSettings(dataset="fashion-mnist", classes=",".join(CLASSES), test_data=str(folder))
    node = replace(run, data_dir=str(folder))
    assert client_data(node, 0).class_counts().tolist() == [8, 4, 2]
    assert len(personalized_test_set(node, 0)) == 3
    weights = {k: v.numpy().copy() for k, v in new_model(run).state_dict().items()}
    updated, metrics = local_update(node, 0, weights, {"server-round": 1})
    assert list(updated) == list(weights) and metrics["num-examples"] == 14
    assert any(not np.array_equal(updated[k], weights[k]) for k in weights)


@pytest.mark.e2e
def test_service_trains_a_round_for_its_own_node_only(service_base, tmp_path):
    import torch

    from regl.fl.experiment import new_model
    from regl.fl.remote_update import pack_arrays, unpack_arrays

    torch.set_num_threads(1)
    folder = build_client_folder(tmp_path / "node", per_class=(10, 5, 2))
    run = ExperimentSettings(dataset="fashion-mnist", classes=",".join(CLASSES), test_data=str(folder))
    weights = {k: v.numpy().copy() for k, v in new_model(run).state_dict().items()}
    body = {
        "config": {**run.to_config(), "server-round": 1},
        "client": 0,
        "data_dir": str(folder),
        "weights": pack_arrays(weights),
    }
    with service(service_base, tmp_path, data=str(folder), classes="cat, dog, owl") as api:  # spaces as a user types
        assert api.get("/v1/model").json()["data_images"] == 14  # the training split: 8 + 4 + 2
        reply = api.post("/v1/train", json=body)
        assert reply.status_code == 200, reply.text
        updated = unpack_arrays(reply.json()["weights"])
        assert list(updated) == list(weights) and reply.json()["metrics"]["num-examples"] == 14
        assert any(not np.array_equal(updated[k], weights[k]) for k in weights)
        later = {**body["config"], "server-round": 2, "global-accuracy": [0.1, 0.35]}  # what the server sends then
        assert api.post("/v1/train", json={**body, "config": later}).status_code == 200
        other = api.post("/v1/train", json={**body, "data_dir": str(tmp_path)})
        assert other.status_code == 409 and str(folder) in other.json()["detail"]
        garbled = api.post("/v1/train", json={**body, "weights": "bm90IGFuIG5weg=="})
        assert garbled.status_code == 422 and garbled.json()["detail"][0]["loc"] == ["body", "weights"]
        no_round = api.post("/v1/train", json={**body, "config": run.to_config()})
        assert no_round.status_code == 422 and "server-round" in no_round.text
        (seen,) = api.get("/v1/runs").json()  # the node's page follows the run from the rounds it trained
        assert (seen["name"], seen["client"], seen["num_rounds"]) == (run.name, 0, run.num_rounds)
        assert [r["round"] for r in seen["rounds_trained"]] == [1, 2] and seen["global_accuracy"] == [0.1, 0.35]
