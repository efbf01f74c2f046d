"""The fill's client LoRA is kept per base weights and recipe: a base retrained in place gets a new LoRA."""

import json
from dataclasses import replace

import pytest
import torch

from regl.data.datasets import BUILTINS
from regl.data.partitions import PartitionSpec
from regl.errors import ReglError
from regl.fill.client import ClientFill
from regl.fill.settings import FillSettings, client_plan
from regl.fl.experiment import ExperimentSettings, client_data
from regl.generate.generator import load_pipeline
from regl.generate.prompts import class_prompts, prompt_words, template_for
from regl.generate.tiny_sd import TEST_SD, build_pipeline

SETTINGS = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("classes", 10, classes_per_client=1))


TEMPLATE = template_for("mnist-10k")


def _base(tmp_path):
    base = tmp_path / "base"
    words = prompt_words(class_prompts(BUILTINS["mnist-10k"].class_names, TEMPLATE))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(base)
    return base


def _fill_settings(tmp_path, base) -> FillSettings:
    return FillSettings(
        mode="diffusion", supplement=0.5, lora_steps=1, prior_per_class=0, steps=1, base=str(base),
        store=str(tmp_path / "store"),
    )  # fmt: skip


def _loras(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "store").glob("lora-client-0-*"))


def test_a_retrained_base_gets_its_own_lora(tmp_path):
    base = _base(tmp_path)
    data = client_data(SETTINGS, 0).subset(list(range(8)))
    settings = _fill_settings(tmp_path, base)
    fill = ClientFill("mnist-10k", TEMPLATE, 0, 0, settings)
    plan = client_plan(settings, data.class_counts(), None)

    fill.make_shards(data, plan, {})
    first = _loras(tmp_path)
    fill.make_shards(data, plan, {})
    assert _loras(tmp_path) == first and len(first) == 1  # the same base: the LoRA is reused

    pipe = load_pipeline(base)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(0.1)
    pipe.save_pretrained(base)  # the base retrained in place: same path, other weights
    shards = fill.make_shards(data, plan, {})
    assert len(_loras(tmp_path)) == 2 and len(shards["diffusion"]) == plan.counts["diffusion"].sum()


def test_the_fills_style_token_trains_its_own_lora_and_is_refused_when_not_one_word(tmp_path):
    base = _base(tmp_path)
    data = client_data(SETTINGS, 0).subset(list(range(8)))
    plain = _fill_settings(tmp_path, base)
    plan = client_plan(plain, data.class_counts(), None)
    ClientFill("mnist-10k", TEMPLATE, 0, 0, plain).make_shards(data, plan, {})
    ClientFill("mnist-10k", TEMPLATE, 0, 0, replace(plain, lora_style_token="sks")).make_shards(data, plan, {})
    tokens = sorted(
        json.loads((tmp_path / "store" / name / "regl_lora.json").read_text())["settings"]["style_token"]
        for name in _loras(tmp_path)
    )
    assert tokens == ["", "sks"]
    with pytest.raises(ReglError, match="one word"):
        replace(plain, lora_style_token="a photo").check()
