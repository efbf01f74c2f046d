import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of 20×20 grayscale PNGs, 4 images each."""
    from PIL import Image

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def service_base(tmp_path_factory):
    """A tiny random SD pipeline folder that knows the service tests' class names."""
    from service_fixtures import build_base

    return build_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def client_folder(tmp_path_factory):
    from service_fixtures import build_client_folder

    return build_client_folder(tmp_path_factory.mktemp("client") / "data")


@pytest.fixture(scope="module")
def api(service_base, client_folder, tmp_path_factory):
    """One service on the tiny base with the skewed client folder, shared by a test module."""
    from service_fixtures import service

    folder = tmp_path_factory.mktemp("svc")
    with service(service_base, folder, data=str(client_folder), max_images_per_request=8) as client:
        yield client


@pytest.fixture(scope="session")
def three_class_base(tmp_path_factory):
    """A tiny random SD pipeline folder whose tokenizer knows "a photo of a sneaker / bag / coat"."""
    from regl.generate.prompts import class_prompts, prompt_words
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    folder = tmp_path_factory.mktemp("three-class-base")
    words = prompt_words(class_prompts(("sneaker", "bag", "coat"), "a photo of a {}"))
    build_pipeline(TEST_SD, words, folder / "work", seed=0).save_pretrained(folder / "model")
    return folder / "model"
