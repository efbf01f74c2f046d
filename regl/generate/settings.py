"""Sampling and LoRA settings, free of torch: the CLI, the fill and the service take their defaults from here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regl.errors import ReglError
from regl.options import option
from regl.seeds import derive_seed

CLASSES_OF = "mnist-10k"  # whose class names, prompt template and image format when no data says, as regl fl
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


# A style token is one plain word (or empty: none), so every prompt holds it whole.
STYLE_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{0,32}$"

# How 28×28 images are padded to the pipeline's 32×32: each with its own edge pixels. A black pad drew a dark
# frame around every image on a light background (the negative look), which a LoRA learned and its generated
# images kept inside the 28×28 crop (their outer 2 pixels 143 of 255 against real images' 194): an artefact a
# classifier can tell the fill apart by. On a black background it is the black pad it replaces.
PADDING = "replicate"  # torch.nn.functional.pad mode

# The prior images of every client and run (regl/generate/lora.py:prior_images): one set per base, class prompt
# and sampling setting, drawn once and cached, where each client drew its own from its LoRA's seed before.
PRIOR_SEED = derive_seed(0, "lora-prior")

# Which UNet layers a LoRA adapts (regl/generate/lora.py names their modules).
LORA_TARGETS = ("attention", "all")


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA fine-tune: the options of `regl finetune` and of the service's POST /v1/finetune."""

    rank: int = option(4, "LoRA rank", ge=1, le=128, request=True)
    targets: str = option(
        "attention",
        "which UNet layers the LoRA adapts: attention (query, key, value and output projections: the diffusers "
        "recipe) or all (also the feed-forward layers, every ResNet block's convolutions and time projection, "
        "the UNet's first and last convolutions: a look the base never drew can need them)",
        choices=LORA_TARGETS,
        request=True,
    )
    steps: int = option(300, "optimiser steps at most (see early_stop)", ge=1, request=True)
    # 0.005: on make demo's clients (the base's own data) the loss does not fall and the LoRA stops at 20 steps;
    # on a look the base never saw it falls 8% in 300 steps and stops later (README, "A LoRA that costs seconds")
    early_stop: float = option(
        0.005,
        "stop when the fixed-noise loss (32 of the client's images, checked every 20 steps) has not fallen this "
        "fraction below its best; 0 runs every step",
        ge=0,
        le=0.5,
        request=True,
    )
    lr: float = option(1e-3, "AdamW learning rate", gt=0, le=1.0, request=True)
    # 32 cost twice the time for the same demo accuracy (README, "Speed")
    batch_size: int = option(16, "images per step", ge=1, le=1024, request=True)
    snr_gamma: float | None = option(5.0, "Min-SNR γ; 0 turns it off", ge=0)
    cfg_dropout: float = option(
        0.0,
        "fraction of training prompts replaced by the empty prompt, so that classifier-free guidance's "
        "unconditional branch learns the new look too (the base was pretrained with 0.1)",
        ge=0,
        le=0.5,
        request=True,
    )
    prior_per_class: int = option(
        32,
        "base images per missing class kept in training (prior preservation); 0 turns it off",
        ge=0,
        le=1000,
        request=True,
    )
    prior_steps: int = FILL_SAMPLING.steps  # how the priors are drawn: the fill's sampling (README, "Speed")
    prior_guidance: float = FILL_SAMPLING.guidance
    style_token: str = option(
        "",
        "a rare word for the client's look (DreamBooth's identifier), e.g. sks: added to the prompts of the "
        "client's own images, not the priors', and to every prompt generated with this LoRA; empty: none",
        metavar="WORD",
        pattern=STYLE_TOKEN_PATTERN,
        request=True,
    )
    checkpoint_every: int = option(100, "steps between checkpoints", ge=1)
    seed: int = 0


# The LoraSettings options a round of the federation's adapter depends on, all that a client sends its node's
# service with the adapter (regl/fill/remote.py): a round has no priors (the other clients hold the classes one
# lacks), its style token is the client's own (client_look_token), its steps are the round's own, and its
# seeds come with the request (peft's initialisation is overwritten by the adapter sent).
ADAPTER_ROUND_OPTIONS = ("rank", "targets", "lr", "batch_size", "cfg_dropout", "style_token")


def check_style_token(token: str) -> None:
    if not re.fullmatch(STYLE_TOKEN_PATTERN, token):
        raise ReglError(f"the style token must be one word of letters, digits, '_' or '-' (at most 32), got {token!r}")


def client_look_token(word: str, client_id: int) -> str:
    """Client `client_id`'s own look token in the federation's adapter: `word` then its index (sks3), empty without a
    word. The adapter sees each client's token on that client's classes and every class under some client's
    token, so look and class can come apart in its conditioning: a client then draws a class it lacks under its
    own token, in its own look."""
    if not word:
        return ""
    token = f"{word}{client_id}"
    check_style_token(token)
    return token


@dataclass(frozen=True)
class DistillSettings:
    """`regl distill-lcm`'s: the few-step adapter's distillation (regl/generate/consistency.py)."""

    steps: int = option(2000, "distillation steps", ge=1)
    batch_size: int = option(64, "latents per step", ge=1, le=4096)
    lr: float = option(1e-3, "AdamW learning rate", gt=0, le=1.0)
    rank: int = option(16, "the adapter's LoRA rank (UNet attention and convolutions)", ge=1, le=128)
    guidance: float = option(
        FILL_SAMPLING.guidance, "the teacher's classifier-free guidance, folded into the adapter (the fill's)", ge=1
    )
    checkpoint_every: int = option(250, "steps between checkpoints", ge=1)
    seed: int = option(0, "the adapter's initialisation and draws", ge=0)
    targets: str = "all"  # every layer LoraSettings' "all" names
    ddim_steps: int = 50  # the teacher's grid; LCMScheduler's `original_inference_steps`
    huber_c: float = 1e-3

    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, targets=self.targets, lr=self.lr, seed=self.seed)
