"""`regl finetune` on a client folder holding some of the federation's classes: labelled by the run's
class list (--classes or --classes-like), priors for the classes it lacks, unknown folders refused."""

import json

import numpy as np
import pytest
from PIL import Image

from regl.cli import main
from regl.data.datasets import BUILTINS
from regl.generate.prompts import DEFAULT_TEMPLATE, class_prompts, prompt_words, template_for

DIGITS = BUILTINS["mnist-10k"].class_names
RUN_CLASSES = ("cat", "dog", "owl", "fox", "bee")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from regl.generate.tiny_sd import TEST_SD, build_pipeline

    folder = tmp_path_factory.mktemp("classes-base")
    prompts = class_prompts(DIGITS, template_for("mnist-10k")) + class_prompts(RUN_CLASSES, DEFAULT_TEMPLATE)
    build_pipeline(TEST_SD, prompt_words(prompts), folder / "work").save_pretrained(folder / "model")
    return folder / "model"


def client_folder(root, names, per_class=3):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def finetune(capsys, base, data, out, *extra) -> tuple[int, str, dict]:
    """`regl finetune` in this process: exit code, stderr and the LoRA's recorded metadata (if written)."""
    code = main(["finetune", "--data", str(data), "--base", str(base), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--prior-per-class", "1", "--threads", "1", *extra])  # fmt: skip
    err = capsys.readouterr().err
    meta_file = out / "regl_lora.json"
    return code, err, json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def test_a_folder_of_two_classes_gets_priors_for_the_runs_other_classes(capsys, tmp_path, base):
    data = client_folder(tmp_path / "client", ("owl", "dog"))
    code, err, meta = finetune(capsys, base, data, tmp_path / "lora", "--classes", " cat, dog,owl , fox,bee")
    assert code == 0, err
    assert meta["class_names"] == list(RUN_CLASSES)  # the run's index space, spaces around commas dropped
    assert meta["client_class_counts"] == [0, 3, 3, 0, 0]
    assert meta["prior_class_counts"] == [1, 0, 0, 1, 1]  # one base image for each class the folder lacks
    assert meta["template"] == DEFAULT_TEMPLATE
    # the progress went to a non-terminal stderr: whole lines, not a redrawn bar
    assert "\r" not in err and "lora: 2/2 steps" in err

    # the folder on its own knows only its two classes, and there is nothing to keep by priors
    code, err, meta = finetune(capsys, base, data, tmp_path / "alone")
    assert code == 0, err
    assert meta["class_names"] == ["dog", "owl"] and meta["prior_class_counts"] == [0, 0]


def test_classes_like_a_builtin_labels_the_folder_by_its_class_names(capsys, tmp_path, base):
    data = client_folder(tmp_path / "client", ("3", "7"))
    code, err, meta = finetune(capsys, base, data, tmp_path / "lora", "--classes-like", "mnist-10k")
    assert code == 0, err
    assert meta["class_names"] == list(DIGITS) and meta["template"] == template_for("mnist-10k")
    assert meta["client_class_counts"] == [3 if d in (3, 7) else 0 for d in range(10)]
    assert meta["prior_class_counts"] == [0 if d in (3, 7) else 1 for d in range(10)]


@pytest.mark.parametrize(
    "folders, extra, message",
    [
        (
            ("3", "zebra"),
            ("--classes-like", "mnist-10k"),
            "has subfolders for classes the run does not know: zebra; the run's classes: 0, 1, 2, 3",
        ),
        (("cat", "emu"), ("--classes", "cat,dog,owl"), "does not know: emu; the run's classes: cat, dog, owl"),
        (("cat",), ("--classes", "cat"), "classes must name at least two distinct classes"),
        (("cat",), ("--classes-like", "no-such-set"), "unknown dataset 'no-such-set'"),
    ],
)
def test_bad_classes_are_one_line(capsys, tmp_path, base, folders, extra, message):
    data = client_folder(tmp_path / "client", folders, per_class=1)
    code, err, meta = finetune(capsys, base, data, tmp_path / "lora", *extra)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not meta


def test_a_builtin_dataset_still_needs_as_many_names_as_classes(capsys, tmp_path, base):
    code, err, _ = finetune(capsys, base, "mnist-10k", tmp_path / "lora", "--client", "0", "--classes", "a,b")
    assert code == 2 and "mnist-10k has 10 classes but --classes has 2" in err
