"""`regl bench-generator`: generation, LoRA and one client's fill, with the fraction of peak reached.

A CPU's peak FP32 is estimated as cores × FLOP/cycle × clock; the defaults describe this
project's machine (AMD EPYC with AVX-512: 32 FP32 FLOP/cycle/core from two 256-bit FMA
pipes) and can be overridden, as nanoGPT's estimate_mfu assumes an A100's peak. A GPU's
is its dense tensor-core figure from the vendor's data sheet (`GPU_PEAK_TFLOPS`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from regl.compute import Compute
from regl.data.datasets import load_split
from regl.generate.cost_model import FillCost, describe, hours
from regl.generate.generator import FEW_STEP_FOLDER, LORA_FILE, Generator, image_seed
from regl.generate.settings import FILL_SAMPLING, LoraSettings, SamplingSettings

# Dense float16/bfloat16 tensor-core TFLOP/s by the name torch reports (float32: the TF32 figure is
# not used, FP32 CUDA-core figures are in the second place).
GPU_PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3)}
# The demo's fill settings (`make demo`), for the one-client fill profile.
DEMO_FILL = {"supplement": 0.2, "lora_steps": 100, "prior_per_class": 8, "sampler": "lcm", "steps": 1}
FEW_STEPS = 1  # the few-step sampler's steps in these figures: the fill's (results/sampler-few-step)
CLIENTS = 1000  # the federation the cost model predicts for


def cpu_clock_ghz() -> float:
    """The highest current core clock the kernel reports; 2.5 GHz when unreadable."""
    try:
        speeds = [
            float(line.split(":")[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")
        ]
        return max(speeds) / 1000
    except (OSError, ValueError, IndexError):
        return 2.5


def unet_flops_per_call(pipe, batch: int) -> int:
    """FLOPs of one UNet forward on `batch` latents, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    size = unet.config.sample_size
    like = {"device": unet.device, "dtype": unet.dtype}
    latents = torch.randn(batch, unet.config.in_channels, size, size, **like)
    context = torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, **like)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents, torch.full((batch,), 500, device=unet.device), context)
    return counter.get_total_flops()


def bench_generation(
    generator: Generator, batch: int, steps: int, guidance: float, scheduler: str = "dpm", repeats: int = 2
) -> dict:
    labels = [i % len(generator.class_names) for i in range(batch)]
    sampling = {"guidance": guidance, "scheduler": scheduler}
    generator.generate(labels[:2], [0, 1], steps=2, **sampling)  # warm-up
    best = float("inf")
    for r in range(repeats):
        _synchronize(generator.compute)
        started = time.perf_counter()
        generator.generate(labels, [image_seed(r, i) for i in range(batch)], steps=steps, batch_size=batch, **sampling)
        _synchronize(generator.compute)
        best = min(best, time.perf_counter() - started)
    passes = steps * passes_per_step(scheduler, guidance)
    flops = unet_flops_per_call(generator.pipe, batch) * passes
    return {
        "images_per_second": batch / best,
        "seconds": best,
        "unet_flops_per_second": flops / best,
        "pass_seconds": best / (batch * passes),
    }


def passes_per_step(scheduler: str, guidance: float) -> int:
    """UNet passes per image and step: two with classifier-free guidance, one without or with the few-step
    sampler (its guidance folded into the adapter)."""
    return 2 if guidance > 1 and scheduler != "lcm" else 1


def _synchronize(compute: Compute) -> None:
    if compute.device == "cuda":
        torch.cuda.synchronize()


def bench_lora_finetune(base: Path, dataset: str, steps: int, compute: Compute) -> dict:
    """A default per-client fine-tune on client 0 of a one-class-per-client partition."""
    from regl.data.partitions import PartitionSpec
    from regl.fl.experiment import ExperimentSettings, client_data
    from regl.generate.lora import finetune_lora
    from regl.generate.prompts import template_for

    settings = ExperimentSettings(dataset=dataset, partition=PartitionSpec("classes", 10, classes_per_client=1))
    data = client_data(settings, 0)
    names = load_split(dataset).test.class_names
    with tempfile.TemporaryDirectory() as out:
        result = finetune_lora(
            data,
            names,
            template_for(dataset),
            base,
            Path(out) / "lora",
            LoraSettings(steps=steps, early_stop=0.0),  # every step: a rate is measured
            show_progress=False,
            compute=compute,
        )
    timings = dict(result.timings)
    timings["steps_per_second"] = steps / timings["train_seconds"]
    timings["client_images"] = len(data)
    return timings


def bench_natural_noise(resolution: int, channels: int, n: int = 512) -> float:
    """Natural-noise images per second (best of two)."""
    from regl.generate.natural_noise import natural_noise

    natural_noise(8, 0, resolution, channels)  # warm-up
    best = float("inf")
    for seed in range(2):
        started = time.perf_counter()
        natural_noise(n, seed, resolution, channels)
        best = min(best, time.perf_counter() - started)
    return n / best


def bench_client_fill(base: Path, compute_names: tuple[str, str]) -> list[dict]:
    """Client 0 of `make demo` (mnist-10k, 2 classes per client): its LoRA and diffusion fill, end to end; twice in
    one store, with two run seeds: the first draws the LoRA's prior images, the second finds them cached, as
    every client after the first does in a run."""
    from regl.data.partitions import PartitionSpec
    from regl.fill.client import ClientFill
    from regl.fill.settings import FillSettings, client_plan
    from regl.fl.experiment import ExperimentSettings, client_data
    from regl.generate.generator import LORA_METADATA
    from regl.generate.prompts import template_for

    dataset = "mnist-10k"
    data = client_data(ExperimentSettings(dataset=dataset, partition=PartitionSpec("classes", 10)), 0)
    device, dtype = compute_names
    measured = []
    with tempfile.TemporaryDirectory() as store:
        settings = FillSettings(mode="diffusion", base=str(base), store=store, device=device, dtype=dtype, **DEMO_FILL)
        for run_seed in (0, 1):
            fill = ClientFill(dataset, template_for(dataset), 0, run_seed, settings)
            plan = client_plan(settings, data.class_counts(), None)
            started = time.perf_counter()
            images, timings = fill.make(data, plan, None)
            timings["total_seconds"] = time.perf_counter() - started
            lora = fill.lora_folder(data, base) / LORA_METADATA
            timings["lora"] = json.loads(lora.read_text())["timings"]
            timings["images"] = len(images)
            timings["store_seconds"] = (
                timings["total_seconds"] - timings["finetune_seconds"] - timings["generate_seconds"]
            )
            measured.append(timings)
    return measured


def peak_flops(compute: Compute, threads: int, flop_per_cycle: int) -> tuple[float, str]:
    """The hardware's peak for the generator's arithmetic, and how it was found."""
    if compute.device == "cuda":
        name = torch.cuda.get_device_name()
        half = compute.weights != "float32" or compute.autocast is not None
        for model, (tensor, fp32) in GPU_PEAK_TFLOPS.items():
            if model in name:
                peak = tensor if half else fp32
                return peak * 1e12, f"{name}: {peak:.0f} TFLOP/s ({'tensor-core 16-bit' if half else 'FP32'}, dense)"
        return float("nan"), f"{name}: peak unknown (add it to GPU_PEAK_TFLOPS)"
    peak = threads * flop_per_cycle * cpu_clock_ghz() * 1e9
    how = f"{flop_per_cycle} FP32 FLOP/cycle/core at {cpu_clock_ghz():.2f} GHz"
    if compute.autocast == "bfloat16":  # AVX512-BF16's dot products: twice the FP32 FLOPs per instruction
        peak, how = 2 * peak, how + ", ×2 for BF16 dot products"
    return peak, f"{peak / 1e9:.0f} GFLOP/s ({how})"


def run_benchmark(
    base: Path,
    dataset: str,
    threads: int,
    flop_per_cycle: int,
    lora_steps: int,
    compute_names: tuple[str, str] = ("auto", "auto"),
) -> str:
    from regl.compute import resolve
    from regl.generate.prompts import template_for

    torch.set_num_threads(threads)
    names = load_split(dataset).test.class_names
    generator = Generator(base, names, template_for(dataset), compute=resolve(*compute_names))
    peak, how = peak_flops(generator.compute, threads, flop_per_cycle)
    lines = [
        f"machine: {os.cpu_count()} CPUs, torch threads {threads}; generator on {generator.compute.describe()}; "
        f"assumed peak {how}"
    ]
    samplings = [("the fill's sampling", FILL_SAMPLING), ("plain generation", SamplingSettings())]
    if (base / FEW_STEP_FOLDER / LORA_FILE).is_file():
        samplings.append(("the few-step sampler", replace(FILL_SAMPLING, steps=FEW_STEPS, scheduler="lcm")))
    measured = {}
    for label, sampling in samplings:
        measured[label] = result = bench_generation(
            generator, 64, sampling.steps, sampling.guidance, sampling.scheduler
        )
        lines.append(
            f"generate ({label}: batch 64, {sampling.steps} {sampling.scheduler} steps, guidance "
            f"{sampling.guidance:g}): {result['images_per_second']:.1f} images/s ({result['seconds']:.2f}s); UNet "
            f"{result['unet_flops_per_second'] / 1e9:.1f} GFLOP/s = "
            f"{100 * result['unet_flops_per_second'] / peak:.1f}% of peak"
        )
    test = load_split(dataset).test
    lines.append(
        f"natural noise {test.resolution}×{test.resolution}×{test.channels}: "
        f"{bench_natural_noise(test.resolution, test.channels):.0f} images/s"
    )
    timings = bench_lora_finetune(base, dataset, lora_steps, resolve(*compute_names, "training"))
    lines.append(
        f"LoRA fine-tune ({timings['client_images']} client images, {lora_steps} steps, "
        f"batch {LoraSettings().batch_size}): "
        f"{timings['steps_per_second']:.2f} steps/s; wall {timings['total_seconds']:.1f}s = pipeline load "
        f"{timings['load_seconds']:.1f}s + prior images {timings['prior_seconds']:.1f}s + caching "
        f"{timings['cache_seconds']:.1f}s + training {timings['train_seconds']:.1f}s"
    )
    fills = bench_client_fill(base, compute_names)
    for fill, priors in zip(fills, ("drawn", "cached"), strict=True):
        lora = fill["lora"]
        lines.append(
            f"one client's fill (make demo's client 0: {fill['images']} images, {fill['lora_steps']} of at most "
            f"{DEMO_FILL['lora_steps']} LoRA steps, {DEMO_FILL['steps']} {DEMO_FILL['sampler']} step, "
            f"priors {priors}): "
            f"{fill['total_seconds']:.1f}s = LoRA {fill['finetune_seconds']:.1f}s (load {lora['load_seconds']:.1f}s, "
            f"priors {lora['prior_seconds']:.1f}s, caching {lora['cache_seconds']:.1f}s, training "
            f"{lora['train_seconds']:.1f}s) + generation {fill['generate_seconds']:.1f}s + store "
            f"{fill['store_seconds']:.1f}s"
        )
    fill = fills[-1]
    fill_sampling = measured["the fill's sampling"]
    cost = FillCost(
        setup_seconds=fill["lora"]["load_seconds"] + fill["lora"]["cache_seconds"],  # the demo client's, its images
        lora_step_seconds=1 / timings["steps_per_second"],
        pass_seconds=fill_sampling["pass_seconds"],
        pass_flops=unet_flops_per_call(generator.pipe, 1),
    )
    lines += cost_lines(
        cost,
        fill["images"],
        fill["lora_steps"],
        fill_sampling["unet_flops_per_second"] / peak,
        measured["the few-step sampler"]["pass_seconds"] if "the few-step sampler" in measured else None,
    )
    return "\n".join(lines)


def cost_lines(
    cost: FillCost, images: int, lora_steps: int, utilisation: float, few_step_pass_seconds: float | None
) -> list[str]:
    """The cost model and its predictions for CLIENTS clients of `images` images and `lora_steps` LoRA steps each.

    The few-step sampler's pass is measured with its adapter's LoRA layers unfused, as the fill runs it; the GPU
    prediction counts the base's FLOPs, as if the adapter were fused into the weights.
    """
    few_label = f"{FEW_STEPS} lcm step{'s' * (FEW_STEPS > 1)}"
    lines = [f"cost model (measured here): a client's fill ≈ {describe(cost)}"]
    if few_step_pass_seconds is not None:
        lines.append(f"the few-step sampler's UNet pass (its adapter unfused): {1000 * few_step_pass_seconds:.3f} ms")
    name, (tensor, _) = "H100", GPU_PEAK_TFLOPS["H100"]
    on_gpu = cost.on_device(tensor * 1e12, utilisation)
    for where, model, few_step in (
        ("on this CPU", cost, few_step_pass_seconds and replace(cost, pass_seconds=few_step_pass_seconds)),
        (
            f"on an {name} ({tensor:.0f} TFLOP/s dense 16-bit) at this CPU's {100 * utilisation:.1f}% of peak",
            on_gpu,
            few_step_pass_seconds and on_gpu,
        ),
    ):
        work = [("10 dpm steps with guidance", model, FILL_SAMPLING.steps, 2)]
        if few_step:
            work.append((few_label, few_step, FEW_STEPS, 1))
        figures = "; ".join(
            f"{label}: {hours(CLIENTS * m.client_seconds(images, steps, passes, lora_steps))}"
            for label, m, steps, passes in work
        )
        lines.append(
            f"prediction, {CLIENTS:,} clients of {images} images with {lora_steps} LoRA steps each, {where}: {figures}"
        )
    return lines
