"""The `regl` command. Heavy imports (torch, Flower) happen inside each subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from regl.errors import ReglError

FLOWER_STATE_DIR = Path(".flwr")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist-10k",
                        help="mnist-10k (shipped), fashion-mnist, or a folder with one subfolder per class "
                             "(default: %(default)s)")
    _add_partition_options(parser)


def _add_partition_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partition", default="classes", choices=["iid", "classes", "dirichlet", "imbalance"],
                        help="label skew: iid; k classes per client; Dirichlet(beta); global imbalance ratio "
                             "then iid (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=10, help="number of clients (default: %(default)s)")
    parser.add_argument("--classes-per-client", "-k", type=int, default=2,
                        help="k for --partition classes (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=0.5,
                        help="Dirichlet concentration for --partition dirichlet; smaller is more skewed "
                             "(default: %(default)s)")
    parser.add_argument("--imbalance-ratio", type=float, default=10.0,
                        help="majority:minority class count ratio Γ for --partition imbalance (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="partition, model and training seed (default: %(default)s)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20, help="federated rounds (default: %(default)s)")
    parser.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default: %(default)s)")
    parser.add_argument("--model", default="", choices=["", "cnn", "resnet18"],
                        help="classifier; default: cnn for grayscale, resnet18 for RGB data")
    parser.add_argument("--out-dir", default="", help="where rounds.json, summary.json and accuracy.png go "
                                                      "(default: runs/<dataset>-<partition>-s<seed>)")


def _partition_spec(args: argparse.Namespace):
    from regl.partitions import PartitionSpec

    return PartitionSpec(args.partition, args.clients, args.classes_per_client, args.beta,
                         args.imbalance_ratio, args.seed)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    from regl.generator import DEFAULT_BASE, SCHEDULERS

    parser.add_argument("--base", default=str(DEFAULT_BASE), help="diffusers SD folder (default: the shipped base)")
    parser.add_argument("--lora", default="", help="folder with pytorch_lora_weights.safetensors")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="classifier-free guidance scale (default: %(default)s)")
    parser.add_argument("--scheduler", default="dpm", choices=sorted(SCHEDULERS), help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")


def _settings(args: argparse.Namespace, suffix: str = ""):
    from dataclasses import replace

    from regl.experiment import ExperimentSettings
    from regl.training import TrainSettings

    positive = {"--rounds": args.rounds, "--local-epochs": args.local_epochs, "--batch-size": args.batch_size}
    for flag, value in positive.items():
        if value < 1:
            raise ReglError(f"{flag} must be at least 1, got {value}")
    if not args.lr > 0:
        raise ReglError(f"--lr must be > 0, got {args.lr}")
    if args.clients < 2:
        raise ReglError(f"--clients must be at least 2 for a federation, got {args.clients}")
    settings = ExperimentSettings(
        dataset=args.dataset,
        partition=_partition_spec(args),
        model=args.model,
        num_rounds=args.rounds,
        train=TrainSettings(epochs=args.local_epochs, batch_size=args.batch_size, lr=args.lr),
        seed=args.seed,
        out_dir=args.out_dir,
    )
    if not settings.out_dir:
        settings = replace(settings, out_dir=f"runs/{settings.name}{suffix}")
    return settings


def _check_data(settings) -> None:
    """Load the data and partition once up front so bad input fails before Ray starts."""
    from regl.experiment import federation

    federation(settings)


def cmd_partition(args: argparse.Namespace) -> int:
    from regl.datasets import load_split
    from regl.partitions import partition_labels
    from regl.skew_stats import format_table, save_heatmap, skew_stats

    spec = _partition_spec(args)
    private = load_split(args.dataset).private
    partition = partition_labels(spec, private.y, private.num_classes)
    stats = skew_stats(partition.client_indices, private.y, private.num_classes)
    print(format_table(stats, private.class_names))
    name = f"{Path(args.dataset).name}-{spec.describe()}-s{spec.seed}"
    out = Path(args.out or f"runs/partition-{name}.png")
    save_heatmap(stats, private.class_names, out, name)
    print(f"heatmap: {out}")
    return 0


def cmd_fl(args: argparse.Namespace) -> int:
    from regl.sandbox import in_sandbox, rerun_self_isolated

    settings = _settings(args)
    _check_data(settings)
    if not in_sandbox():
        return rerun_self_isolated(FLOWER_STATE_DIR)
    from clients.simulation import simulate

    summary = simulate(settings, num_cpus=args.cpus)
    print(f"final global accuracy {100 * summary['final_accuracy']:.2f}%, mean personalized accuracy "
          f"{100 * summary['final_personalized_accuracy']:.2f}%, {summary['wall_seconds']:.0f}s; "
          f"results in {settings.out_dir} (summary.json, rounds.json, accuracy.png)")
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    import torch

    from regl.centralized import run_centralized

    settings = _settings(args, suffix="-centralized")
    _check_data(settings)
    torch.set_num_threads(args.threads)
    summary = run_centralized(settings)
    print(f"final accuracy {100 * summary['final_accuracy']:.2f}%; results in {settings.out_dir}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from regl.sandbox import run_isolated

    if not args.command:
        raise ReglError("give the command to run, e.g. `regl sandbox flwr run . --stream`")
    return run_isolated(args.command, FLOWER_STATE_DIR)


def cmd_pretrain_base(args: argparse.Namespace) -> int:
    import torch

    from regl.pretrain import PretrainSettings, pretrain_base

    for flag in ("vae_steps", "unet_steps", "batch_size", "checkpoint_every"):
        if getattr(args, flag) < 1:
            raise ReglError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    settings = PretrainSettings(vae_steps=args.vae_steps, unet_steps=args.unet_steps, batch_size=args.batch_size,
                                checkpoint_every=args.checkpoint_every, size=args.size, seed=args.seed)
    result = pretrain_base(Path(args.out), settings, resume=args.resume)
    print(f"base model written to {args.out} ({result['seconds_this_call']:.0f}s in this call)")
    return 0


def _class_list(dataset: str) -> tuple[tuple[str, ...], str]:
    """Class names and prompt template of a dataset, without loading its images when built in."""
    from regl.datasets import BUILTINS, load_dataset
    from regl.prompts import template_for

    names = BUILTINS[dataset].class_names if dataset in BUILTINS else load_dataset(dataset).class_names
    return names, template_for(dataset)


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from regl.datasets import ImageDataset
    from regl.generator import Generator, check_count, save_pngs, to_dataset_format

    check_count(args.n)
    torch.set_num_threads(args.threads)
    names, template = _class_list(args.dataset)
    template = args.template or template
    label = ImageDataset(np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64), names).class_index(args.class_name)
    generator = Generator(Path(args.base), names, template, lora=Path(args.lora) if args.lora else None)
    images = generator.generate_class(label, args.n, args.seed, steps=args.steps, guidance=args.guidance,
                                      scheduler=args.scheduler, batch_size=args.batch_size)
    resolution, channels = _dataset_shape(args.dataset)
    paths = save_pngs(to_dataset_format(images, resolution, channels), Path(args.out),
                      names[label].replace(" ", "-").replace("/", "-"))
    print(f"{len(paths)} images of {names[label]!r} in {args.out}")
    return 0


def _dataset_shape(dataset: str) -> tuple[int, int]:
    from regl.datasets import BUILTINS, load_dataset

    if dataset in BUILTINS:
        return 28, 1
    data = load_dataset(dataset)
    return data.resolution, data.channels


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from regl.datasets import load_dataset
    from regl.lora import LoraSettings, finetune_lora
    from regl.prompts import template_for

    torch.set_num_threads(args.threads)
    if args.client >= 0:
        from regl.experiment import ExperimentSettings, client_data

        if args.client >= args.clients:
            raise ReglError(f"--client must be below --clients ({args.clients}), got {args.client}")
        data = client_data(ExperimentSettings(dataset=args.data, partition=_partition_spec(args)), args.client)
    else:
        data = load_dataset(args.data)
    names, template = data.class_names, args.template or template_for(args.data)
    if args.classes_like:
        names, template = _class_list(args.classes_like)
        template = args.template or template
        if len(names) != data.num_classes:
            raise ReglError(f"{args.data} has {data.num_classes} classes but {args.classes_like} has {len(names)}")
    settings = LoraSettings(rank=args.rank, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            snr_gamma=args.snr_gamma or None, prior_per_class=args.prior_per_class,
                            checkpoint_every=args.checkpoint_every, seed=args.seed)
    result = finetune_lora(data, names, template, Path(args.base), Path(args.out), settings, resume=args.resume)
    print(f"LoRA written to {args.out} ({result.timings['total_seconds']:.0f}s)")
    return 0


def cmd_eval_generator(args: argparse.Namespace) -> int:
    import json

    import torch

    from regl.generator import LORA_METADATA, Generator
    from regl.generator_eval import evaluate_generator, format_quality

    if args.per_class < 2:
        raise ReglError(f"--per-class must be at least 2, got {args.per_class}")
    torch.set_num_threads(args.threads)
    names, template = _class_list(args.dataset)
    lora = Path(args.lora) if args.lora else None
    generator = Generator(Path(args.base), names, template, lora=lora)
    generator.set_lora_scale(args.lora_scale)
    quality, fake = evaluate_generator(generator, args.dataset, args.per_class, args.seed,
                                       steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
    if args.grid:
        from regl.datasets import load_split
        from regl.generator_eval import save_grid

        save_grid(load_split(args.dataset).test, fake, Path(args.grid))
        print(f"grid of real (left) and generated (right) images: {args.grid}")
    title = f"{args.base}" + (f" + LoRA {args.lora} (scale {args.lora_scale})" if lora else "")
    print(format_quality(quality, names, title))
    if lora and (lora / LORA_METADATA).is_file():
        counts = json.loads((lora / LORA_METADATA).read_text())["client_class_counts"]
        own = [c for c, n in enumerate(counts) if n > 0]
        missing = [c for c, n in enumerate(counts) if n == 0]
        print(f"client's own classes {own}: {100 * quality.mean_accuracy(own):.1f}%; "
              f"missing classes: {100 * quality.mean_accuracy(missing) if missing else float('nan'):.1f}%")
    return 0


def cmd_bench_generator(args: argparse.Namespace) -> int:
    from regl.generator_bench import run_benchmark

    print(run_benchmark(Path(args.base), args.dataset, args.threads, args.flop_per_cycle, args.lora_steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regl",
        description="ReGL: recover the global label distribution on skewed federated clients.",
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = sub.add_parser("partition", help="show a label-skew partition's statistics and save its heatmap",
                       description="Partition a dataset's private pool across clients; print per-client class "
                                   "counts, local imbalance γ_j, cosine similarity CS_j and global Γ; save a "
                                   "clients × classes heatmap PNG.")
    _add_data_options(p)
    p.add_argument("--out", default="", help="heatmap PNG path (default: runs/partition-<name>.png)")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("fl", help="run federated training (FedAvg on Flower's simulation engine)",
                       description="Run the ReGL Flower apps on the simulation engine inside a loopback-only "
                                   "network namespace. Writes rounds.json, summary.json and accuracy.png.")
    _add_data_options(p)
    _add_training_options(p)
    p.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use; one client per CPU (default: %(default)s)")
    p.set_defaults(func=cmd_fl)

    p = sub.add_parser("centralized", help="train the same model on the pooled private data (reference arm)",
                       description="Train the federated run's model on the union of the clients' data; "
                                   "one round = --local-epochs epochs. Same outputs as `regl fl`.")
    _add_data_options(p)
    _add_training_options(p)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.set_defaults(func=cmd_centralized)

    p = sub.add_parser("pretrain-base", help="train the tiny Stable Diffusion base on the public pools",
                       description="Train the embedded default base (tiny SD: CLIP text encoder, AutoencoderKL, "
                                   "UNet2DConditionModel) on the public pools of fashion-mnist and mnist-10k only. "
                                   "Checkpoints every --checkpoint-every steps into OUT.pretrain/; --resume "
                                   "continues from there, also to extend a finished run to more steps.")
    p.add_argument("--out", default="models/regl-tiny-sd", help="pipeline folder to write (default: %(default)s)")
    p.add_argument("--vae-steps", type=int, default=3000, help="(default: %(default)s)")
    p.add_argument("--unet-steps", type=int, default=15000, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="(default: %(default)s)")
    p.add_argument("--size", default="tiny", choices=["tiny", "test"],
                   help="tiny: the shipped base; test: a far smaller model for smoke runs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.pretrain/")
    p.set_defaults(func=cmd_pretrain_base)

    from regl.generator import DEFAULT_BASE, SCHEDULERS

    p = sub.add_parser("generate", help="generate images of one class",
                       description="Generate N images of one class with a local Stable Diffusion folder "
                                   "(optionally with a client LoRA) and write them as PNGs at the dataset's "
                                   "resolution and channels.")
    p.add_argument("--class", dest="class_name", required=True, help="class name or index, e.g. sneaker or 7")
    p.add_argument("--n", type=int, default=16, help="number of images (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--dataset", default="fashion-mnist", help="whose class names, prompt template and image "
                                                              "format to use (default: %(default)s)")
    _add_generation_options(p)
    p.add_argument("--template", default="", help="prompt template with {} for the class name")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("finetune", help="fine-tune a LoRA on one client's images",
                       description="LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0) over "
                                   "cached latents; classes the client lacks are kept by prior preservation "
                                   "(base-generated images with their prompts). Writes "
                                   "OUT/pytorch_lora_weights.safetensors, loadable with pipe.load_lora_weights.")
    p.add_argument("--data", required=True, help="client image folder (one subfolder per class), or a dataset "
                                                 "name with --client to take one simulated client's share")
    p.add_argument("--client", type=int, default=-1, help="with a dataset name: fine-tune on this client of the "
                                                          "partition below (default: the whole --data)")
    _add_partition_options(p)
    p.add_argument("--out", required=True, help="LoRA output folder")
    p.add_argument("--base", default=str(DEFAULT_BASE), help="diffusers SD folder (default: the shipped base)")
    p.add_argument("--classes-like", default="", help="take class names and template from this built-in dataset")
    p.add_argument("--template", default="", help="prompt template with {} for the class name")
    p.add_argument("--rank", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR γ; 0 turns it off (default: %(default)s)")
    p.add_argument("--prior-per-class", type=int, default=32,
                   help="base images per missing class kept in training; 0 turns prior preservation off "
                        "(default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval-generator", help="accuracy and Fréchet distance of generated images",
                       description="Train the small CNN on the dataset's real private pool, then report its "
                                   "accuracy per class on generated images and the Fréchet distance between "
                                   "generated and real test images in its feature space.")
    p.add_argument("--dataset", default="fashion-mnist", help="(default: %(default)s)")
    _add_generation_options(p)
    p.add_argument("--lora-scale", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--per-class", type=int, default=100, help="generated images per class (default: %(default)s)")
    p.add_argument("--grid", default="", help="also save a PNG: per class, 8 real then 8 generated images")
    p.set_defaults(func=cmd_eval_generator)

    p = sub.add_parser("bench-generator", help="generation images/s, LoRA steps/s and fine-tune wall time",
                       description="Print generation throughput at batch 64 (20 steps, with and without "
                                   "guidance) with the UNet's FLOP/s as a fraction of the CPU's peak, and the "
                                   "speed and wall time of a default LoRA fine-tune on a one-class client. "
                                   "Run it on an otherwise idle machine.")
    p.add_argument("--base", default=str(DEFAULT_BASE), help="diffusers SD folder (default: the shipped base)")
    p.add_argument("--dataset", default="fashion-mnist", help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="(default: %(default)s)")
    p.add_argument("--flop-per-cycle", type=int, default=32, help="FP32 FLOP/cycle/core for the peak (default: "
                                                                   "%(default)s, AVX-512 on two 256-bit FMA pipes)")
    p.add_argument("--lora-steps", type=int, default=300, help="(default: %(default)s)")
    p.set_defaults(func=cmd_bench_generator)

    p = sub.add_parser("sandbox", help="run a command (e.g. `flwr run .`) offline in a loopback-only namespace",
                       description="Run COMMAND with Flower's offline environment, FLWR_HOME=./.flwr, in new "
                                   "network and PID namespaces: only loopback is reachable and every process "
                                   "it starts is stopped when it ends.")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=cmd_sandbox)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its torchvision notice is noise here
    try:
        return args.func(args)
    except ReglError as exc:
        print(f"regl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
