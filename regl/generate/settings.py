"""Sampling and LoRA settings, free of torch: the CLI, the fill and the service take their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

CLASSES_OF = "fashion-mnist"  # whose class names, prompt template and image format, when no data says
TORCH_THREADS = 2  # generation and fine-tuning take both cores of a small CPU


@dataclass(frozen=True)
class SamplingSettings:
    """How images are drawn from a pipeline."""

    steps: int = 20
    guidance: float = 3.0
    scheduler: str = "dpm"
    batch_size: int = 64  # images per pipeline call


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 4
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    snr_gamma: float | None = 5.0
    prior_per_class: int = 32  # base images per missing class; 0 turns prior preservation off
    checkpoint_every: int = 100
    seed: int = 0
