"""The fill's client LoRA is kept per base weights: a base retrained in place gets a new LoRA, not an error."""

import torch

from regl.data.datasets import BUILTINS
from regl.data.partitions import PartitionSpec
from regl.fill.client import ClientFill, FillSettings, client_plan
from regl.fl.experiment import ExperimentSettings, client_data
from regl.generate.generator import load_pipeline
from regl.generate.prompts import class_prompts, prompt_words, template_for
from regl.generate.tiny_sd import TEST_SD, build_pipeline

SETTINGS = ExperimentSettings(dataset="mnist-10k", partition=PartitionSpec("classes", 10, classes_per_client=1))


def test_a_retrained_base_gets_its_own_lora(tmp_path):
    template = template_for("mnist-10k")
    base = tmp_path / "base"
    words = prompt_words(class_prompts(BUILTINS["mnist-10k"].class_names, template))
    build_pipeline(TEST_SD, words, tmp_path / "work").save_pretrained(base)
    data = client_data(SETTINGS, 0)
    data = data.subset(list(range(8)))
    settings = FillSettings(
        mode="diffusion", supplement=0.5, lora_steps=1, prior_per_class=0, steps=1, base=str(base),
        store=str(tmp_path / "store"),
    )  # fmt: skip
    fill = ClientFill("mnist-10k", template, 0, 0, settings)
    plan = client_plan(settings, data.class_counts(), None)

    def loras() -> list[str]:
        return sorted(p.name for p in (tmp_path / "store").glob("lora-client-0-*"))

    fill.make_shards(data, plan, {})
    first = loras()
    fill.make_shards(data, plan, {})
    assert loras() == first and len(first) == 1  # the same base: the LoRA is reused

    pipe = load_pipeline(base)
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(0.1)
    pipe.save_pretrained(base)  # the base retrained in place: same path, other weights
    shards = fill.make_shards(data, plan, {})
    assert len(loras()) == 2 and len(shards["diffusion"]) == plan.counts["diffusion"].sum()
