"""`regl distill-lcm`: the base distilled for few-step sampling, as an LCM-LoRA (Luo et al. 2023).

Latent consistency distillation with the guidance folded into the student. Each step:
1. public-pool latents with their class prompts, noised to a timestep t of the teacher's
   50-step DDIM grid (t = 19, 39, ..., 999);
2. the teacher (the base: the adapter switched off) takes one guided DDIM step from t to
   t − 20, its ε the conditional and unconditional predictions joined by the guidance w;
3. the student (the base plus this adapter) predicts the clean latent at t, through
   LCMScheduler's boundary scalings; its target is its own prediction, without gradient, at
   t − 20 on the teacher's step; a pseudo-Huber loss between them.
Stock diffusers then samples with `LCMScheduler` in 1-4 steps, one UNet call each (guidance
scale 1: no unconditional pass), and a client's LoRA stacks on the adapter with `set_adapters`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from regl.errors import ReglError
from regl.generate.diffusion_loss import encode_latents, encode_prompts, restore_rng, rng_state
from regl.generate.generator import FEW_STEP_ADAPTER, base_fingerprint, load_pipeline
from regl.generate.pretrain import PublicTrainingSet
from regl.generate.settings import DistillSettings
from regl.progress import progress as progress_bar
from regl.seeds import derive_seed

SIGMA_DATA = 0.5  # LCMScheduler's boundary condition
TIMESTEP_SCALING = 10.0  # LCMScheduler's default `timestep_scaling`


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip and c_out at `timesteps`, as LCMScheduler computes them at sampling time (N×1×1×1)."""
    scaled = timesteps.float().view(-1, 1, 1, 1) * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def clean_latent(latents: torch.Tensor, noise: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """The clean latent ε-prediction implies, ᾱ given per sample (N×1×1×1)."""
    return (latents - (1 - alphas).sqrt() * noise) / alphas.sqrt()


def consistency(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod) -> torch.Tensor:
    """The consistency function: c_skip·z + c_out·x̂₀, which is z itself at t = 0."""
    c_skip, c_out = boundary_scalings(timesteps)
    alphas = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return c_skip * latents + c_out * clean_latent(latents, noise, alphas)


def distillation_loss(
    unet,
    alphas_cumprod: torch.Tensor,
    latents: torch.Tensor,
    embeddings: torch.Tensor,
    empty: torch.Tensor,
    settings: DistillSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    """One step's pseudo-Huber consistency loss; the UNet carries the student adapter, switched on."""
    skip = len(alphas_cumprod) // settings.ddim_steps
    index = torch.randint(0, settings.ddim_steps, (len(latents),), generator=generator)
    start = (index + 1) * skip - 1
    previous = (start - skip).clamp(min=0)
    noise = torch.randn(latents.shape, generator=generator)
    alphas = alphas_cumprod[start].view(-1, 1, 1, 1)
    noisy = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
    predicted = consistency(noisy, unet(noisy, start, embeddings).sample, start, alphas_cumprod)
    with torch.no_grad():
        unet.disable_adapters()
        both = unet(torch.cat([noisy, noisy]), torch.cat([start, start]), torch.cat([embeddings, empty])).sample
        unet.enable_adapters()
        conditional, unconditional = both.chunk(2)
        teacher = unconditional + settings.guidance * (conditional - unconditional)
        alphas_previous = alphas_cumprod[previous].view(-1, 1, 1, 1)
        clean = clean_latent(noisy, teacher, alphas)
        stepped = alphas_previous.sqrt() * clean + (1 - alphas_previous).sqrt() * teacher  # DDIM, η = 0
        target = consistency(stepped, unet(stepped, previous, embeddings).sample, previous, alphas_cumprod)
    c = settings.huber_c
    return (((predicted - target) ** 2 + c**2).sqrt() - c).mean()


def distill(base: Path, out: Path, data: PublicTrainingSet, settings: DistillSettings, resume: bool = False) -> dict:
    """Distil `base` on `data` (its pretraining set) into the few-step adapter at `out` (diffusers' LoRA format);
    returns the loss curve and the time taken. A checkpoint every `checkpoint_every` steps in `out/checkpoint`:
    `resume` goes on from it.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from regl.generate.lora import add_adapter, loss_curve, save_lora

    checkpoint = out / "checkpoint" / "state.pt"
    if resume and not checkpoint.is_file():
        raise ReglError(f"--resume given but {out} holds no checkpoint")
    if not resume and checkpoint.is_file():
        raise ReglError(f"{out} holds a checkpoint of an earlier distillation; pass --resume or choose another --out")
    started = time.perf_counter()
    pipe = load_pipeline(base)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    latents = encode_latents(pipe.vae, data.pixels)
    embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, data.prompts)
    add_adapter(pipe.unet, settings.lora(), FEW_STEP_ADAPTER)
    parameters = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    rng = torch.Generator().manual_seed(derive_seed(settings.seed, "lcm-distill"))
    step, losses = 0, []
    if resume:
        state = torch.load(checkpoint, weights_only=False)
        set_peft_model_state_dict(pipe.unet, state["adapter"], adapter_name=FEW_STEP_ADAPTER)
        optimizer.load_state_dict(state["optimizer"])
        step, losses, rng = state["step"], state["losses"], restore_rng(state["rng"])
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    empty = embeddings[-1:]
    progress = progress_bar(range(step, settings.steps), initial=step, total=settings.steps, desc="distil", unit="step")
    for step in progress:
        rows = torch.randint(0, len(latents), (settings.batch_size,), generator=rng)
        loss = distillation_loss(
            pipe.unet,
            alphas_cumprod,
            latents[rows],
            embeddings[data.prompt_index[rows]],
            empty.expand(settings.batch_size, -1, -1),
            settings,
            rng,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            adapter = get_peft_model_state_dict(pipe.unet, adapter_name=FEW_STEP_ADAPTER)
            state = {"step": step + 1, "adapter": adapter, "optimizer": optimizer.state_dict()}
            torch.save({**state, "losses": losses, "rng": rng_state(rng)}, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    record = {
        "base": str(base),
        "base_fingerprint": base_fingerprint(base),
        "settings": asdict(settings),
        "loss_every_100_steps": loss_curve(losses, 100),
        "seconds_this_call": time.perf_counter() - started,
    }
    save_lora(pipe, out, record, FEW_STEP_ADAPTER)
    return record
