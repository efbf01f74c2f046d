"""Where and in what precision the generator, the LoRA and the classifier run: decided here, once.

`--device auto` takes CUDA when torch reports a device. `--dtype auto`, by measurement
(README, "Speed: device, precision and the fill's cost"): on CUDA, generation holds float16 weights and a
LoRA trains in bfloat16 autocast over float32 weights (the saved adapter is float32; float32 alone
on a GPU without bfloat16). On a CPU with bfloat16
instructions (AVX512-BF16 or AMX), generation runs in bfloat16 autocast — 1.5× the UNet's
float32 speed and 1.9× the VAE decoder's on this project's Zen 4 — while a LoRA trains in
float32, because bf16 autocast made its training step 1.5× slower there; a CPU without
them runs float32 throughout. The classifier always trains in float32 on the CPU: it is
small enough that a GPU would not pay, and its accuracy tables must compare across machines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from regl.errors import ReglError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_HELP = "where the generator and LoRA run; auto: cuda when torch sees a GPU, else cpu"
DTYPE_HELP = (
    "auto: float16 generation on CUDA, a LoRA in bf16 autocast over float32 weights; on a CPU with bf16 "
    "instructions (AVX512-BF16, AMX) bf16 autocast for generation and float32 for a LoRA, else float32"
)
Purpose = Literal["inference", "training"]


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    """Any bfloat16 arithmetic in hardware; without it torch emulates bf16, slower than float32."""
    flags = set(flags)
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Compute:
    """A resolved device plus the dtype weights are held in and the autocast dtype (None: off)."""

    device: str
    weights: str = "float32"
    autocast: str | None = None

    @property
    def weights_dtype(self):
        import torch

        return getattr(torch, self.weights)

    def autocast_context(self) -> contextlib.AbstractContextManager:
        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=getattr(torch, self.autocast))

    @property
    def precision(self) -> str:
        """The weights' dtype, and the autocast one when on: e.g. `float32, bfloat16 autocast`."""
        return self.weights + (f", {self.autocast} autocast" if self.autocast else "")

    def describe(self) -> str:
        return f"{self.device} {self.precision}"


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ReglError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ReglError(f"device cuda asked for, but torch {torch.__version__} sees no CUDA device; use cpu or auto")
    return device


@lru_cache(maxsize=1)
def _isa_flags() -> tuple[str, ...]:
    """This CPU's instruction sets, read once: every fill store's key asks for the resolved precision."""
    from regl.environment import cpu

    return tuple(cpu()["isa_flags"])


def resolve(device: str = "auto", dtype: str = "auto", purpose: Purpose = "inference") -> Compute:
    """The device and precision a generator (`inference`) or a LoRA fine-tune (`training`) runs in."""
    if dtype not in DTYPES:
        raise ReglError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    where = resolve_device(device)
    if where == "cpu":
        return cpu_compute(dtype, _isa_flags(), purpose)
    return cuda_compute(dtype, purpose)


def cpu_compute(dtype: str, flags: Iterable[str], purpose: Purpose = "inference") -> Compute:
    """The precision on a CPU with instruction-set `flags` (/proc/cpuinfo's)."""
    bf16 = cpu_has_bf16(flags)
    if dtype == "float16":
        raise ReglError("float16 needs a CUDA device; on a CPU use bfloat16 or float32")
    if dtype == "bfloat16" and not bf16:
        raise ReglError("this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16); use float32")
    if dtype == "bfloat16" or (dtype == "auto" and purpose == "inference" and bf16):
        return Compute("cpu", "float32", "bfloat16")
    return Compute("cpu")


def cuda_compute(dtype: str, purpose: Purpose) -> Compute:
    """The precision on a CUDA device: float16 or bfloat16 weights for generation, autocast over float32
    weights for a LoRA (float16 asks a LoRA for bfloat16 autocast: float16 training would need loss scaling)."""
    import torch

    if dtype == "float32":
        return Compute("cuda")
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ReglError(f"{torch.cuda.get_device_name()} has no bfloat16; use float16 or float32")
    if purpose == "inference":
        return Compute("cuda", "float16" if dtype == "auto" else dtype)
    return Compute("cuda", "float32", "bfloat16" if torch.cuda.is_bf16_supported() else None)
