"""`regl generate` / `regl finetune` on a tiny random pipeline: outputs and error paths."""

import numpy as np
import pytest
from PIL import Image

from regl.cli import main
from regl.data.datasets import BUILTINS
from regl.generate.prompts import class_prompts, prompt_words
from regl.generate.tiny_sd import TEST_SD, build_pipeline


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-base")
    words = prompt_words(class_prompts(BUILTINS["fashion-mnist"].class_names, "a photo of a {}"))
    build_pipeline(TEST_SD, words, folder / "work").save_pretrained(folder / "model")
    return folder / "model"


def regl(capsys, *args) -> tuple[int, str]:
    """`regl ARGS --threads 1` in this process: its exit code and stderr."""
    code = main([*args, "--threads", "1"])
    return code, capsys.readouterr().err


def test_generate_writes_dataset_format_pngs(capsys, tmp_path, base):
    code, err = regl(
        capsys,
        "generate",
        "--class",
        "sneaker",
        "--dataset",
        "fashion-mnist",
        "-n",
        "3",
        "--steps",
        "2",
        "--base",
        str(base),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == [f"sneaker_0000{i}.png" for i in range(3)]
    with Image.open(files[0]) as img:
        assert img.size == (28, 28) and img.mode == "L"


def test_finetune_then_generate_with_the_lora(capsys, tmp_path, base):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "client" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "client" / name / f"{i}.png")
    code, err = regl(
        capsys,
        "finetune",
        "--data",
        str(tmp_path / "client"),
        "--base",
        str(base),
        "--out",
        str(tmp_path / "lora"),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--prior-per-class",
        "0",
    )
    assert code == 0, err
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    code, err = regl(
        capsys,
        "finetune",
        "--data",
        str(tmp_path / "client"),
        "--base",
        str(base),
        "--out",
        str(tmp_path / "lora"),
        "--steps",
        "3",
        "--resume",
    )
    assert code == 2 and "holds no checkpoint" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--class", "zebra", "--out", "x"], "unknown class 'zebra'"),
        (["generate", "--class", "bag", "--n", "0", "--out", "x"], "n must be between 1 and 100000, got 0"),
        (["generate", "--class", "bag", "--n", "1000000000", "--out", "x"], "n must be between 1 and 100000"),
        (["generate", "--class", "7", "--out", "x", "--lora", "/no/lora"], "/no/lora holds no"),
        (["finetune", "--data", "/no/client", "--out", "x"], "data folder /no/client does not exist"),
        (["finetune", "--data", "mnist-10k", "--domain", "rotate", "--out", "x"], "pick one with --client"),
    ],
)
def test_bad_input_is_one_line(capsys, base, args, message):
    code, err = regl(capsys, *args, "--base", str(base))
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_base_folder_is_named(capsys):
    code, err = regl(capsys, "generate", "--class", "7", "--out", "x", "--base", "/no/model")
    assert code == 2 and "model folder /no/model does not exist" in err
