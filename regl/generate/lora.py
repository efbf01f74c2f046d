"""`regl finetune`: per-client LoRA on the UNet's attention projections (the diffusers recipe).

Latents and text embeddings are computed once and cached; only the LoRA matrices train.
A one- or two-class client would teach the LoRA that every prompt means its own classes,
so by default the classes it lacks are kept in the training set through prior
preservation: images the *base* generates for them, trained on with their own prompts
(as DreamBooth does for its class prior).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from regl.compute import Compute, resolve
from regl.data.datasets import ImageDataset
from regl.errors import ReglError
from regl.generate.diffusion_loss import (
    denoising_loss,
    encode_latents,
    encode_prompts,
    restore_rng,
    rng_state,
    to_pipeline_pixels,
)
from regl.generate.generator import ADAPTER, LORA_METADATA, SAMPLING, Generator, base_fingerprint, image_seed
from regl.generate.settings import PRIOR_SEED, LoraSettings, check_style_token
from regl.progress import progress as progress_bar
from regl.seeds import derive_seed

FIXED_IMAGES = 32  # the fixed-noise loss's images: a forward pass on 32 every FIXED_EVERY steps costs ~3%
FIXED_EVERY = 20
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
# peft matches a name's last parts: every ResNet block's conv1/conv2/conv_shortcut/time_emb_proj, the
# transformers' proj_in/proj_out and feed-forward, the UNet's conv_in/conv_out
TARGET_MODULES = {
    "attention": ATTENTION,
    "all": ATTENTION
    + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    + ["conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out"],
}


def prior_images(
    generator: Generator, classes: list[int], settings: LoraSettings, cache: Path | None = None
) -> np.ndarray:
    """`settings.prior_per_class` base images of each of `classes`, class after class (uint8 N×H×W×3).

    Every client and run draws the same ones (PRIOR_SEED), so a `cache` folder keeps each class's images once
    per base, prompt and sampling setting and every client that lacks the class reuses them.
    """
    from regl.atomic import write_bytes_atomically
    from regl.fill.keys import compute_key, digest, seeds_key

    seeds = [image_seed(PRIOR_SEED, i) for i in range(settings.prior_per_class)]

    def file(c: int) -> Path | None:
        key = {
            "base": base_fingerprint(generator.base),
            "prompt": generator.prompt(c),
            "images": settings.prior_per_class,
            "steps": settings.prior_steps,
            "guidance": settings.prior_guidance,
            "scheduler": SAMPLING.scheduler,
            **seeds_key(),
            **compute_key(generator.compute),
        }
        return cache / f"prior-{digest(key)}.npy" if cache else None

    images = {c: np.load(path) for c in classes if (path := file(c)) and path.is_file()}
    if drawn := [c for c in classes if c not in images]:
        labels = [c for c in drawn for _ in seeds]
        new = generator.generate(
            labels, seeds * len(drawn), steps=settings.prior_steps, guidance=settings.prior_guidance
        )
        for i, c in enumerate(drawn):
            images[c] = new[i * len(seeds) : (i + 1) * len(seeds)]
            if path := file(c):
                buffer = io.BytesIO()
                np.save(buffer, images[c])
                write_bytes_atomically(path, buffer.getvalue())
    return np.concatenate([images[c] for c in classes])


def _training_set(
    generator: Generator, data: ImageDataset, settings: LoraSettings, prior_cache: Path | None
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """Client pixels and labels plus base-generated priors for the classes the client lacks.

    The third value weights each sample's chance of being drawn: with priors, half of
    every batch comes from them (DreamBooth's prior-preservation loss with weight 1); the
    fourth says which samples are priors.
    """
    pixels, labels = to_pipeline_pixels(data), data.y
    weights = torch.full((len(labels),), 1.0 / len(labels))
    is_prior = np.zeros(len(labels), dtype=bool)
    missing = [c for c in range(len(generator.class_names)) if not (data.y == c).any()]
    if settings.prior_per_class and missing:
        prior_labels = [c for c in missing for _ in range(settings.prior_per_class)]
        prior = prior_images(generator, missing, settings, prior_cache)
        prior_pixels = torch.from_numpy(prior).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        pixels = torch.cat([pixels, prior_pixels])
        labels = np.concatenate([labels, prior_labels])
        weights = torch.cat([weights, torch.full((len(prior_labels),), 1.0 / len(prior_labels))])
        is_prior = np.concatenate([is_prior, np.ones(len(prior_labels), dtype=bool)])
    return pixels, labels, weights, is_prior


def _check_style_token(generator: Generator, token: str) -> None:
    """The token must reach the text encoder: CLIP truncates a prompt that is too long."""
    check_style_token(token)
    if not token:
        return
    limit = generator.pipe.tokenizer.model_max_length
    for c in range(len(generator.class_names)):
        prompt = f"{generator.prompt(c)} {token}"
        length = len(generator.pipe.tokenizer(prompt).input_ids)
        if length > limit:
            raise ReglError(f"{prompt!r} takes {length} tokens, more than the text encoder reads ({limit})")


def save_lora(pipe, out: Path, metadata: dict, adapter: str = ADAPTER) -> None:
    """Write the finished LoRA beside `out`, then swap; the checkpoint goes with the old folder."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # peft's names: diffusers loads them as they are, for convolutions too (its older names cover attention only)
    layers = get_peft_model_state_dict(pipe.unet, adapter_name=adapter)
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
    (tmp / LORA_METADATA).write_text(json.dumps(metadata, indent=2))
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(pipe, out: Path, state: dict) -> None:
    from peft.utils import get_peft_model_state_dict

    folder = out / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"  # replaced in one rename: a stop at any moment leaves the old or the new
    torch.save({**state, "adapter": get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER)}, tmp)
    os.replace(tmp, folder / "state.pt")


@dataclass
class FinetuneResult:
    generator: Generator  # the base with the trained adapter active
    timings: dict
    steps_run: int  # below the settings' steps where the adapter stalled (LoraSettings.early_stop)


@dataclass
class LoraTraining:
    """A LoRA in training on one client's images: the cached latents and prompt embeddings, the adapter's
    optimiser and random stream. `finetune_lora` runs it once; a federated round runs it from the global
    adapter for a few steps (regl/generate/federated_lora.py)."""

    generator: Generator
    settings: LoraSettings
    compute: Compute
    latents: torch.Tensor
    embeddings: torch.Tensor
    prompt_rows: torch.Tensor  # each sample's row of `embeddings`: its own images' prompts, the priors', "" last
    draw_weights: torch.Tensor
    labels: np.ndarray
    is_prior: np.ndarray
    optimizer: torch.optim.Optimizer
    rng: torch.Generator
    timings: dict  # prior_seconds (drawing the priors), cache_seconds (latents and prompts)
    losses: list[float] = field(default_factory=list)  # every step's training loss
    fixed_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, fixed_noise_loss()) every FIXED_EVERY

    def fixed_noise_loss(self) -> float:
        """The loss on the same FIXED_IMAGES of the client's own images, noise and timesteps every time.

        The training loss draws a new batch and new timesteps each step, and that noise hides the adapter's
        progress; this curve is what the step count and learning rate are chosen from.
        """
        from diffusers import DDPMScheduler

        own = np.flatnonzero(~self.is_prior)
        rows = torch.from_numpy(own[np.linspace(0, len(own) - 1, min(FIXED_IMAGES, len(own))).astype(int)])
        scheduler = DDPMScheduler.from_config(self.generator.pipe.scheduler.config)
        rng = torch.Generator().manual_seed(derive_seed(self.settings.seed, "lora-fixed-loss"))
        with torch.no_grad(), self.compute.autocast_context():
            loss = denoising_loss(
                self.generator.pipe.unet,
                scheduler,
                self.latents[rows],
                self.embeddings[self.prompt_rows[rows]],
                rng,
                None,
            )
        return float(loss)

    def _record_fixed_loss(self, step: int) -> None:
        if not self.fixed_losses or self.fixed_losses[-1][0] != step:
            self.fixed_losses.append((step, self.fixed_noise_loss()))

    def stalled(self) -> bool:
        """The last fixed-noise loss is not `settings.early_stop` (a fraction) below the best before it."""
        if not self.settings.early_stop or len(self.fixed_losses) < 2:
            return False
        best = min(loss for _, loss in self.fixed_losses[:-1])
        return self.fixed_losses[-1][1] > (1 - self.settings.early_stop) * best

    def steps(
        self, start: int, stop: int, show_progress: bool = False, on_step=None, checkpoint_to=None, watch=False
    ) -> int:
        """Train steps start..stop-1; returns the step it stopped at. `checkpoint_to`: write OUT/checkpoint every
        `settings.checkpoint_every` steps (not at `stop`). `watch`: record the fixed-noise loss every FIXED_EVERY
        steps and at `stop`, and stop at a check that finds the adapter stalled (`stalled`)."""
        from diffusers import DDPMScheduler

        pipe, settings = self.generator.pipe, self.settings
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe.unet.train()
        progress = progress_bar(
            range(start, stop), initial=start, total=stop, desc="lora", unit="step", disable=not show_progress
        )
        for step in progress:
            if watch and step % FIXED_EVERY == 0:
                self._record_fixed_loss(step)
                if self.stalled():
                    progress.close()
                    pipe.unet.eval()
                    return step
            rows = torch.multinomial(self.draw_weights, settings.batch_size, replacement=True, generator=self.rng)
            prompts = self.prompt_rows[rows]
            if settings.cfg_dropout:
                dropped = torch.rand(len(rows), generator=self.rng) < settings.cfg_dropout
                prompts = torch.where(dropped, len(self.embeddings) - 1, prompts)  # the empty prompt, last
            with self.compute.autocast_context():
                loss = denoising_loss(
                    pipe.unet,
                    noise_scheduler,
                    self.latents[rows],
                    self.embeddings[prompts],
                    self.rng,
                    settings.snr_gamma,
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())
            progress.set_postfix(loss=f"{self.losses[-1]:.4f}")
            if on_step is not None:
                on_step(step + 1)
            if checkpoint_to is not None and (step + 1) % settings.checkpoint_every == 0 and step + 1 < stop:
                state = {"step": step + 1, "optimizer": self.optimizer.state_dict(), "rng": rng_state(self.rng)}
                state["losses"], state["fixed_losses"] = self.losses, self.fixed_losses
                _save_checkpoint(pipe, checkpoint_to, {**state, "settings": asdict(settings)})
        if watch:
            self._record_fixed_loss(stop)
        pipe.unet.eval()
        return stop


def loss_curve(losses: list[float], every: int) -> list[float]:
    """The mean loss of each `every` steps: one step's loss (one batch, random timesteps) is too noisy to read."""
    return [float(np.mean(losses[i : i + every])) for i in range(0, len(losses), every)]


def lora_config(settings: LoraSettings):
    """peft's description of the settings' adapter: its rank, scale, initialisation and layers."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.rank,
        init_lora_weights="gaussian",
        target_modules=TARGET_MODULES[settings.targets],
    )


def add_adapter(unet, settings: LoraSettings, name: str = ADAPTER) -> None:
    """A fresh LoRA adapter on the UNet: A Gaussian at the settings' seed, B zero (peft's initialisation)."""
    torch.manual_seed(derive_seed(settings.seed, "lora-init"))
    unet.add_adapter(lora_config(settings), adapter_name=name)


def start_training(
    generator: Generator,
    data: ImageDataset,
    settings: LoraSettings,
    compute: Compute,
    train_a: bool = True,
    prior_cache: Path | None = None,
) -> LoraTraining:
    """Cache the client's latents and prompts (with priors for the classes it lacks) and add a fresh adapter.

    `train_a=False` freezes the adapter's A factors at their initialisation (FFA-LoRA). `prior_cache`: where
    the prior images are kept for every client (`prior_images`).
    """
    pipe, class_names = generator.pipe, generator.class_names
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    _check_style_token(generator, settings.style_token)
    started = time.perf_counter()
    pixels, labels, draw_weights, is_prior = _training_set(generator, data, settings, prior_cache)
    timings = {"prior_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    with compute.autocast_context():
        latents = encode_latents(pipe.vae, pixels.to(compute.device)).float()
    plain = [generator.prompt(c) for c in range(len(class_names))]
    own = [f"{prompt} {settings.style_token}" if settings.style_token else prompt for prompt in plain]
    with compute.autocast_context():  # own images', then priors', then the empty prompt
        embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, own + plain + [""]).float()
    prompt_rows = torch.from_numpy(np.asarray(labels, dtype=np.int64) + len(class_names) * is_prior)
    timings["cache_seconds"] = time.perf_counter() - started

    add_adapter(pipe.unet, settings)
    if not train_a:
        for name, parameter in pipe.unet.named_parameters():
            if ".lora_A." in name:
                parameter.requires_grad_(False)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    return LoraTraining(
        generator=generator,
        settings=settings,
        compute=compute,
        latents=latents,
        embeddings=embeddings,
        prompt_rows=prompt_rows,
        draw_weights=draw_weights,
        labels=np.asarray(labels, dtype=np.int64),
        is_prior=is_prior,
        optimizer=torch.optim.AdamW(params, lr=settings.lr),
        rng=torch.Generator().manual_seed(derive_seed(settings.seed, "lora-steps")),
        timings=timings,
    )


def finetune_lora(
    data: ImageDataset,
    class_names: tuple[str, ...],
    template: str,
    base: Path,
    out: Path,
    settings: LoraSettings,
    resume: bool = False,
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    compute: Compute | None = None,
    prior_cache: Path | None = None,
) -> FinetuneResult:
    """Train a LoRA on `data` and write `out/pytorch_lora_weights.safetensors`.

    `on_step(steps_done)` is called after every step (the service's job progress). `compute`
    (default: `resolve(purpose="training")`) keeps the weights in float32 whatever the
    autocast dtype, so the saved adapter is float32. `prior_cache`: where prior images are kept for other
    clients (`prior_images`); None draws them afresh.
    """
    from peft.utils import set_peft_model_state_dict

    checkpoint = out / "checkpoint" / "state.pt"
    if resume and not checkpoint.is_file():
        raise ReglError(f"--resume given but {out} holds no checkpoint")
    if not resume and checkpoint.is_file():
        raise ReglError(f"{out} holds a checkpoint of an earlier fine-tune; pass --resume or choose another --out")
    if settings.rank < 1 or settings.steps < 1 or settings.batch_size < 1:
        raise ReglError("rank, steps and batch size must all be at least 1")
    timings = {}
    started = time.perf_counter()
    compute = compute or resolve(purpose="training")
    if compute.weights != "float32":
        raise ReglError(f"a LoRA trains with float32 weights (autocast for lower precision), got {compute.describe()}")
    generator = Generator(base, class_names, template, compute=compute)
    timings["load_seconds"] = time.perf_counter() - started
    training = start_training(generator, data, settings, compute, prior_cache=prior_cache)
    timings.update(training.timings)
    start_step = 0
    if resume:
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")  # the optimizer moves it back
        set_peft_model_state_dict(generator.pipe.unet, state["adapter"], adapter_name=ADAPTER)
        training.optimizer.load_state_dict(state["optimizer"])
        start_step, training.rng = state["step"], restore_rng(state["rng"])
        training.losses, training.fixed_losses = state["losses"], state["fixed_losses"]
    trained = time.perf_counter()
    steps_run = training.steps(start_step, settings.steps, show_progress, on_step, checkpoint_to=out, watch=True)
    generator.style_token = settings.style_token
    timings["train_seconds"] = time.perf_counter() - trained
    timings["total_seconds"] = time.perf_counter() - started
    save_lora(
        generator.pipe,
        out,
        {
            "base": str(base),
            "base_fingerprint": base_fingerprint(base),
            "class_names": list(class_names),
            "template": template,
            "client_class_counts": np.bincount(data.y, minlength=len(class_names)).tolist(),
            # base images trained on for the classes the client lacks (prior preservation)
            "prior_class_counts": np.bincount(training.labels[training.is_prior], minlength=len(class_names)).tolist(),
            "settings": asdict(settings),
            "timings": timings,
            "steps_run": steps_run,  # below settings.steps where the fixed-noise loss stalled (early_stop)
            "loss_every_10_steps": loss_curve(training.losses, 10),
            "fixed_noise_loss": [[step, loss] for step, loss in training.fixed_losses],
        },
    )
    return FinetuneResult(generator, timings, steps_run)
