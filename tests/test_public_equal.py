"""The equal-count real reference: public-pool images at exactly the counts the fill plan asks for."""

import numpy as np
import pytest

from regl.data.datasets import load_split
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.client import ClientFill
from regl.fill.settings import FillSettings, client_plan
from regl.fl.experiment import ExperimentSettings, client_data

SETTINGS = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("classes", 10, classes_per_client=1))


def plan_for(mode: str, supplement: float, client: int = 3):
    return client_plan(
        FillSettings(mode=mode, supplement=supplement), client_data(SETTINGS, client).class_counts(), None
    )


def fill_for(mode: str, supplement: float, client: int = 3, seed: int = 0):
    plan = plan_for(mode, supplement, client)
    fill = ClientFill("mnist-10k", "{}", client, seed, FillSettings(mode=mode, supplement=supplement))
    return plan, fill.make_shards(client_data(SETTINGS, client), plan, {})


def test_public_equal_draws_exactly_the_planned_counts_from_the_public_pool():
    plan, shards = fill_for("public-equal", 0.5)
    drawn = shards["public-equal"]
    assert drawn.class_counts().tolist() == plan.counts["public-equal"].tolist()
    assert plan.total() == len(drawn) > 0
    public = load_split("mnist-10k").public
    rows = {image.tobytes() for image in public.x}
    assert all(image.tobytes() in rows for image in drawn.x)
    assert len({image.tobytes() for image in drawn.x}) == len(drawn)  # without replacement


def test_public_equal_plans_what_the_diffusion_fill_plans():
    assert plan_for("public-equal", 0.5).counts["public-equal"].tolist() == (
        plan_for("diffusion", 0.5).counts["diffusion"].tolist()
    )


def test_public_equal_is_seeded():
    first, again, other = (fill_for("public-equal", 0.2, seed=s)[1]["public-equal"] for s in (0, 0, 1))
    assert np.array_equal(first.x, again.x)
    assert not np.array_equal(first.x, other.x)


def test_asking_more_than_the_pool_holds_is_named():
    with pytest.raises(ReglError, match="public pool of mnist-10k holds 200 images of class"):
        fill_for("public-equal", 3.0)
