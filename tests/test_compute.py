"""Device and precision selection (regl/compute.py), and a LoRA trained under bf16 autocast."""

import pytest
import torch
from safetensors.torch import load_file

from regl.compute import Compute, cpu_compute, resolve
from regl.errors import ReglError
from regl.generate.generator import LORA_FILE, load_pipeline
from regl.generate.lora import finetune_lora
from regl.generate.prompts import class_prompts, prompt_words
from regl.generate.settings import LoraSettings
from regl.generate.tiny_sd import TEST_SD, build_pipeline

ZEN3 = ["avx", "avx2", "fma", "sse4_2"]  # no bfloat16 instructions
ZEN4 = [*ZEN3, "avx512f", "avx512_bf16"]
SAPPHIRE_RAPIDS = [*ZEN4, "amx_bf16", "amx_tile"]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("purpose", ["inference", "training"])
def test_auto_is_float32_on_a_cpu_without_bf16(purpose):
    assert cpu_compute("auto", ZEN3, purpose) == Compute("cpu", "float32", None)


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS])
def test_auto_generates_in_bf16_autocast_and_trains_a_lora_in_float32_on_a_bf16_cpu(flags):
    assert cpu_compute("auto", flags, "inference") == Compute("cpu", "float32", "bfloat16")
    assert cpu_compute("auto", flags, "training") == Compute("cpu", "float32", None)
    assert cpu_compute("bfloat16", flags, "training") == Compute("cpu", "float32", "bfloat16")  # asked for


def test_cpu_refuses_what_it_cannot_run():
    with pytest.raises(ReglError, match="float16 needs a CUDA device"):
        cpu_compute("float16", SAPPHIRE_RAPIDS)
    with pytest.raises(ReglError, match="no bfloat16 instructions"):
        cpu_compute("bfloat16", ZEN3)
    assert cpu_compute("bfloat16", ZEN4) == Compute("cpu", "float32", "bfloat16")


def test_auto_device_is_cpu_without_cuda_and_cuda_is_refused(no_cuda):
    assert resolve("auto", "float32") == Compute("cpu")
    with pytest.raises(ReglError, match="sees no CUDA device"):
        resolve("cuda")


def test_auto_device_is_cuda_when_torch_reports_one(with_cuda):
    assert resolve() == Compute("cuda", "float16", None)  # generation: half-precision weights
    assert resolve("auto", "float32") == Compute("cuda", "float32", None)
    assert resolve("cpu").device == "cpu"  # asked for explicitly


@pytest.mark.parametrize("bf16", [True, False])
def test_a_lora_on_cuda_trains_over_float32_weights(with_cuda, monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    autocast = "bfloat16" if bf16 else None
    for dtype in ("auto", "float16"):  # float16 training would need loss scaling: bf16 autocast instead
        assert resolve("cuda", dtype, "training") == Compute("cuda", "float32", autocast)
    assert resolve("cuda", "float16") == Compute("cuda", "float16", None)
    if bf16:
        assert resolve("cuda", "bfloat16") == Compute("cuda", "bfloat16", None)
    else:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Tesla V100")
        with pytest.raises(ReglError, match="Tesla V100 has no bfloat16"):
            resolve("cuda", "bfloat16", "training")


@pytest.mark.parametrize("device,dtype", [("tpu", "auto"), ("auto", "float8")])
def test_unknown_names_are_refused(device, dtype):
    with pytest.raises(ReglError, match="unknown"):
        resolve(device, dtype)


def test_autocast_context_computes_in_bf16_on_cpu():
    a = torch.randn(4, 4)
    with Compute("cpu", "float32", "bfloat16").autocast_context():
        assert (a @ a).dtype == torch.bfloat16
    with Compute("cpu").autocast_context():
        assert (a @ a).dtype == torch.float32


def test_a_lora_trained_under_bf16_autocast_saves_float32_that_diffusers_loads(tmp_path):
    from test_generator import CLASSES, TEMPLATE, a_bag, client_data

    pipe = build_pipeline(TEST_SD, prompt_words(class_prompts(CLASSES, TEMPLATE)), tmp_path / "work", seed=0)
    pipe.save_pretrained(tmp_path / "base")
    settings = LoraSettings(rank=4, steps=4, lr=0.05, batch_size=4, prior_per_class=1, checkpoint_every=10)
    bf16 = Compute("cpu", "float32", "bfloat16")
    finetune_lora(client_data([0] * 4), CLASSES, TEMPLATE, tmp_path / "base", tmp_path / "lora", settings, compute=bf16)
    weights = load_file(tmp_path / "lora" / LORA_FILE)
    assert weights and {w.dtype for w in weights.values()} == {torch.float32}
    stock = load_pipeline(tmp_path / "base")
    plain = a_bag(stock)
    stock.load_lora_weights(tmp_path / "lora")
    assert abs(a_bag(stock) - plain).max() > 1e-4


def test_a_lora_is_refused_with_half_precision_weights(tmp_path):
    with pytest.raises(ReglError, match="float32 weights"):
        finetune_lora(None, (), "", tmp_path, tmp_path / "lora", LoraSettings(), compute=Compute("cuda", "float16"))
