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
