"""`regl pretrain-base`: train the tiny Stable Diffusion base on the public pools only.

Two stages, each resumable from its last checkpoint: (1) the AutoencoderKL on pixels,
(2) the UNet on cached latents with a frozen, randomly initialised CLIP text encoder,
10% empty prompts for classifier-free guidance, Min-SNR weighting and an EMA of the
weights, which is what ships.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from regl.data.datasets import load_split
from regl.errors import ReglError
from regl.generate.diffusion_loss import (
    denoising_loss,
    encode_latents,
    encode_prompts,
    restore_rng,
    rng_state,
    to_pipeline_pixels,
)
from regl.generate.prompts import class_prompts, prompt_words, template_for
from regl.generate.tiny_sd import TEST_SD, TINY_SD, build_pipeline
from regl.progress import progress as progress_bar
from regl.seeds import derive_seed

SIZES = {"tiny": TINY_SD, "test": TEST_SD}
PUBLIC_DATASETS = ("fashion-mnist", "mnist-10k")


@dataclass(frozen=True)
class PretrainSettings:
    vae_steps: int = 2000
    unet_steps: int = 8000
    batch_size: int = 64
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    kl_weight: float = 1e-6
    cfg_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    size: str = "tiny"
    seed: int = 0


@dataclass(frozen=True)
class PublicTrainingSet:
    pixels: torch.Tensor  # N×3×32×32 in [-1, 1]
    prompt_index: torch.Tensor  # N, index into prompts
    prompts: list[str]  # prompts[-1] is the empty prompt


def public_training_set(datasets: tuple[str, ...] = PUBLIC_DATASETS) -> PublicTrainingSet:
    """The public pools of the built-in datasets, each class with its dataset's prompt."""
    pixels, index, prompts = [], [], []
    for name in datasets:
        public = load_split(name).public
        pixels.append(to_pipeline_pixels(public))
        index.append(torch.from_numpy(public.y) + len(prompts))
        prompts += class_prompts(public.class_names, template_for(name))
    return PublicTrainingSet(torch.cat(pixels), torch.cat(index), prompts + [""])


class Checkpoint:
    """A pipeline folder plus training state, replaced atomically (write new, then swap)."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / "checkpoint"

    def exists(self) -> bool:
        return (self.path / "state.pt").is_file()

    def save(self, pipe, state: dict) -> None:
        tmp = self.path.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp / "pipeline")
        torch.save(state, tmp / "state.pt")
        old = self.path.with_name("checkpoint.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            self.path.rename(old)
        tmp.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)

    def load(self):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(self.path / "pipeline", safety_checker=None)
        return pipe, torch.load(self.path / "state.pt", weights_only=False)


def _train_vae(pipe, data: PublicTrainingSet, settings: PretrainSettings, state: dict, ckpt: Checkpoint) -> None:
    vae = pipe.vae
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:
        generator = restore_rng(state["rng"])
    else:
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, "pretrain-vae"))
    progress = progress_bar(
        range(state["step"], settings.vae_steps),
        initial=state["step"],
        total=settings.vae_steps,
        desc="vae",
        unit="step",
    )
    for step in progress:
        batch = data.pixels[torch.randint(0, len(data.pixels), (settings.batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, batch) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.vae_steps:
            ckpt.save(
                pipe,
                {
                    "stage": "vae",
                    "step": step + 1,
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(generator),
                    "settings": asdict(settings),
                },
            )
    vae.eval()


def _train_unet(pipe, data: PublicTrainingSet, settings: PretrainSettings, state: dict, ckpt: Checkpoint) -> None:
    from diffusers.training_utils import EMAModel

    latents = encode_latents(pipe.vae, data.pixels)
    prompt_embeddings = encode_prompts(pipe.tokenizer, pipe.text_encoder, data.prompts)
    empty = len(data.prompts) - 1
    unet = pipe.unet
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=settings.ema_decay)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
    if "rng" in state:
        generator = restore_rng(state["rng"])
    else:
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, "pretrain-unet"))
    progress = progress_bar(
        range(state["step"], settings.unet_steps),
        initial=state["step"],
        total=settings.unet_steps,
        desc="unet",
        unit="step",
    )
    for step in progress:
        rows = torch.randint(0, len(latents), (settings.batch_size,), generator=generator)
        prompt = data.prompt_index[rows].clone()
        prompt[torch.rand(len(rows), generator=generator) < settings.cfg_dropout] = empty
        loss = denoising_loss(
            unet, pipe.scheduler, latents[rows], prompt_embeddings[prompt], generator, settings.snr_gamma
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.step(unet.parameters())
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.unet_steps:
            ckpt.save(
                pipe,
                {
                    "stage": "unet",
                    "step": step + 1,
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict(),
                    "rng": rng_state(generator),
                    "settings": asdict(settings),
                },
            )
    ema.copy_to(unet.parameters())
    unet.eval()


def _set_latent_scale(vae, pixels: torch.Tensor) -> None:
    """SD's convention: scale latents to unit variance (SD 1.x uses 0.18215)."""
    vae.register_to_config(scaling_factor=1.0)
    std = encode_latents(vae, pixels[:2048]).std().item()
    vae.register_to_config(scaling_factor=1.0 / std)


def _replace_folder(out: Path, pipe) -> None:
    """Save the pipeline beside `out`, keep its model card, then swap the folders."""
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    if (out / "MODEL_CARD.md").exists():
        shutil.copy2(out / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _start_from(base: Path, data: PublicTrainingSet):
    """A trained pipeline whose UNet training goes on: its VAE, text encoder and tokenizer are kept."""
    from regl.generate.generator import load_pipeline

    pipe = load_pipeline(base)
    unknown = [w for w in prompt_words(data.prompts) if len(pipe.tokenizer.tokenize(w)) != 1]
    if unknown:
        raise ReglError(f"{base} was not trained on the public pools' prompts: its tokenizer lacks {unknown}")
    return pipe


def pretrain_base(out: Path, settings: PretrainSettings, resume: bool, start_from: Path | None = None) -> dict:
    """Train (or resume training) and write the pipeline folder `out`; returns timings.

    With `start_from`, the UNet stage begins at that base's weights (fresh optimiser, EMA
    started at them) and runs `settings.unet_steps` more steps: pretraining made longer
    without its lost optimiser state.
    """
    if settings.size not in SIZES:
        raise ReglError(f"unknown model size {settings.size!r}; use one of {', '.join(SIZES)}")
    ckpt = Checkpoint(out.with_name(out.name + ".pretrain"))
    if ckpt.exists() and not resume:
        raise ReglError(f"{ckpt.path} holds an earlier pretraining; pass --resume to continue it or delete it")
    if resume and not ckpt.exists():
        raise ReglError(f"--resume given but there is no checkpoint in {ckpt.path}")
    started = time.perf_counter()
    data = public_training_set()
    if ckpt.exists():
        pipe, state = ckpt.load()
    elif start_from is not None:
        pipe, state = _start_from(start_from, data), {"stage": "unet", "step": 0}
    else:
        init_seed = derive_seed(settings.seed, "pretrain-init")
        torch.manual_seed(init_seed)
        pipe = build_pipeline(SIZES[settings.size], prompt_words(data.prompts), ckpt.path.parent / "init", init_seed)
        state = {"stage": "vae", "step": 0}
    for module in (pipe.text_encoder, pipe.vae, pipe.unet):
        module.requires_grad_(False)
    if state["stage"] == "vae":
        pipe.vae.requires_grad_(True)
        _train_vae(pipe, data, settings, state, ckpt)
        pipe.vae.requires_grad_(False)
        _set_latent_scale(pipe.vae, data.pixels)
        state = {"stage": "unet", "step": 0}
        ckpt.save(pipe, state)
    pipe.unet.requires_grad_(True)
    _train_unet(pipe, data, settings, state, ckpt)
    _replace_folder(out, pipe)
    return {"seconds_this_call": time.perf_counter() - started}
