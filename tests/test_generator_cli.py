"""`regl generate` / `regl finetune` on a tiny random pipeline: outputs and error paths."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from regl.data.datasets import BUILTINS
from regl.generate.prompts import class_prompts, prompt_words
from regl.generate.tiny_sd import TEST_SD, build_pipeline


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-base")
    words = prompt_words(class_prompts(BUILTINS["fashion-mnist"].class_names, "a photo of a {}"))
    build_pipeline(TEST_SD, words, folder / "work").save_pretrained(folder / "model")
    return folder / "model"


def regl(*args):
    return subprocess.run([sys.executable, "-m", "regl.cli", *args, "--threads", "1"], capture_output=True,
                          text=True, timeout=600)


def test_generate_writes_dataset_format_pngs(tmp_path, base):
    done = regl("generate", "--class", "sneaker", "--n", "3", "--steps", "2", "--base", str(base),
                "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == [f"sneaker_0000{i}.png" for i in range(3)]
    with Image.open(files[0]) as img:
        assert img.size == (28, 28) and img.mode == "L"


def test_finetune_then_generate_with_the_lora(tmp_path, base):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "client" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "client" / name / f"{i}.png")
    done = regl("finetune", "--data", str(tmp_path / "client"), "--base", str(base), "--out", str(tmp_path / "lora"),
                "--steps", "3", "--batch-size", "2", "--prior-per-class", "0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    again = regl("finetune", "--data", str(tmp_path / "client"), "--base", str(base), "--out",
                 str(tmp_path / "lora"), "--steps", "3", "--resume")
    assert again.returncode == 2 and "holds no checkpoint" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--class", "zebra", "--out", "x"], "unknown class 'zebra'"),
        (["generate", "--class", "bag", "--n", "0", "--out", "x"], "n must be between 1 and 100000, got 0"),
        (["generate", "--class", "bag", "--n", "1000000000", "--out", "x"], "n must be between 1 and 100000"),
        (["generate", "--class", "bag", "--out", "x", "--lora", "/no/lora"], "/no/lora holds no"),
        (["finetune", "--data", "/no/client", "--out", "x"], "data folder /no/client does not exist"),
    ],
)
def test_bad_input_is_one_line(base, args, message):
    done = regl(*args, "--base", str(base))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_base_folder_is_named():
    done = regl("generate", "--class", "bag", "--out", "x", "--base", "/no/model")
    assert done.returncode == 2 and "model folder /no/model does not exist" in done.stderr
