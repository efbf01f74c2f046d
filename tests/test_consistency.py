"""The few-step adapter: LCM distillation on a tiny random base, loaded and stacked by stock diffusers."""

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from regl.generate import consistency as consistency_module
from regl.generate.consistency import boundary_scalings, consistency, distill
from regl.generate.generator import load_pipeline
from regl.generate.lora import finetune_lora
from regl.generate.pretrain import PublicTrainingSet
from regl.generate.settings import DistillSettings, LoraSettings
from tests.test_generator import CLASSES, TEMPLATE, a_bag, client_data

SETTINGS = DistillSettings(steps=4, batch_size=4, rank=4, checkpoint_every=2)


def tiny_set() -> PublicTrainingSet:
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32))
    return PublicTrainingSet(pixels, torch.arange(12) % 3, [TEMPLATE.format(c) for c in CLASSES] + [""])


def test_the_boundary_scalings_are_lcm_schedulers():
    scheduler = LCMScheduler()
    for t in (0, 19, 500, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        expected = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert (float(c_skip), float(c_out)) == pytest.approx(expected)
    z, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alphas = torch.linspace(0.99, 0.01, 1000)
    torch.testing.assert_close(consistency(z, noise, torch.tensor([0, 0]), alphas), z)  # f(z, 0) = z


def test_the_adapter_loads_in_stock_diffusers_and_a_client_lora_stacks_on_it(tmp_path, three_class_base):
    record = distill(three_class_base, tmp_path / "lcm", tiny_set(), SETTINGS)
    assert len(record["loss_every_100_steps"]) == 1 and np.isfinite(record["loss_every_100_steps"][0])
    finetune_lora(client_data([0] * 4), CLASSES, TEMPLATE, three_class_base, tmp_path / "client", LoraSettings(steps=2))
    pipe = load_pipeline(three_class_base)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    plain = a_bag(pipe, guidance_scale=1.0)
    pipe.load_lora_weights(tmp_path / "lcm", adapter_name="lcm")  # plain diffusers calls from here on
    pipe.load_lora_weights(tmp_path / "client", adapter_name="client")
    pipe.set_adapters(["lcm"])
    few_step = a_bag(pipe, guidance_scale=1.0)
    pipe.set_adapters(["lcm", "client"], adapter_weights=[1.0, 1.0])
    stacked = a_bag(pipe, guidance_scale=1.0)
    assert np.abs(few_step - plain).max() > 1e-3 and np.abs(stacked - few_step).max() > 1e-3


def test_distillation_resumes_from_its_checkpoint(tmp_path, three_class_base, monkeypatch):
    full = distill(three_class_base, tmp_path / "full", tiny_set(), SETTINGS)
    calls = {"n": 0}
    real = consistency_module.distillation_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # dies in step 4, after step 2's checkpoint
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(consistency_module, "distillation_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(three_class_base, tmp_path / "cut", tiny_set(), SETTINGS)
    monkeypatch.setattr(consistency_module, "distillation_loss", real)
    with pytest.raises(Exception, match="pass --resume"):
        distill(three_class_base, tmp_path / "cut", tiny_set(), SETTINGS)
    resumed = distill(three_class_base, tmp_path / "cut", tiny_set(), SETTINGS, resume=True)
    assert resumed["loss_every_100_steps"] == pytest.approx(full["loss_every_100_steps"])
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_the_lcm_sampler_uses_the_bases_few_step_adapter_at_its_folded_guidance(tmp_path, three_class_base):
    import shutil

    from regl.compute import Compute
    from regl.errors import ReglError
    from regl.generate.generator import FEW_STEP_FOLDER, Generator

    base = tmp_path / "base"
    shutil.copytree(three_class_base, base)
    generator = Generator(base, CLASSES, TEMPLATE, compute=Compute("cpu"))  # float32, as the stock call below
    with pytest.raises(ReglError, match="needs the base's few-step adapter"):
        generator.generate([1], [3], steps=2, scheduler="lcm", guidance=SETTINGS.guidance)
    distill(base, base / FEW_STEP_FOLDER, tiny_set(), SETTINGS)
    before = generator.generate([1], [3], steps=2)
    with pytest.raises(ReglError, match="has guidance 1.5 folded in"):
        generator.generate([1], [3], steps=2, scheduler="lcm", guidance=3.0)
    few_step = generator.generate([1], [3], steps=2, scheduler="lcm", guidance=SETTINGS.guidance)
    assert not np.array_equal(few_step, before)
    np.testing.assert_array_equal(generator.generate([1], [3], steps=2), before)  # switched off again

    pipe = load_pipeline(base)  # the same images from stock diffusers
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(base / FEW_STEP_FOLDER)
    stock = a_bag(pipe, guidance_scale=1.0)
    np.testing.assert_array_equal(np.clip(np.rint(stock * 255), 0, 255).astype(np.uint8), few_step)


def test_a_call_folds_its_adapters_in_and_puts_the_weights_back(tmp_path, three_class_base, monkeypatch):
    import contextlib
    import shutil

    from regl.compute import Compute
    from regl.generate.generator import FEW_STEP_FOLDER, Generator

    base = tmp_path / "base"
    shutil.copytree(three_class_base, base)
    distill(base, base / FEW_STEP_FOLDER, tiny_set(), SETTINGS)
    finetune_lora(client_data([0] * 4), CLASSES, TEMPLATE, base, tmp_path / "client", LoraSettings(steps=2))
    generator = Generator(base, CLASSES, TEMPLATE, lora=tmp_path / "client", compute=Compute("cpu"))
    sampling = {"steps": 2, "scheduler": "lcm", "guidance": SETTINGS.guidance}
    generator.generate([0], [0], **sampling)  # loads the few-step adapter
    weights = {name: value.clone() for name, value in generator.pipe.unet.state_dict().items()}
    fused = generator.generate([0, 1, 2], [1, 2, 3], **sampling)
    for name, value in generator.pipe.unet.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert not any(getattr(module, "merged", False) for module in generator.pipe.unet.modules())
    np.testing.assert_array_equal(generator.generate([0, 1, 2], [1, 2, 3], **sampling), fused)
    client_only = generator.generate([0, 1, 2], [1, 2, 3], steps=2)  # the few-step adapter loaded, not active
    monkeypatch.setattr(generator, "_adapters_fused", contextlib.nullcontext)
    unfused = generator.generate([0, 1, 2], [1, 2, 3], **sampling)
    assert np.abs(fused.astype(int) - unfused).max() <= 1  # float32: the same images but for rounding
    assert np.abs(client_only.astype(int) - generator.generate([0, 1, 2], [1, 2, 3], steps=2)).max() <= 1
