"""Shared looks: one transform for the whole federation, the same on training and test images."""

import numpy as np
import pytest

from regl.data.datasets import ImageDataset, load_split
from regl.data.looks import LOOKS, apply_look
from regl.errors import ReglError


def _square() -> ImageDataset:
    """One 9×9 image: a filled 5×5 square of 200 on black."""
    x = np.zeros((1, 9, 9, 1), dtype=np.uint8)
    x[0, 2:7, 2:7] = 200
    return ImageDataset(x, np.zeros(1, dtype=np.int64), ("square",))


def test_outline_hollows_a_filled_shape():
    out = apply_look(_square(), "outline").x[0, :, :, 0]
    assert out[4, 4] == 0  # the inside: dilation and erosion agree
    assert out[2, 4] == 200 and out[1, 4] == 200  # the edge, inside and out
    assert out[0, 4] == 0  # far outside


def test_negative_is_a_thick_light_background_look():
    out = apply_look(_square(), "negative").x[0, :, :, 0]
    assert out[0, 0] == 255  # the background turns white
    assert out[1, 4] < 40  # the stroke grows by a pixel and turns dark
    assert out[4, 4] == round((1 - (200 / 255) ** 0.5) * 255)


def test_a_look_keeps_labels_and_shapes_and_is_the_same_on_train_and_test():
    split = load_split("mnist-10k")
    for look in LOOKS:
        train, again = (
            apply_look(split.private.subset(np.arange(50)), look),
            apply_look(split.private.subset(np.arange(50)), look),
        )
        assert train.x.shape == split.private.x[:50].shape and (train.y == split.private.y[:50]).all()
        assert (train.x == again.x).all()
    assert apply_look(split.test, "none") is split.test


def test_an_unknown_look_is_refused_by_name():
    with pytest.raises(ReglError, match="unknown look 'sepia'; use one of none, negative, outline"):
        apply_look(_square(), "sepia")


def test_a_runs_clients_and_its_test_set_share_the_look_and_the_public_pool_keeps_the_bases():
    from regl.data.partitions import PartitionSpec
    from regl.fl.experiment import ExperimentSettings, client_data, federation, run_split, test_data

    settings = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec(num_clients=3, look="outline"))
    plain = load_split("mnist-10k")
    indices = federation(settings).client_indices[1]
    looked = client_data(settings, 1)
    assert (looked.x == apply_look(plain.private.subset(indices), "outline").x).all()
    assert (test_data(settings).x == apply_look(plain.test, "outline").x).all()
    assert run_split("mnist-10k", "outline").public is plain.public
    assert settings.partition.describe().endswith("-look-outline")


def test_eval_generator_judges_images_against_real_ones_in_the_look():
    import torch

    from regl.generate.evaluate import measure_generated
    from regl.train.models import SmallCNN

    torch.manual_seed(0)
    classifier = (SmallCNN(), 0.1)  # any fixed feature map shows which real images the set is held against
    test = load_split("mnist-10k").test
    in_look = apply_look(test.subset(np.arange(0, len(test), 4)), "negative")
    looked = measure_generated(in_look, "mnist-10k", per_class=20, classifier=classifier, look="negative")
    plain = measure_generated(in_look, "mnist-10k", per_class=20, classifier=classifier)
    assert looked.frechet < plain.frechet / 10
