"""`regl finetune`, `regl pretrain-base` and `regl distill-lcm`: training the generator, a client's LoRA, the base
itself, or the base's few-step adapter.

The LoRA's options are declared on `LoraSettings` (regl/options.py); the base's defaults come from `PretrainSettings`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from regl.cli.generation import add_base_option, add_threads_option
from regl.cli.options import Command, add_compute_options, add_partition_options, partition_spec
from regl.errors import ReglError

if TYPE_CHECKING:
    from regl.data.datasets import ImageDataset


def add_finetune_options(parser: argparse.ArgumentParser) -> None:
    """The data options are the command's; the LoRA's are LoraSettings' declarations."""
    from regl.generate.settings import LoraSettings
    from regl.options import add_arguments, config_fields, default_of

    parser.add_argument(
        "--data",
        required=True,
        help="client image folder (one subfolder per class), or a dataset "
        "name with --client to take one simulated client's share",
    )
    parser.add_argument(
        "--client",
        type=int,
        default=-1,
        help="with a dataset name: fine-tune on this client of the partition below; -1: the whole --data",
    )
    add_partition_options(parser)
    parser.add_argument("--out", required=True, help="LoRA output folder")
    add_base_option(parser)
    parser.add_argument(
        "--classes",
        default="",
        help="the federation's class list, comma-separated (as the run config's classes): a --data folder's "
        "subfolders name some of them, and the classes it lacks are kept by priors",
    )
    parser.add_argument(
        "--classes-like",
        default="",
        help="take class names (unless --classes gives them) and template from this dataset; a --data folder's "
        "subfolders name some of its classes",
    )
    parser.add_argument("--template", default="", help="prompt template with {} for the class name")
    lora_options = list(config_fields(LoraSettings))
    add_arguments(parser, lora_options, {cf.key: default_of(cf.field) for cf in lora_options})
    add_threads_option(parser)
    add_compute_options(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")


def _finetune_data(args: argparse.Namespace) -> tuple[ImageDataset, tuple[str, ...]]:
    """The client's images and the class names the LoRA learns.

    With --classes or --classes-like, a folder (or npz) is labelled by those names, as a
    federation node's own data is: it may hold some of the classes, and the LoRA gets priors
    for the rest. A built-in dataset's labels are indices, so it must have as many classes as
    the names it is given.
    """
    from regl.data.datasets import BUILTINS, load_dataset
    from regl.data.looks import apply_look
    from regl.data.node_data import load_labelled, run_class_names

    names = run_class_names(args.classes_like, args.classes) if args.classes or args.classes_like else None
    if args.client >= 0:
        from regl.fl.experiment import ExperimentSettings, client_data

        if args.client >= args.clients:
            raise ReglError(f"--client must be below --clients ({args.clients}), got {args.client}")
        data = client_data(ExperimentSettings(dataset=args.data, partition=partition_spec(args)), args.client)
    elif args.domain != "none":
        raise ReglError(f"--domain {args.domain} gives each simulated client a look of its own: pick one with --client")
    elif names is not None and args.data not in BUILTINS:
        data = apply_look(load_labelled(args.data, names), args.look)
    else:
        data = apply_look(load_dataset(args.data), args.look)
    if names is None:
        return data, data.class_names
    if len(names) != data.num_classes:
        given = "--classes" if args.classes else args.classes_like
        raise ReglError(f"{args.data} has {data.num_classes} classes but {given} has {len(names)}")
    return data, names


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from regl.compute import resolve
    from regl.generate.lora import finetune_lora
    from regl.generate.prompts import template_for
    from regl.generate.settings import LoraSettings, check_style_token
    from regl.options import check_ranges, config_fields

    torch.set_num_threads(args.threads)
    data, names = _finetune_data(args)
    template = args.template or template_for(args.classes_like or args.data)
    declared = {cf.field.name: getattr(args, cf.dest) for cf in config_fields(LoraSettings)}
    settings = LoraSettings(**declared, seed=args.seed)
    check_style_token(settings.style_token)
    check_ranges(settings)
    settings = replace(settings, snr_gamma=settings.snr_gamma or None)
    compute = resolve(args.device, args.dtype, "training")
    result = finetune_lora(
        data, names, template, Path(args.base), Path(args.out), settings, resume=args.resume, compute=compute
    )
    print(f"LoRA written to {args.out} ({result.timings['total_seconds']:.0f}s on {compute.describe()})")
    return 0


def add_pretrain_options(parser: argparse.ArgumentParser) -> None:
    from regl.generate.pretrain import SIZES, PretrainSettings

    default = PretrainSettings()
    parser.add_argument("--out", default="models/regl-tiny-sd", help="pipeline folder to write")
    parser.add_argument("--vae-steps", type=int, default=default.vae_steps, help="autoencoder training steps")
    parser.add_argument("--unet-steps", type=int, default=default.unet_steps, help="UNet training steps")
    parser.add_argument("--batch-size", type=int, default=default.batch_size, help="images per step")
    parser.add_argument("--checkpoint-every", type=int, default=default.checkpoint_every, help="steps")
    parser.add_argument(
        "--size",
        default=default.size,
        choices=sorted(SIZES),
        help="tiny: the shipped base; test: a far smaller model for smoke runs",
    )
    parser.add_argument("--seed", type=int, default=default.seed, help="initialisation and data order")
    add_threads_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.pretrain/")
    parser.add_argument(
        "--continue-from",
        default="",
        metavar="BASE",
        help="skip the VAE stage and train BASE's UNet --unet-steps more steps (fresh optimiser, EMA "
        "started at BASE's weights); BASE's VAE, text encoder and tokenizer are kept, --size and "
        "--vae-steps are unused",
    )


def cmd_pretrain_base(args: argparse.Namespace) -> int:
    import torch

    from regl.generate.pretrain import PretrainSettings, pretrain_base

    for flag in ("vae_steps", "unet_steps", "batch_size", "checkpoint_every"):
        if getattr(args, flag) < 1:
            raise ReglError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    settings = PretrainSettings(
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        batch_size=args.batch_size,
        checkpoint_every=args.checkpoint_every,
        size=args.size,
        seed=args.seed,
    )
    start_from = Path(args.continue_from) if args.continue_from else None
    result = pretrain_base(Path(args.out), settings, resume=args.resume, start_from=start_from)
    print(f"base model written to {args.out} ({result['seconds_this_call']:.0f}s in this call)")
    return 0


def add_distill_options(parser: argparse.ArgumentParser) -> None:
    """The base and output are the command's; the distillation's options are DistillSettings' declarations."""
    from regl.generate.settings import DistillSettings
    from regl.options import add_arguments, config_fields, default_of

    add_base_option(parser)
    parser.add_argument(
        "--out", default="", help="adapter folder to write; empty: BASE/few-step, where --fill-sampler lcm looks"
    )
    options = list(config_fields(DistillSettings))
    add_arguments(parser, options, {cf.key: default_of(cf.field) for cf in options})
    add_threads_option(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT/checkpoint")


def cmd_distill_lcm(args: argparse.Namespace) -> int:
    import torch

    from regl.generate.consistency import distill
    from regl.generate.generator import FEW_STEP_FOLDER
    from regl.generate.pretrain import public_training_set
    from regl.generate.settings import DistillSettings
    from regl.options import check_ranges, config_fields

    settings = DistillSettings(**{cf.field.name: getattr(args, cf.dest) for cf in config_fields(DistillSettings)})
    check_ranges(settings)
    base = Path(args.base)
    if not (base / "unet").is_dir():
        raise ReglError(f"--base {base} is not a diffusers Stable Diffusion folder (no unet/)")
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else base / FEW_STEP_FOLDER
    record = distill(base, out, public_training_set(), settings, resume=args.resume)
    losses = record["loss_every_100_steps"]
    print(
        f"few-step adapter written to {out} ({record['seconds_this_call']:.0f}s in this call); loss {losses[0]:.4f} "
        f"over the first 100 steps, {losses[-1]:.4f} over the last"
    )
    return 0


COMMANDS = (
    Command(
        "pretrain-base",
        "train the tiny Stable Diffusion base on the public pools",
        "Train the embedded default base (tiny SD: CLIP text encoder, AutoencoderKL, UNet2DConditionModel) "
        "on the public pools of fashion-mnist and mnist-10k only. Checkpoints every --checkpoint-every "
        "steps into OUT.pretrain/; --resume continues from there, also to extend a finished run to more "
        "steps.",
        add_pretrain_options,
        cmd_pretrain_base,
    ),
    Command(
        "distill-lcm",
        "distil the base for few-step sampling (an LCM-LoRA)",
        "Latent consistency distillation (Luo et al. 2023) of the base on its own pretraining images, the "
        "guidance folded in: the adapter it writes (diffusers' LoRA format) samples with LCMScheduler in 1-4 "
        "steps of one UNet pass each, and a client's LoRA stacks on it. Written into the base folder by "
        "default, where --fill-sampler lcm and the lcm scheduler find it. Checkpoints every "
        "--checkpoint-every steps; --resume continues.",
        add_distill_options,
        cmd_distill_lcm,
    ),
    Command(
        "finetune",
        "fine-tune a LoRA on one client's images",
        "LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0) over cached latents; classes "
        "the client lacks are kept by prior preservation (base-generated images with their prompts); with "
        "--classes (or --classes-like) a folder holding some of the federation's classes learns them all. "
        "Writes OUT/pytorch_lora_weights.safetensors, loadable with pipe.load_lora_weights.",
        add_finetune_options,
        cmd_finetune,
    ),
)
