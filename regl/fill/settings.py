"""What a client's fill is asked for: its mode, sizes, LoRA and sampling; torch-free, so the CLI reads its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regl.compute import DEVICE_HELP, DEVICES, DTYPE_HELP, DTYPES, Compute, Purpose, resolve
from regl.errors import ReglError
from regl.fill.plan import SOURCES, FillPlan, parse_source_mix, plan_fill
from regl.fl.adapter_aggregation import RULES as ADAPTER_RULES
from regl.generate.settings import FILL_SAMPLING, LORA_TARGETS, STYLE_TOKEN_PATTERN, LoraSettings, check_style_token
from regl.options import option

MODES = ("none", "public")
LORA_MODES = ("client", "none", "federated", "federated+local")
SAMPLERS = ("dpm", "lcm")  # the fill's samplers (regl/generate/generator.py SCHEDULERS)


@dataclass(frozen=True)
class FillSettings:
    """`mode`: none, public, or sources joined by '+' (diffusion, noise, mixup)."""

    BARE_KEY = "mode"  # run-config key `fill`, flag --fill

    mode: str = option(
        "none",
        "none, public (the base's whole public pretraining pool, as real data), or sources joined by '+': "
        "diffusion, noise, mixup, public-equal (real public images at the planned counts), oracle (base images "
        "in the client's true --domain), e.g. diffusion+noise",
        group="fill",
    )
    supplement: float = option(
        1.0, "synthetic images as a fraction of each client's real ones", ge=0, le=10, group="fill", request=True
    )
    mix: str = option(
        "", "weights of the fill's sources in their order, e.g. 75:25; empty: equal", metavar="MIX", group="fill"
    )
    target: str = option(
        "uniform",
        "class composition to fill towards; global asks every client for its class counts",
        choices=("uniform", "global"),
        group="fill",
    )
    lora: str = option(
        "client",
        "diffusion from which generator: client (a LoRA fine-tuned on each client's own images), none (the base "
        "as is), federated (one adapter trained by the whole federation over --fill-adapter-rounds rounds, "
        "images never leaving their clients), federated+local (that adapter, then --fill-lora-steps local steps "
        "on each client's own images)",
        choices=LORA_MODES,
        legacy={True: "client", False: "none", "true": "client", "false": "none"},
        group="fill",
        request=True,
    )
    lora_steps: int = option(
        LoraSettings().steps, "each client's LoRA fine-tuning steps, at most", ge=1, group="fill", request=True
    )
    prior_per_class: int = option(
        LoraSettings().prior_per_class,
        "base images per missing class kept in LoRA training (prior preservation)",
        ge=0,
        le=1000,
        group="fill",
        request=True,
    )
    lora_style_token: str = option(
        LoraSettings().style_token,
        "a word for the client's look in its LoRA's prompts (on its own images' prompts, not the priors', "
        "and on every prompt the fill generates with), e.g. sks; with --fill-lora federated or federated+local, "
        "client i's own look token is the word then i (sks3), in the federation's rounds and in its fill; "
        "empty: none",
        metavar="WORD",
        pattern=STYLE_TOKEN_PATTERN,
        group="fill",
        request=True,
    )
    lora_rank: int = option(
        LoraSettings().rank, "the rank of every LoRA the fill trains", ge=1, le=128, group="fill", request=True
    )
    lora_targets: str = option(
        LoraSettings().targets,
        "which UNet layers every LoRA the fill trains adapts: attention, or all (also feed-forward and convolutions)",
        choices=LORA_TARGETS,
        group="fill",
        request=True,
    )
    lora_cfg_dropout: float = option(
        LoraSettings().cfg_dropout,
        "fraction of every fill LoRA's training prompts replaced by the empty prompt (classifier-free guidance's "
        "unconditional branch then learns the look too)",
        ge=0,
        le=0.5,
        group="fill",
        request=True,
    )
    lora_lr: float = option(
        LoraSettings().lr,
        "the AdamW learning rate of every LoRA the fill trains",
        gt=0,
        le=1.0,
        group="fill",
        request=True,
    )
    lora_early_stop: float = option(
        LoraSettings().early_stop,
        "stop a client's LoRA before --fill-lora-steps when its fixed-noise loss (checked every 20 steps) has not "
        "fallen this fraction below its best: where the base already draws the client's images the LoRA learns "
        "nothing and stops at 20 steps; 0 runs every step",
        ge=0,
        le=0.5,
        group="fill",
        request=True,
    )
    adapter_rounds: int = option(
        10, "--fill-lora federated: rounds of the federation's adapter before the classifier's", ge=1, group="fill"
    )
    adapter_steps: int = option(
        20, "--fill-lora federated: LoRA steps each client trains per round", ge=1, group="fill"
    )
    adapter_rule: str = option(
        "ffa",
        "--fill-lora federated: how the server joins the clients' adapters: ffa (A frozen, the Bs averaged: "
        "exactly the mean of the products), fedavg (each factor averaged), product (the mean product, "
        "re-factorised by SVD)",
        choices=ADAPTER_RULES,
        group="fill",
    )
    adapter_dp_noise: float = option(
        0.0,
        "--fill-lora federated: client-level DP on the adapter: Gaussian noise multiplier z on the uniform mean "
        "of the clients' clipped updates (rules ffa and fedavg); 0: off",
        ge=0,
        group="fill",
    )
    # Measured on the shipped base at the default LoRA (rank 4, attention, lr 1e-3, 20 steps), 10 clients of the
    # default partition: FFA's updates (the Bs) had L2 norms 0.46-0.57 over rounds 1-5, fedavg's (A and B)
    # 0.66-0.77 over rounds 1-3. 0.5 sits at FFA's median, the usual clip (Andrew et al., 2021), and scales
    # fedavg's by about 0.7. AdamW moves each weight by about lr a step, so the norm grows with the rate, the
    # steps and the root of the adapter's size (--fill-lora-targets all): each DP round records update_norms.
    adapter_dp_clip: float = option(
        0.5, "--fill-adapter-dp-noise: L2 bound on each client's adapter update in a round", gt=0, group="fill"
    )
    steps: int = option(FILL_SAMPLING.steps, "diffusion sampling steps", ge=1, le=200, group="fill", request=True)
    guidance: float = option(
        FILL_SAMPLING.guidance, "classifier-free guidance scale", ge=0, le=30, group="fill", request=True
    )
    sampler: str = option(
        "dpm",
        "dpm: DPM-Solver++ with classifier-free guidance (two UNet passes a step); lcm: the base's few-step "
        "adapter (regl distill-lcm), for 1-4 --fill-steps of one pass each, --fill-guidance folded into it",
        choices=SAMPLERS,
        group="fill",
        request=True,
    )
    base: str = option("", "diffusers SD folder; empty: the shipped base", group="fill")
    store: str = option(
        ".regl-cache/fill",
        "where clients keep their synthetic stores and LoRAs; reused when nothing changed",
        group="fill",
    )
    service: str = option(
        "", "URL of the client's `regl serve`: it makes the diffusion and noise images", flag=None
    )  # each node's own, in its node config
    device: str = option("auto", DEVICE_HELP, choices=DEVICES, group="fill")
    dtype: str = option("auto", DTYPE_HELP, choices=DTYPES, group="fill")

    def sampling(self) -> dict[str, Any]:
        """How the fill draws its diffusion images: Generator.generate's steps, guidance and scheduler."""
        return {"steps": self.steps, "guidance": self.guidance, "scheduler": self.sampler}

    def sampling_key(self) -> dict[str, Any]:
        """The sampling in a store's key; the default sampler left out, so stores made before it are found."""
        return {
            "steps": self.steps,
            "guidance": self.guidance,
            **({"sampler": self.sampler} if self.sampler != "dpm" else {}),
        }

    @property
    def sources(self) -> tuple[str, ...]:
        if self.mode in MODES:
            return ()
        parts = tuple(self.mode.split("+"))
        unknown = [p for p in parts if p not in SOURCES]
        if unknown or len(set(parts)) != len(parts):
            raise ReglError(
                f"unknown fill {self.mode!r}: use none, public, or a '+'-joined combination of {', '.join(SOURCES)}"
            )
        return parts

    @property
    def synthetic(self) -> bool:
        return bool(self.sources)

    def source_mix(self) -> dict[str, float]:
        """Source → weight; the mix is given in the order the mode names the sources."""
        sources = self.sources
        if not self.mix:
            return {s: 1.0 for s in sources}
        weights = self.mix.split(":")
        if len(weights) != len(sources):
            raise ReglError(
                f"fill mix {self.mix!r} gives {len(weights)} weights for the {len(sources)} sources of {self.mode!r}"
            )
        return parse_source_mix(",".join(f"{s}={w}" for s, w in zip(sources, weights)))

    def check(self) -> None:
        """Raise on a mode, mix or style token a client would only trip over after the run started.

        The declared ranges are checked with the experiment's (`ExperimentSettings.check`), which
        names each option's flag, or by the service's request model.
        """
        self.source_mix()
        check_style_token(self.lora_style_token)  # names the rule, which the pattern alone does not

    def compute(self, purpose: Purpose = "inference") -> Compute:
        return resolve(self.device, self.dtype, purpose)

    def base_folder(self) -> Path:
        from regl.generate.generator import DEFAULT_BASE

        return Path(self.base) if self.base else DEFAULT_BASE


def client_plan(settings: FillSettings, class_counts: np.ndarray, target: np.ndarray | None) -> FillPlan:
    mix = settings.source_mix()
    return plan_fill(class_counts, settings.supplement, mix, target if settings.target == "global" else None)
