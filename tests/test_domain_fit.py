"""The look and class judges: images in a client's own look are found there, untransformed ones are not."""

from dataclasses import replace

import numpy as np
import pytest

from regl.data.datasets import load_split
from regl.data.partitions import PartitionSpec
from regl.fl.bench_report import format_table
from regl.fl.domain_fit import missing_class_fit, train_judges
from regl.fl.experiment import ExperimentSettings, client_data, client_domain

K2_ROTATE = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("classes", 10, 2, domain="rotate"))


@pytest.fixture(scope="module")
def judges():
    return train_judges(K2_ROTATE)


def shards_of(settings: ExperimentSettings, in_own_look: bool) -> list[dict]:
    """Per client: 30 real test images of the classes it lacks, in its own look or untransformed."""
    test = load_split(settings.dataset).test
    stored = []
    for client in range(settings.partition.num_clients):
        missing = np.flatnonzero(client_data(settings, client).class_counts() == 0)
        images = test.subset(np.flatnonzero(np.isin(test.y, missing))[:30])
        stored.append(
            {"diffusion": client_domain(settings, client).apply(images, "generated") if in_own_look else images}
        )
    return stored


@pytest.mark.slow
def test_images_in_the_clients_look_are_judged_its_own(judges):
    assert judges.look_names == (
        "rotated 0°",
        "rotated 15°",
        "rotated 30°",
        "rotated 45°",
        "rotated 60°",
        "rotated 75°",
    )
    in_look = missing_class_fit(K2_ROTATE, shards_of(K2_ROTATE, True), judges)
    plain = missing_class_fit(K2_ROTATE, shards_of(K2_ROTATE, False), judges)
    assert in_look["images"] == plain["images"] == 300
    # 15° apart is subtle at 28×28 (digits slant by themselves): the judge is far above chance, not perfect
    assert in_look["look_judge_accuracy"] > 0.5 > 1 / 6 and in_look["class_judge_accuracy"] > 0.9
    assert in_look["own_look"] > 0.45 and plain["own_look"] < 0.35  # plain images look 0°: own for 2 clients of 10
    assert in_look["own_look"] > plain["own_look"] + 0.2
    assert in_look["recognised"] > 0.8


@pytest.mark.slow
def test_no_generated_images_of_missing_classes_means_no_fit(judges):
    stored = [{"noise": shards["diffusion"]} for shards in shards_of(K2_ROTATE, True)]
    assert missing_class_fit(K2_ROTATE, stored, judges) is None


def test_the_table_adds_the_domain_columns_only_when_a_row_has_them():
    row = {"arm": "diffusion", "seed": 0, "accuracy": 0.5, "minority_accuracy": None, "auc": 0.9,
           "personalized_accuracy": 0.6, "fill_seconds": 3.0, "rounds_seconds": 5.0, "wall_seconds": 9.0}  # fmt: skip
    plain = format_table([row], ["diffusion"])
    assert "in-domain" not in plain and plain.splitlines()[0].count("|") == 10
    table = format_table(
        [{**row, "in_domain_accuracy": 0.4, "own_look": 0.25, "missing_recognised": 0.8}], ["diffusion"]
    )
    head, rule, line = table.splitlines()
    assert head.count("|") == rule.count("|") == line.count("|") == 13
    assert "| 40.00 | 25.00 | 80.00 |" in line
    assert replace(K2_ROTATE.partition, domain="none").describe() == "k2-c10"
