"""regl.add_fill / generate_images / finetune_lora on a user's own arrays, with a tiny random base."""

import numpy as np
import pytest

import regl
from regl.errors import ReglError

CLASSES = ("sneaker", "bag", "coat")


@pytest.fixture
def client():
    """Twelve 28×28 grayscale sneakers and four bags, no coat: the skew a fill is for."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), np.array([0] * 12 + [1] * 4)


def test_the_fill_adds_the_classes_a_client_lacks_in_its_own_format(client, three_class_base, tmp_path):
    images, labels = client
    options = {"lora_steps": 2, "prior_per_class": 1, "steps": 1, "base": str(three_class_base)}
    x, y = regl.add_fill(images, labels, CLASSES, supplement=0.5, store=str(tmp_path), **options)

    assert x.shape == (24, 28, 28, 1) and x.dtype == np.uint8
    assert np.array_equal(x[:16, ..., 0], images) and np.array_equal(y[:16], labels)  # real ones first, untouched
    assert np.bincount(y[16:], minlength=3).tolist() == [0, 3, 5]  # towards uniform: the missing coat most
    again, _ = regl.add_fill(images, labels, CLASSES, supplement=0.5, store=str(tmp_path), **options)
    assert np.array_equal(again, x)
    assert len(list(tmp_path.glob("client-0-*"))) == 1  # the second call read the first one's store


def test_noise_needs_no_diffusion_model(client, tmp_path):
    images, labels = client
    x, y = regl.add_fill(images[..., None], labels, CLASSES, supplement=0.25, sources="noise", store=str(tmp_path))
    assert len(x) == 20 and np.bincount(y[16:], minlength=3).tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"images": np.zeros((16, 28, 28), np.float32)}, "images must be uint8"),
        ({"images": np.zeros((16, 28, 20), np.uint8)}, "square"),
        ({"labels": np.array([0] * 15 + [3])}, "labels must lie in 0..2"),
        ({"labels": np.zeros(15, int)}, "labels must be 16 integers"),
        ({"class_names": ("sneaker", "sneaker")}, "each once"),
        ({"sources": "mixup"}, "sources must be diffusion or noise"),
        ({"template": "a photo"}, "needs a {}"),
        ({"lora_stepz": 3}, "unknown fill option(s) lora_stepz"),
        ({"supplement": -1.0}, "supplement"),
    ],
)
def test_bad_input_is_named(client, tmp_path, change, message):
    images, labels = client
    call = {"images": images, "labels": labels, "class_names": CLASSES, "store": str(tmp_path), **change}
    with pytest.raises(ReglError, match=message.replace("(", r"\(").replace(")", r"\)")):
        regl.add_fill(call.pop("images"), call.pop("labels"), call.pop("class_names"), **call)


def test_a_finetuned_lora_generates(client, three_class_base, tmp_path):
    images, labels = client
    options = {"base": three_class_base, "steps": 2, "prior_per_class": 0}
    out = regl.finetune_lora(images, labels, CLASSES, tmp_path / "lora", **options)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    drawn = regl.generate_images("coat", 3, CLASSES, base=three_class_base, lora=out, steps=2)
    assert drawn.shape == (3, 32, 32, 3) and drawn.dtype == np.uint8
    first = regl.generate_images(2, 1, CLASSES, base=three_class_base, lora=out, steps=2)
    # image i depends on the seed and i alone (a batch of 3 and of 1 differ in the kernels' last bits only)
    assert np.abs(first[0].astype(int) - drawn[0]).max() <= 3 < np.abs(first[0].astype(int) - drawn[1]).max()
    with pytest.raises(ReglError, match="unknown class 'zebra'"):
        regl.generate_images("zebra", 1, CLASSES, base=three_class_base)
    with pytest.raises(ReglError, match="unknown LoRA option"):
        regl.finetune_lora(images, labels, CLASSES, tmp_path / "other", base=three_class_base, step=2)
