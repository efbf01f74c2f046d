"""Client domains in a run: data, test sets, fill keys and the oracle, and `--domain none` as before."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from regl.cli import main
from regl.data.datasets import BUILTINS, load_split
from regl.data.domains import ClientDomain
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.client import ClientFill
from regl.fill.settings import FillSettings, client_plan
from regl.fl import experiment
from regl.fl.experiment import ExperimentSettings, client_data, client_fill, client_view, new_model, train_client
from regl.generate.prompts import class_prompts, prompt_words, template_for
from regl.generate.tiny_sd import TEST_SD, build_pipeline
from regl.seeds import SEED_DERIVATION
from regl.train.settings import TrainSettings

K1 = PartitionSpec("classes", 10, classes_per_client=1)
PLAIN = ExperimentSettings(dataset="mnist-10k", partition=K1)
ROTATED = ExperimentSettings(dataset="mnist-10k", partition=replace(K1, domain="rotate"))


def test_domain_none_leaves_data_and_test_set_as_they_were():
    split = load_split("mnist-10k")
    indices = experiment.federation(PLAIN).client_indices[3]
    assert np.array_equal(client_data(PLAIN, 3).x, split.private.x[indices])
    assert experiment.test_data(PLAIN) is split.test
    assert PLAIN.name == "mnist-10k-k1-c10-s0" and ROTATED.name == "mnist-10k-k1-c10-rotate-s0"


@pytest.mark.parametrize(
    ("mode", "folder"), [("noise", "client-3-e58345bfc17f5708"), ("mixup", "client-3-d5ad1109994ff969")]
)
def test_domain_none_keeps_the_fill_store_keys_made_before_domains(mode, folder):
    fill = client_fill(replace(PLAIN, fill=FillSettings(mode=mode, supplement=0.5)), 3)
    plan = client_plan(fill.settings, client_data(PLAIN, 3).class_counts(), None)
    key = fill.store_key(plan)
    assert key.pop("seeds") == SEED_DERIVATION  # added since, so that stores of the older seeds are not reused
    assert fill.store_folder(key).name == folder  # the name the code before domains gave


def test_a_domain_changes_the_clients_images_and_its_fill_key():
    split = load_split("mnist-10k")
    indices = experiment.federation(ROTATED).client_indices[3]
    expected = ClientDomain("rotate", 3, 10).apply(split.private.subset(indices))
    assert np.array_equal(client_data(ROTATED, 3).x, expected.x)
    fill = FillSettings(mode="noise", supplement=0.5)
    plain, rotated = client_fill(replace(PLAIN, fill=fill), 3), client_fill(replace(ROTATED, fill=fill), 3)
    plan = client_plan(fill, client_data(PLAIN, 3).class_counts(), None)
    assert plain.store_folder(plain.store_key(plan)) != rotated.store_folder(rotated.store_key(plan))


def test_the_global_test_set_shows_each_image_once_in_a_clients_look():
    test = load_split("mnist-10k").test
    shown = experiment.test_data(ROTATED)
    assert np.array_equal(shown.y, test.y)
    for i in (0, 7, 13):
        alone = ClientDomain("rotate", i % 10, 10).apply(test.subset(np.array([i])), "test").x[0]
        assert np.array_equal(shown.x[i], alone)


def test_the_personalized_subset_carries_the_clients_domain(monkeypatch):
    seen = []
    real_evaluate = experiment.evaluate
    monkeypatch.setattr(experiment, "evaluate", lambda model, data: seen.append(data) or real_evaluate(model, data))
    settings = replace(ROTATED, train=TrainSettings(epochs=1))
    metrics = train_client(client_view(settings, 3), new_model(settings), server_round=1)
    personal, in_domain = seen
    assert set(personal.y.tolist()) == set(client_data(settings, 3).y.tolist())  # its own classes only
    assert np.bincount(in_domain.y, minlength=10).tolist() == [100] * 10  # all classes, uniformly
    raw = {image.tobytes() for image in load_split("mnist-10k").test.x}
    for shown in (personal, in_domain):
        assert not any(image.tobytes() in raw for image in shown.x)  # every image in the client's look
    assert 0 <= metrics["in-domain-accuracy"] <= 1 and "personalized-accuracy" in metrics
    plain = replace(PLAIN, train=TrainSettings(epochs=1))
    plain_metrics = train_client(client_view(plain, 3), new_model(PLAIN), server_round=1)
    assert "in-domain-accuracy" not in plain_metrics


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("domain-base")
    words = prompt_words(class_prompts(BUILTINS["mnist-10k"].class_names, template_for("mnist-10k")))
    build_pipeline(TEST_SD, words, folder / "work").save_pretrained(folder / "model")
    return folder / "model"


def test_the_oracle_is_the_base_images_in_the_clients_true_look(tmp_path, base):
    data = client_data(ROTATED, 3).subset(np.arange(20))
    common = {"supplement": 0.5, "steps": 1, "base": str(base), "store": str(tmp_path)}
    oracle = client_fill(replace(ROTATED, fill=FillSettings(mode="oracle", **common)), 3)
    plan = client_plan(oracle.settings, data.class_counts(), None)
    shards = oracle.make_shards(data, plan, {})

    def diffusion_base(store: Path) -> tuple[np.ndarray, dict]:
        fill = FillSettings(mode="diffusion", lora="none", **{**common, "store": str(store)})
        timings = {}
        images = client_fill(replace(ROTATED, fill=fill), 3).make_shards(
            data, client_plan(fill, data.class_counts(), None), timings
        )
        return images["diffusion"], timings

    base_images, drawn = diffusion_base(tmp_path / "elsewhere")  # drawn afresh
    assert shards["oracle"].class_counts().tolist() == plan.counts["oracle"].tolist() and len(shards["oracle"]) == 10
    expected = ClientDomain("rotate", 3, 10).apply(base_images, "generated")
    assert np.array_equal(shards["oracle"].x, expected.x) and not np.array_equal(expected.x, base_images.x)
    kept, reused = diffusion_base(tmp_path)  # beside the oracle's store: its base images, not drawn again
    assert np.array_equal(kept.x, base_images.x) and "generate_seconds" in drawn and "generate_seconds" not in reused


def test_the_oracle_without_a_domain_is_refused():
    with pytest.raises(
        ReglError, match="oracle fill passes base images through the true look: give a --domain or a --look"
    ):
        ClientFill("mnist-10k", "{}", 0, 0, FillSettings(mode="oracle"))
    with pytest.raises(ReglError, match="give a --domain"):
        client_fill(replace(PLAIN, fill=FillSettings(mode="oracle")), 0)


def test_partition_with_a_domain_shows_a_sample_row_per_client(tmp_path, capsys):
    out = tmp_path / "partition.png"
    code = main(["partition", "--dataset", "mnist-10k", "--domain", "style", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "client 1: thick, γ 0.5, inverted" in printed
    from PIL import Image

    with Image.open(tmp_path / "partition-domains.png") as image:
        assert image.size == (2 * 10 * 28, 2 * 10 * 28)
