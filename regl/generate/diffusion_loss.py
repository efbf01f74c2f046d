"""The denoising objective shared by base pretraining and LoRA fine-tuning."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from regl.data.datasets import ImageDataset
from regl.generate.settings import PADDING
from regl.generate.tiny_sd import RESOLUTION


def to_pipeline_pixels(data: ImageDataset) -> torch.Tensor:
    """uint8 N×H×W×C → float N×3×32×32 in [-1, 1]: 28×28 images padded (PADDING), gray repeated to RGB."""
    x = torch.tensor(data.x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # a copy: data may be read-only
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    pad = RESOLUTION - x.shape[-1]
    if pad > 0:
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), mode=PADDING)
    elif pad < 0:
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means, scaled by the VAE's scaling factor, as the UNet sees them."""
    out = [vae.encode(pixels[i : i + batch_size]).latent_dist.mean for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) * vae.config.scaling_factor


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al., 2023)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def denoising_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    generator: torch.Generator,
    snr_gamma: float | None,
) -> torch.Tensor:
    """ε-prediction MSE at uniformly drawn timesteps, optionally Min-SNR weighted."""
    # drawn on the CPU, so a seed gives the same noise on any device
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    predicted = unet(noisy, timesteps, text_embeddings).sample
    per_sample = F.mse_loss(predicted.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, snr_gamma)
    return per_sample.mean()


def rng_state(generator: torch.Generator) -> list[int]:
    return generator.get_state().tolist()


def restore_rng(state: list[int]) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(torch.tensor(np.asarray(state, dtype=np.uint8)))
    return generator
