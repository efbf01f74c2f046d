"""A Stable Diffusion pipeline small enough to train and run on a laptop CPU.

Same architecture as SD 1.x (CLIP tokenizer + CLIP text encoder, AutoencoderKL,
UNet2DConditionModel, a DDPM-family scheduler), only narrower. `TINY_SD` is the shipped
default base; `TEST_SD` is a far smaller random one that tests build from configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
RESOLUTION = 32  # 28×28 datasets are padded to 32 so every down-sampling divides evenly


@dataclass(frozen=True)
class TinySDConfig:
    text_hidden: int
    text_layers: int
    max_tokens: int
    vae_channels: tuple[int, ...]
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    attention_head_dim: int


TINY_SD = TinySDConfig(
    text_hidden=64,
    text_layers=2,
    max_tokens=16,
    vae_channels=(16, 32, 32),
    unet_channels=(64, 128),
    unet_layers_per_block=1,
    attention_head_dim=8,
)
TEST_SD = TinySDConfig(
    text_hidden=32,
    text_layers=1,
    max_tokens=16,
    vae_channels=(8, 16, 16),
    unet_channels=(16, 32),
    unet_layers_per_block=1,
    attention_head_dim=8,
)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary: all bytes, plus merges that make each given word one token.

    Any other text still tokenizes, byte by byte, so unknown words never fail.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(vocab_list)
    # Longest words first: their prefix merges then outrank the short words' merges,
    # so a short word's merge ("a n") cannot split a long word ("handwritten").
    for word in sorted({w.lower() for w in words}, key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in seen:
                merges.append(f"{current} {piece}")
                vocab_list.append(merged)
                seen.add(merged)
            current = merged
    vocab_list += [START, END]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def write_tokenizer(folder: Path, words: list[str], max_tokens: int) -> None:
    """vocab.json + merges.txt + tokenizer_config.json that CLIPTokenizer.from_pretrained reads."""
    vocab, merges = build_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_tokens,
        "bos_token": START,
        "eos_token": END,
        "unk_token": END,
        "pad_token": END,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def load_tokenizer(folder: Path, max_tokens: int):
    from transformers import CLIPTokenizer

    # CLIPTokenizer(vocab_file=..., merges_file=...) silently yields [0, 2, 2, ...] on
    # transformers 5; from_pretrained on the folder reads the files correctly.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_tokens)


def build_pipeline(config: TinySDConfig, words: list[str], work_dir: Path, seed: int = 0):
    """A randomly initialised StableDiffusionPipeline of the given size."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    write_tokenizer(work_dir / "tokenizer", words, config.max_tokens)
    tokenizer = load_tokenizer(work_dir / "tokenizer", config.max_tokens)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden,
            intermediate_size=2 * config.text_hidden,
            num_hidden_layers=config.text_layers,
            num_attention_heads=4,
            max_position_embeddings=config.max_tokens,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=config.text_hidden,
        )
    )
    groups = min(config.vae_channels[0], 8)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        norm_num_groups=groups,
        sample_size=RESOLUTION,
    )
    latent_size = RESOLUTION // 2 ** (len(config.vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=min(config.unet_channels[0], 32),
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
