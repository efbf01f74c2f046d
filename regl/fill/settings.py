"""What a client's fill is asked for: its mode, sizes, LoRA and sampling; torch-free, so the CLI reads its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regl.compute import DEVICES, DTYPES, Compute, Purpose, resolve
from regl.errors import ReglError
from regl.fill.plan import SOURCES, FillPlan, parse_source_mix, plan_fill
from regl.generate.settings import FILL_SAMPLING, LoraSettings, check_style_token

MODES = ("none", "public")


@dataclass(frozen=True)
class FillSettings:
    """`mode`: none, public, or sources joined by '+' (diffusion, noise, mixup)."""

    mode: str = "none"
    supplement: float = 1.0  # synthetic images as a fraction of the client's real ones
    mix: str = ""  # weights of the mode's sources, e.g. "75:25"; empty: equal
    target: str = "uniform"  # or "global": the federation's class composition
    lora: bool = True  # diffusion: fine-tune the client's LoRA first (ReGL) or use the base as is
    lora_steps: int = LoraSettings().steps
    prior_per_class: int = LoraSettings().prior_per_class
    lora_style_token: str = LoraSettings().style_token  # the client's look's word in its LoRA's prompts; empty: off
    steps: int = FILL_SAMPLING.steps  # diffusion sampling steps
    guidance: float = FILL_SAMPLING.guidance
    base: str = ""  # empty: the shipped base
    store: str = ".regl-cache/fill"
    service: str = ""  # URL of the client's `regl serve`: it makes the diffusion and noise images
    device: str = "auto"  # where the generator and the LoRA run (regl/compute.py)
    dtype: str = "auto"

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
        """Raise on settings a client would only trip over after the run started."""
        self.source_mix()
        if self.supplement < 0:
            raise ReglError(f"fill supplement must be ≥ 0, got {self.supplement}")
        if self.target not in ("uniform", "global"):
            raise ReglError(f"fill target must be uniform or global, got {self.target!r}")
        if self.steps < 1 or self.lora_steps < 1 or self.prior_per_class < 0:
            raise ReglError("fill steps and LoRA steps must be ≥ 1 and priors per class ≥ 0")
        check_style_token(self.lora_style_token)
        if self.device not in DEVICES or self.dtype not in DTYPES:
            raise ReglError(
                f"fill device/dtype {self.device}/{self.dtype}: use device {', '.join(DEVICES)} "
                f"and dtype {', '.join(DTYPES)}"
            )

    def compute(self, purpose: Purpose = "inference") -> Compute:
        return resolve(self.device, self.dtype, purpose)

    def base_folder(self) -> Path:
        from regl.generate.generator import DEFAULT_BASE

        return Path(self.base) if self.base else DEFAULT_BASE


def client_plan(settings: FillSettings, class_counts: np.ndarray, target: np.ndarray | None) -> FillPlan:
    mix = settings.source_mix()
    return plan_fill(class_counts, settings.supplement, mix, target if settings.target == "global" else None)
