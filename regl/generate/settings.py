"""Sampling and LoRA settings, free of torch: the CLI, the fill and the service take their defaults from here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regl.errors import ReglError

CLASSES_OF = "fashion-mnist"  # whose class names, prompt template and image format, when no data says
TORCH_THREADS = 2  # generation and fine-tuning take both cores of a small CPU


@dataclass(frozen=True)
class SamplingSettings:
    """How images are drawn from a pipeline."""

    steps: int = 20
    guidance: float = 3.0
    scheduler: str = "dpm"
    batch_size: int = 64  # images per pipeline call


# The fill's sampling (and the warm start's), chosen by train-on-synthetic-test-on-real (README,
# "changes tried"): 10 steps train a classifier as well as 20 at less than half the time, and
# guidance 1.5 better than 3. Plain generation, the service's /v1/generate and a LoRA's prior
# images keep SamplingSettings(), which the base's model card measures.
FILL_SAMPLING = SamplingSettings(steps=10, guidance=1.5)


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 4
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 16  # 32 cost twice the time for the same demo accuracy (README, "Speed")
    snr_gamma: float | None = 5.0
    prior_per_class: int = 32  # base images per missing class; 0 turns prior preservation off
    prior_steps: int = FILL_SAMPLING.steps  # how the priors are drawn: the fill's sampling (README, "Speed")
    prior_guidance: float = FILL_SAMPLING.guidance
    # DreamBooth's identifier for the client's look: appended to its own images' prompts (not
    # the priors') and to every prompt the LoRA generates with; empty: off
    style_token: str = ""
    checkpoint_every: int = 100
    seed: int = 0


# A style token is one plain word (or empty: none), so every prompt holds it whole.
STYLE_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{0,32}$"


def check_style_token(token: str) -> None:
    if not re.fullmatch(STYLE_TOKEN_PATTERN, token):
        raise ReglError(f"the style token must be one word of letters, digits, '_' or '-' (at most 32), got {token!r}")
