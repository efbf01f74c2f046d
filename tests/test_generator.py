"""Generator and LoRA on a tiny random Stable Diffusion built from configs (no downloads)."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate import lora as lora_module
from regl.generate.generator import LORA_METADATA, MAX_IMAGES, Generator, load_pipeline, save_pngs, to_dataset_format
from regl.generate.lora import finetune_lora
from regl.generate.prompts import class_prompts, prompt_words
from regl.generate.settings import LoraSettings
from regl.generate.tiny_sd import TEST_SD, build_pipeline

CLASSES = ("sneaker", "bag", "coat")
TEMPLATE = "a photo of a {}"
FAST = {"steps": 2, "guidance": 2.0}


@pytest.fixture(scope="module")
def base(three_class_base):
    return three_class_base


@pytest.fixture(scope="module")
def generator(base):
    return Generator(base, CLASSES, TEMPLATE)


def a_bag(pipe, **options) -> np.ndarray:
    """One 2-step image of a bag from a stock diffusers pipeline call, seed 3; `options` go to the call."""
    return pipe(
        "a photo of a bag",
        **{"num_inference_steps": 2, **options},
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images


def client_data(labels):
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 255, (len(labels), 28, 28, 1), dtype=np.uint8), np.array(labels), CLASSES)


def test_generation_is_deterministic_per_seed_and_batch_independent(generator):
    a = generator.generate_class(1, 3, seed=5, **FAST)
    b = generator.generate_class(1, 3, seed=5, **FAST)
    c = generator.generate_class(1, 3, seed=6, **FAST)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # an image depends on its own (class, seed) only, not on what shares its batch
    mixed = generator.generate([0, 1, 2], [11, 22, 33], **FAST)
    alone = generator.generate([1], [22], **FAST)
    assert np.abs(mixed[1].astype(int) - alone[0].astype(int)).max() <= 1


def test_generation_reports_each_pipeline_call(generator):
    done = []
    generator.generate([0, 1, 2], [1, 2, 3], batch_size=2, on_batch=done.append, **FAST)
    assert done == [2, 3]


def test_dataset_format_crops_padding_and_grays():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[:, 2:30, 2:30] = [30, 60, 90]
    out = to_dataset_format(images, 28, 1)
    assert out.shape == (2, 28, 28, 1) and np.all(out == 60)
    assert to_dataset_format(images, 64, 3).shape == (2, 64, 64, 3)


def test_pngs_are_written(tmp_path, generator):
    paths = save_pngs(to_dataset_format(generator.generate_class(0, 2, seed=1, **FAST), 28, 1), tmp_path, "sneaker")
    assert [p.name for p in paths] == ["sneaker_00000.png", "sneaker_00001.png"]
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_model_folders_are_named(tmp_path, base):
    with pytest.raises(ReglError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReglError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(ReglError, match="not valid JSON"):
        load_pipeline(broken)
    partial = tmp_path / "partial"
    shutil.copytree(base, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(ReglError, match="lacks the `vae` component"):
        load_pipeline(partial)


@pytest.mark.parametrize("n", [0, -3, MAX_IMAGES + 1, 10**9])
def test_bad_counts_are_refused(generator, n):
    with pytest.raises(ReglError, match="n must be between 1"):
        generator.generate_class(0, n, seed=0)


def test_unknown_scheduler_is_refused(generator):
    with pytest.raises(ReglError, match="unknown scheduler 'plms'"):
        generator.generate([0], [0], scheduler="plms")


@pytest.mark.parametrize("scheduler", ["dpm-sde", "euler-a", "ddpm"])
def test_stochastic_samplers_are_deterministic_per_seed_and_leave_the_next_sampler_as_it_was(generator, scheduler):
    before = generator.generate_class(1, 2, seed=5, scheduler="dpm", **FAST)
    a = generator.generate_class(1, 2, seed=5, scheduler=scheduler, **FAST)
    b = generator.generate_class(1, 2, seed=5, scheduler=scheduler, **FAST)
    after = generator.generate_class(1, 2, seed=5, scheduler="dpm", **FAST)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, before)
    assert np.array_equal(before, after)  # dpm-sde's algorithm type does not stick to dpm


LORA = LoraSettings(rank=4, steps=6, lr=0.05, batch_size=4, prior_per_class=2, checkpoint_every=2)


def test_lora_saved_then_stock_loaded_matches_memory_and_differs_from_base(tmp_path, base, generator):
    result = finetune_lora(client_data([0] * 6), CLASSES, TEMPLATE, base, tmp_path / "lora", LORA)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "lora" / "checkpoint").exists()
    meta = json.loads((tmp_path / "lora" / "regl_lora.json").read_text())
    assert meta["client_class_counts"] == [6, 0, 0]
    in_memory_pipe = result.generator.pipe
    in_memory_pipe.scheduler = load_pipeline(base).scheduler  # generation switched it; compare like with like
    in_memory = a_bag(in_memory_pipe)
    stock = load_pipeline(base)
    stock.load_lora_weights(tmp_path / "lora")  # a plain diffusers call
    loaded = a_bag(stock)
    plain = a_bag(load_pipeline(base))
    np.testing.assert_allclose(loaded, in_memory, atol=1e-5)
    assert np.abs(loaded - plain).max() > 1e-3


def test_priors_are_drawn_once_per_base_and_sampling_setting_and_shared_by_clients(tmp_path, base, monkeypatch):
    from dataclasses import replace

    from regl.generate.lora import prior_images

    drawn = []
    real = Generator.generate

    def counted(self, labels, *args, **kwargs):
        drawn.append(list(labels))
        return real(self, labels, *args, **kwargs)

    monkeypatch.setattr(Generator, "generate", counted)
    cache, settings = tmp_path / "priors", replace(LORA, prior_per_class=2, prior_steps=2)
    generator = Generator(base, CLASSES, TEMPLATE)
    first = prior_images(generator, [1, 2], settings, cache)  # a client lacking a bag and a coat
    second = prior_images(generator, [0, 2], settings, cache)  # another, lacking a sneaker and a coat
    assert drawn == [[1, 1, 2, 2], [0, 0]]  # the coats come from the cache
    np.testing.assert_array_equal(second[2:], first[2:])
    np.testing.assert_array_equal(prior_images(generator, [0, 2], settings), second)  # as drawn without a cache
    prior_images(generator, [1], replace(settings, prior_steps=3), cache)
    prior_images(generator, [1], replace(settings, prior_guidance=1.0), cache)
    other = tmp_path / "other"
    build_pipeline(TEST_SD, prompt_words(class_prompts(CLASSES, TEMPLATE)), tmp_path / "w", seed=1).save_pretrained(
        other
    )
    prior_images(Generator(other, CLASSES, TEMPLATE), [1], settings, cache)
    assert drawn[3:] == [[1, 1]] * 3  # another sampling setting or base draws its own
    assert len(list(cache.glob("prior-*.npy"))) == 6


def test_resume_continues_from_the_checkpointed_step(tmp_path, base, monkeypatch):
    data = client_data([0, 0, 1, 1])
    full = finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "full", LORA)

    calls = {"n": 0}
    real_loss = lora_module.denoising_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the fixed-noise loss at step 0, steps 1 and 2 (checkpoint), dies in step 3
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(lora_module, "denoising_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "cut", LORA)
    state = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 2
    with pytest.raises(ReglError, match="pass --resume"):
        finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "cut", LORA)

    calls["n"] = -100
    resumed_steps = []
    monkeypatch.setattr(lora_module, "denoising_loss", lambda *a, **k: resumed_steps.append(1) or real_loss(*a, **k))
    resumed = finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "cut", LORA, resume=True)
    assert len(resumed_steps) == LORA.steps - 2 + 1  # and the fixed-noise loss at the end
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed.timings["train_seconds"] > 0 and full.timings["train_seconds"] > 0
    full_curve, cut_curve = (json.loads((tmp_path / run / LORA_METADATA).read_text()) for run in ("full", "cut"))
    assert len(full_curve["loss_every_10_steps"]) == 1  # 6 steps
    assert cut_curve["loss_every_10_steps"] == pytest.approx(full_curve["loss_every_10_steps"])  # kept across the stop
    assert [step for step, _ in full_curve["fixed_noise_loss"]] == [0, 6]  # every 20 steps and the last
    np.testing.assert_allclose(cut_curve["fixed_noise_loss"], full_curve["fixed_noise_loss"], rtol=1e-5)


def test_a_lora_that_learns_nothing_stops_at_its_first_fixed_noise_check(tmp_path, base):
    data = client_data([0, 0, 1, 1])
    stalled = replace(LORA, steps=50, lr=1e-12, prior_per_class=0)  # the loss cannot fall
    stopped = finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "stopped", stalled)
    assert stopped.steps_run == 20
    meta = json.loads((tmp_path / "stopped" / LORA_METADATA).read_text())
    assert meta["steps_run"] == 20 and [step for step, _ in meta["fixed_noise_loss"]] == [0, 20]
    assert len(meta["loss_every_10_steps"]) == 2
    every_step = finetune_lora(data, CLASSES, TEMPLATE, base, tmp_path / "all", replace(stalled, early_stop=0.0))
    assert every_step.steps_run == 50


def test_resume_without_checkpoint_is_refused(tmp_path, base):
    with pytest.raises(ReglError, match="holds no checkpoint"):
        finetune_lora(client_data([0, 1]), CLASSES, TEMPLATE, base, tmp_path / "none", LORA, resume=True)


def test_lora_from_another_base_is_refused(tmp_path, base):
    finetune_lora(client_data([0, 1]), CLASSES, TEMPLATE, base, tmp_path / "lora", LORA)
    other = tmp_path / "other"
    pipe = build_pipeline(TEST_SD, prompt_words(class_prompts(CLASSES, TEMPLATE)), tmp_path / "w", seed=1)
    pipe.save_pretrained(other)
    with pytest.raises(ReglError, match="trained on another base model"):
        Generator(other, CLASSES, TEMPLATE, lora=tmp_path / "lora")
    (tmp_path / "lora" / "regl_lora.json").unlink()  # without metadata the shapes still have to fit
    bigger = tmp_path / "bigger"
    from dataclasses import replace

    build_pipeline(
        replace(TEST_SD, unet_channels=(32, 64)), prompt_words(class_prompts(CLASSES, TEMPLATE)), tmp_path / "w2"
    ).save_pretrained(bigger)
    with pytest.raises(ReglError, match="does not fit this base model"):
        Generator(bigger, CLASSES, TEMPLATE, lora=tmp_path / "lora")


def test_training_images_are_padded_with_their_own_edges_not_a_black_frame():
    from regl.data.datasets import ImageDataset
    from regl.generate.diffusion_loss import to_pipeline_pixels

    x = np.zeros((2, 28, 28, 1), np.uint8)
    x[0] = 255  # a light background, as the negative look's
    x[1, :, 14:] = 200  # half dark, half light: each side keeps its own
    pixels = to_pipeline_pixels(ImageDataset(x, np.zeros(2, np.int64), ("a",))).numpy()
    assert pixels.shape == (2, 3, 32, 32)
    assert np.all(pixels[0] == 1.0)
    assert np.all(pixels[1, :, :, :16] == -1.0) and np.allclose(pixels[1, :, :, 16:], 200 / 127.5 - 1)
