"""A client style token: on its own images' prompts, not the priors', and on every prompt its LoRA generates."""

import json

import pytest

from regl.cli import main
from regl.data.datasets import BUILTINS
from regl.errors import ReglError
from regl.generate import lora as lora_module
from regl.generate.generator import Generator
from regl.generate.prompts import class_prompts, prompt_words, template_for
from regl.generate.tiny_sd import TEST_SD, build_pipeline

TEMPLATE = template_for("mnist-10k")
NAMES = BUILTINS["mnist-10k"].class_names


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("style-base")
    build_pipeline(TEST_SD, prompt_words(class_prompts(NAMES, TEMPLATE)), folder / "work").save_pretrained(folder / "m")
    return folder / "m"


def finetune(tmp_path, base, *extra: str) -> int:
    return main(["finetune", "--data", "mnist-10k", "--client", "0", "-k", "1", "--base", str(base), "--out",
                 str(tmp_path / "lora"), "--steps", "2", "--batch-size", "2", "--prior-per-class", "1", "--threads",
                 "1", *extra])  # fmt: skip


def test_the_token_goes_on_the_clients_prompts_and_stays_with_its_lora(tmp_path, base, monkeypatch):
    seen = {}
    real_training_set, real_encode = lora_module._training_set, lora_module.encode_prompts

    def training_set(*args):
        seen["set"] = real_training_set(*args)
        return seen["set"]

    def encode(tokenizer, text_encoder, prompts):
        seen["prompts"] = prompts
        return real_encode(tokenizer, text_encoder, prompts)

    monkeypatch.setattr(lora_module, "_training_set", training_set)
    monkeypatch.setattr(lora_module, "encode_prompts", encode)
    assert finetune(tmp_path, base, "--style-token", "sks") == 0
    plain = [TEMPLATE.format(name) for name in NAMES]
    # own images' prompts, then the priors', then the empty one (prompt dropout)
    assert seen["prompts"] == [f"{p} sks" for p in plain] + plain + [""]
    _, labels, _, is_prior = seen["set"]
    assert not is_prior[labels == 0].any() and is_prior[labels != 0].all()  # client 0 holds only digit 0
    assert is_prior.sum() == 9  # one prior per missing class
    metadata = json.loads((tmp_path / "lora" / "regl_lora.json").read_text())
    assert metadata["settings"]["style_token"] == "sks"
    generator = Generator(base, NAMES, TEMPLATE, lora=tmp_path / "lora")
    assert generator.prompt(3) == f"{TEMPLATE.format('3')} sks"
    assert Generator(base, NAMES, TEMPLATE).prompt(3) == TEMPLATE.format("3")


def test_without_a_token_the_prompts_are_the_plain_ones(tmp_path, base):
    assert finetune(tmp_path, base) == 0
    assert Generator(base, NAMES, TEMPLATE, lora=tmp_path / "lora").prompt(3) == TEMPLATE.format("3")


@pytest.mark.parametrize(
    ("token", "message"), [(" sks", "one word"), ("a photo", "one word"), ("x" * 40, "at most 32")]
)
def test_a_token_that_is_not_one_short_word_is_refused(tmp_path, base, capsys, token, message):
    assert finetune(tmp_path, base, f"--style-token={token}") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "lora").exists()


def test_a_token_the_text_encoder_would_cut_off_is_refused(base):
    generator = Generator(base, NAMES, TEMPLATE)
    tokenizer = generator.pipe.tokenizer
    tokenizer.model_max_length = max(len(tokenizer(generator.prompt(c)).input_ids) for c in range(len(NAMES)))
    with pytest.raises(ReglError, match="more than the text encoder reads"):
        lora_module._check_style_token(generator, "sks")
