"""Class-conditional image generation with any local diffusers Stable Diffusion folder."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from regl.atomic import write_bytes_atomically
from regl.compute import Compute, resolve
from regl.errors import ReglError
from regl.generate.settings import SamplingSettings
from regl.seeds import derive_seed

# models/regl-tiny-sd, reached through the package link regl/weights: the same path installed or editable
DEFAULT_BASE = Path(__file__).resolve().parents[1] / "weights" / "regl-tiny-sd"
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_METADATA = "regl_lora.json"
ADAPTER = "client"
# Inside a base folder: its few-step adapter (regl distill-lcm), loaded for the `lcm` sampler. Outside the UNet's
# folder, so the base's fingerprint (and every store keyed by it) does not change when one is added.
FEW_STEP_FOLDER = "few-step"
FEW_STEP_ADAPTER = "few-step"
MAX_IMAGES = 100_000
# name → (diffusers scheduler class, overrides of the base's scheduler config). The last
# three are stochastic: fresh noise at every step, drawn from each image's own generator.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm": ("DPMSolverMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "dpm-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),  # with the base's few-step adapter, its guidance folded in (FEW_STEP_FOLDER)
}
REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SAMPLING = SamplingSettings()


def image_seed(seed: int, index: int) -> int:
    """Image `index` of a request with `seed` depends on these two numbers alone.

    From regl.seeds (purpose "image"), like every other seed: unlike the affine seed * 1_000_003 + index
    before it, image 1_000_003 of seed s is not image 0 of seed s + 1.
    """
    return derive_seed(seed, "image", index)


def check_model_folder(folder: Path) -> None:
    """Name the first thing that makes `folder` unusable as an SD pipeline."""
    if not folder.is_dir():
        raise ReglError(f"model folder {folder} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        raise ReglError(f"model folder {folder} has no model_index.json; is it a diffusers pipeline folder?")
    try:
        parts = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise ReglError(f"{index} is not valid JSON: {exc}") from exc
    for part in REQUIRED_PARTS:
        if part not in parts or not (folder / part).is_dir():
            raise ReglError(f"model folder {folder} lacks the `{part}` component")


def load_pipeline(base: Path, dtype=None):
    """StableDiffusionPipeline from a local folder, never touching the hub; `dtype`: its weights' torch dtype."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    check_model_folder(base)
    # diffusers' schedulers build arrays from torch tensors the NumPy-2 way it warns about; harmless
    warnings.filterwarnings(
        "ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning
    )
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            base, safety_checker=None, requires_safety_checker=False, local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ReglError(f"cannot load the pipeline in {base}: {str(exc).splitlines()[0]}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_fingerprint(base: Path) -> str:
    """sha256 of the base UNet's weights: identifies which base a LoRA belongs to."""
    files = tuple(sorted((Path(base) / "unet").glob("*.safetensors")))
    return _fingerprint(files, tuple(f.stat().st_mtime_ns for f in files))


@lru_cache(maxsize=16)
def _fingerprint(files: tuple[Path, ...], mtimes: tuple[int, ...]) -> str:
    """Hashed once per file version: clients ask for it every round."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def lora_style_token(lora_dir: Path) -> str:
    """The style token the LoRA was trained with (LoraSettings.style_token); empty for none or an older LoRA."""
    meta_file = lora_dir / LORA_METADATA
    if not meta_file.is_file():
        return ""
    try:
        return str(json.loads(meta_file.read_text()).get("settings", {}).get("style_token", ""))
    except (ValueError, AttributeError) as exc:
        raise ReglError(f"{meta_file} is malformed: {exc}") from exc


def attach_lora(pipe, lora_dir: Path, base: Path, adapter: str = ADAPTER) -> None:
    """Load a diffusers-format LoRA; one trained on another base is refused."""
    if not (lora_dir / LORA_FILE).is_file():
        raise ReglError(f"{lora_dir} holds no {LORA_FILE}")
    meta_file = lora_dir / LORA_METADATA
    if meta_file.is_file():
        try:
            trained_on = json.loads(meta_file.read_text())["base_fingerprint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ReglError(f"{meta_file} is malformed: {exc}") from exc
        if trained_on != base_fingerprint(base):
            raise ReglError(
                f"the LoRA in {lora_dir} was trained on another base model "
                f"(fingerprint {trained_on}, {base} is {base_fingerprint(base)})"
            )
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # else it warns that the text encoder has no LoRA, by design
    try:
        pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE, adapter_name=adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        pipe.unload_lora_weights()
        first_line = str(exc).splitlines()[0][:200]
        raise ReglError(f"the LoRA in {lora_dir} does not fit this base model: {first_line}") from exc
    finally:
        diffusers_logging.set_verbosity(verbosity)


def to_dataset_format(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """uint8 N×32×32×3 pipeline output → the dataset's N×R×R×C.

    28×28 data was padded to 32 for the pipeline, so a centre crop undoes it exactly;
    other sizes are resized.
    """
    side = images.shape[1]
    if resolution < side and (side - resolution) % 2 == 0 and side - resolution <= 4:
        m = (side - resolution) // 2
        images = images[:, m : m + resolution, m : m + resolution]
    elif resolution != side:
        images = np.stack(
            [np.asarray(Image.fromarray(i).resize((resolution, resolution), Image.BILINEAR)) for i in images]
        )
    if channels == 1:
        images = np.rint(images.astype(np.float32).mean(axis=3, keepdims=True)).astype(np.uint8)
    return images


def check_count(n: int) -> None:
    if not 1 <= n <= MAX_IMAGES:
        raise ReglError(f"n must be between 1 and {MAX_IMAGES}, got {n}")


class Generator:
    """A loaded pipeline plus the dataset's class names and prompt template.

    `compute` says where it runs and in what precision (default: `resolve()`, auto for inference).
    """

    def __init__(
        self,
        base: Path,
        class_names: tuple[str, ...],
        template: str,
        lora: Path | None = None,
        compute: Compute | None = None,
    ) -> None:
        self.compute = compute or resolve()
        self.pipe = load_pipeline(Path(base), self.compute.weights_dtype).to(self.compute.device)
        self.base_scheduler_config = self.pipe.scheduler.config  # every sampler starts from the base's own
        self.base = Path(base)
        self.lora = Path(lora) if lora else None
        self.style_token = ""  # a LoRA trained with one generates every class in the client's look
        if self.lora:
            attach_lora(self.pipe, self.lora, self.base)
            self.style_token = lora_style_token(self.lora)
        self.lora_scale = 1.0
        self.class_names = class_names
        self.template = template
        self.resolution = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def set_compute(self, compute: Compute) -> None:
        """Run on from here in `compute`: a fine-tune's generator trains in one precision and samples in another."""
        if compute.weights != self.compute.weights:
            self.pipe.to(dtype=compute.weights_dtype)
        self.pipe.to(compute.device)
        self.compute = compute

    def set_lora_scale(self, scale: float) -> None:
        self.lora_scale = scale
        if self.lora:
            self.pipe.set_adapters([ADAPTER], adapter_weights=[scale])

    def _few_step(self, wanted: bool, guidance: float) -> float:
        """Switch the few-step adapter on (loading it the first time) or off, the client's LoRA kept as it was;
        returns the guidance scale to call the pipeline with: 1 (no unconditional pass) when it is on."""
        adapters = set(getattr(self.pipe.unet, "peft_config", {}))
        if not wanted and FEW_STEP_ADAPTER not in adapters:
            return guidance
        folder = self.base / FEW_STEP_FOLDER
        if wanted and FEW_STEP_ADAPTER not in adapters:
            if not (folder / LORA_FILE).is_file():
                raise ReglError(
                    f"the lcm sampler needs the base's few-step adapter, {folder}: make it with regl distill-lcm"
                )
            attach_lora(self.pipe, folder, self.base, FEW_STEP_ADAPTER)
            adapters.add(FEW_STEP_ADAPTER)
        if wanted:
            folded = json.loads((folder / LORA_METADATA).read_text())["settings"]["guidance"]
            if guidance != folded:
                raise ReglError(
                    f"the few-step adapter in {folder} has guidance {folded:g} folded in: sample it at guidance "
                    f"{folded:g}, not {guidance:g}"
                )
        names = [name for name in (FEW_STEP_ADAPTER, ADAPTER) if name in adapters and (wanted or name == ADAPTER)]
        if not names:
            self.pipe.unet.disable_adapters()
            return guidance
        self.pipe.unet.enable_adapters()
        self.pipe.set_adapters(
            names, adapter_weights=[1.0 if n == FEW_STEP_ADAPTER else self.lora_scale for n in names]
        )
        return 1.0 if wanted else guidance

    def prompt(self, label: int) -> str:
        prompt = self.template.format(self.class_names[label])
        return f"{prompt} {self.style_token}" if self.style_token else prompt

    def generate(
        self,
        labels: list[int],
        seeds: list[int],
        steps: int = SAMPLING.steps,
        guidance: float = SAMPLING.guidance,
        scheduler: str = SAMPLING.scheduler,
        batch_size: int = SAMPLING.batch_size,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """One image per (label, seed) pair, as uint8 N×H×W×3; each depends only on its pair.

        `on_batch(images_done)` is called after every pipeline call (a job's progress; it may
        raise to stop the work).
        """
        import diffusers
        import torch

        if scheduler not in SCHEDULERS:
            raise ReglError(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        if steps < 1:
            raise ReglError(f"steps must be at least 1, got {steps}")
        class_name, overrides = SCHEDULERS[scheduler]
        self.pipe.scheduler = getattr(diffusers, class_name).from_config(self.base_scheduler_config, **overrides)
        guidance = self._few_step(scheduler == "lcm", guidance)
        out = []
        with self._adapters_fused():
            for start in range(0, len(labels), batch_size):
                chunk = range(start, min(start + batch_size, len(labels)))
                with torch.no_grad(), self.compute.autocast_context():
                    images = self.pipe(
                        prompt=[self.prompt(labels[i]) for i in chunk],
                        height=self.resolution,
                        width=self.resolution,
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        generator=[torch.Generator().manual_seed(seeds[i]) for i in chunk],
                        output_type="np",
                    ).images
                out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
                if on_batch is not None:
                    on_batch(chunk.stop)
        return np.concatenate(out)

    @contextmanager
    def _adapters_fused(self) -> Iterator[None]:
        """The active adapters folded into the UNet's weights for one call, then the weights put back bit for bit.

        Unfused, every layer an adapter wraps pays its two extra matmuls at every pass: the few-step adapter
        (rank 16 on every layer) made a pass 2.7× as slow as the base's. PEFT's unmerge subtracts what merge
        added, which rounds; the saved weights make the next call's images the same as this one's.
        """
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        wrapped = [m for m in self.pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
        if not wrapped or wrapped[0].disable_adapters:
            yield
            return
        layers = [m for m in wrapped if any(name in m.lora_A for name in m.active_adapters)]  # holding one to fold
        weights = [p for m in layers for p in m.get_base_layer().parameters(recurse=False)]
        saved = [p.detach().clone() for p in weights]
        for layer in layers:
            layer.merge()  # its active adapters, at the scales set_adapters gave them
        try:
            yield
        finally:
            for layer in layers:
                if layer.merged:
                    layer.unmerge()
            with torch.no_grad():
                for weight, value in zip(weights, saved, strict=True):
                    weight.copy_(value)

    def generate_class(self, label: int, n: int, seed: int, **options) -> np.ndarray:
        check_count(n)
        return self.generate([label] * n, [image_seed(seed, i) for i in range(n)], **options)


def save_pngs(images: np.ndarray, folder: Path, prefix: str) -> list[Path]:
    """Each PNG written to a temporary name, then renamed: no half-written files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}_{i:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        write_bytes_atomically(path, buffer.getvalue())
        paths.append(path)
    return paths
