"""`regl bench-generator`: generation and LoRA speed, with the fraction of CPU peak reached.

Peak FP32 is estimated as cores × FLOP/cycle × clock; the defaults describe this
project's machine (AMD EPYC with AVX-512: 32 FP32 FLOP/cycle/core from two 256-bit FMA
pipes) and can be overridden, as nanoGPT's estimate_mfu assumes an A100's peak.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from regl.data.datasets import load_split
from regl.generate.generator import Generator, image_seed


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
    latents = torch.randn(batch, unet.config.in_channels, size, size)
    context = torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latents, torch.full((batch,), 500), context)
    return counter.get_total_flops()


def bench_generation(generator: Generator, batch: int, steps: int, guidance: float, repeats: int = 2) -> dict:
    labels = [i % len(generator.class_names) for i in range(batch)]
    generator.generate(labels[:2], [0, 1], steps=2, guidance=guidance)  # warm-up
    best = float("inf")
    for r in range(repeats):
        started = time.perf_counter()
        generator.generate(
            labels, [image_seed(r, i) for i in range(batch)], steps=steps, guidance=guidance, batch_size=batch
        )
        best = min(best, time.perf_counter() - started)
    unet_batch = batch * (2 if guidance > 1 else 1)
    flops = unet_flops_per_call(generator.pipe, unet_batch) * steps
    return {"images_per_second": batch / best, "seconds": best, "unet_flops_per_second": flops / best}


def bench_lora_finetune(base: Path, dataset: str, steps: int) -> dict:
    """A default per-client fine-tune on client 0 of a one-class-per-client partition."""
    from regl.data.partitions import PartitionSpec
    from regl.fl.experiment import ExperimentSettings, client_data
    from regl.generate.lora import finetune_lora
    from regl.generate.prompts import template_for
    from regl.generate.settings import LoraSettings

    settings = ExperimentSettings(dataset=dataset, partition=PartitionSpec("classes", 10, classes_per_client=1))
    data = client_data(settings, 0)
    names = load_split(dataset).test.class_names
    with tempfile.TemporaryDirectory() as out:
        result = finetune_lora(data, names, template_for(dataset), base, Path(out) / "lora", LoraSettings(steps=steps))
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


def run_benchmark(base: Path, dataset: str, threads: int, flop_per_cycle: int, lora_steps: int) -> str:
    from regl.generate.prompts import template_for

    torch.set_num_threads(threads)
    names = load_split(dataset).test.class_names
    generator = Generator(base, names, template_for(dataset))
    peak = threads * flop_per_cycle * cpu_clock_ghz() * 1e9
    lines = [
        f"machine: {os.cpu_count()} CPUs, torch threads {threads}, assumed peak "
        f"{peak / 1e9:.0f} GFLOP/s ({flop_per_cycle} FP32 FLOP/cycle/core at {cpu_clock_ghz():.2f} GHz)"
    ]
    for guidance in (3.0, 1.0):
        result = bench_generation(generator, batch=64, steps=20, guidance=guidance)
        lines.append(
            f"generate batch 64, 20 steps, guidance {guidance:g}: {result['images_per_second']:.1f} images/s "
            f"({result['seconds']:.2f}s); UNet {result['unet_flops_per_second'] / 1e9:.1f} GFLOP/s "
            f"= {100 * result['unet_flops_per_second'] / peak:.1f}% of peak"
        )
    test = load_split(dataset).test
    lines.append(
        f"natural noise {test.resolution}×{test.resolution}×{test.channels}: "
        f"{bench_natural_noise(test.resolution, test.channels):.0f} images/s"
    )
    timings = bench_lora_finetune(base, dataset, lora_steps)
    lines.append(
        f"LoRA fine-tune ({timings['client_images']} client images, {lora_steps} steps, batch 32): "
        f"{timings['steps_per_second']:.2f} steps/s; wall {timings['total_seconds']:.1f}s = prior images "
        f"{timings['prior_seconds']:.1f}s + caching {timings['cache_seconds']:.1f}s + training "
        f"{timings['train_seconds']:.1f}s"
    )
    return "\n".join(lines)
