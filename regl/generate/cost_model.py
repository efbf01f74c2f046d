"""A client's fill cost as a function of its work, from per-unit costs `regl bench-generator` measures.

    seconds ≈ setup + LoRA steps × step + images × sampler steps × passes per step × pass

`setup`: loading the pipeline and caching the client's latents and prompts (once per
client); `step`: one LoRA training step; `pass`: one UNet pass for one image at the fill's
batch; passes per step: 2 with classifier-free guidance, 1 with the few-step sampler (its
guidance folded in). The prior images are left out: drawn once per base and sampling setting
and shared by every client (regl/generate/lora.py:prior_images). Scaled to a GPU from the
UNet's FLOPs at a stated peak and utilisation, the figures are predictions, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

LORA_BATCH = 16  # LoraSettings' default batch
TRAIN_FLOPS_PER_FORWARD = 3  # a training step: a forward and a backward pass of about twice its FLOPs


@dataclass(frozen=True)
class FillCost:
    setup_seconds: float
    lora_step_seconds: float
    pass_seconds: float  # one UNet pass, one image
    pass_flops: float  # the UNet's FLOPs for one image's pass (torch's FlopCounterMode)

    def client_seconds(self, images: int, sampler_steps: int, passes_per_step: int, lora_steps: int) -> float:
        """A client's fill: its setup when it trains a LoRA, the LoRA's steps, and its images."""
        lora = self.setup_seconds + lora_steps * self.lora_step_seconds if lora_steps else 0.0
        return lora + images * sampler_steps * passes_per_step * self.pass_seconds

    def on_device(self, peak_flops: float, utilisation: float) -> FillCost:
        """The same work at `utilisation` of `peak_flops`; setup as measured here (loading is not arithmetic)."""
        rate = peak_flops * utilisation
        step = TRAIN_FLOPS_PER_FORWARD * LORA_BATCH * self.pass_flops / rate
        return replace(self, lora_step_seconds=step, pass_seconds=self.pass_flops / rate)


def describe(cost: FillCost) -> str:
    return (
        f"{cost.setup_seconds:.1f}s + {cost.lora_step_seconds:.3f}s × LoRA steps + {1000 * cost.pass_seconds:.3f} ms × "
        "images × sampler steps × UNet passes per step"
    )


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
