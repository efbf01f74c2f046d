"""`regl generate` and `bench-generator`: images from a base (and a LoRA), and how fast they come.

Sampling defaults come from `SamplingSettings`; the helpers here are shared with `training.py`
and `evaluation.py`.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regl.cli.options import Command, add_compute_options
from regl.errors import ReglError
from regl.generate.settings import CLASSES_OF, TORCH_THREADS

if TYPE_CHECKING:
    pass


def sampling_defaults() -> dict[str, Any]:
    """steps, guidance, scheduler and batch_size of `SamplingSettings`."""
    from regl.generate.settings import SamplingSettings

    return asdict(SamplingSettings())


def add_base_option(parser: argparse.ArgumentParser) -> None:
    from regl.generate.generator import DEFAULT_BASE

    parser.add_argument(
        "--base", default=str(DEFAULT_BASE), help="diffusers SD folder; the default is the shipped base"
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=TORCH_THREADS, help="torch CPU threads")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    from regl.generate.generator import SCHEDULERS

    default = sampling_defaults()
    add_base_option(parser)
    parser.add_argument("--lora", default="", help="folder with pytorch_lora_weights.safetensors")
    parser.add_argument("--seed", type=int, default=0, help="image i depends only on its class and (seed, i)")
    parser.add_argument("--steps", type=int, default=default["steps"], help="denoising steps")
    parser.add_argument("--guidance", type=float, default=default["guidance"], help="classifier-free guidance scale")
    parser.add_argument("--scheduler", default=default["scheduler"], choices=sorted(SCHEDULERS), help="sampler")
    add_threads_option(parser)
    add_compute_options(parser)


def class_list(dataset: str) -> tuple[tuple[str, ...], str]:
    """Class names and prompt template of a dataset, without loading its images when built in."""
    from regl.data.datasets import BUILTINS, load_dataset
    from regl.generate.prompts import template_for

    names = BUILTINS[dataset].class_names if dataset in BUILTINS else load_dataset(dataset).class_names
    return names, template_for(dataset)


def dataset_shape(dataset: str) -> tuple[int, int]:
    """Resolution and channels of the dataset's images."""
    from regl.data.datasets import BUILTINS, load_dataset

    if dataset in BUILTINS:
        return 28, 1
    data = load_dataset(dataset)
    return data.resolution, data.channels


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class", dest="class_name", required=True, help="class name or index, e.g. sneaker or 7")
    parser.add_argument("-n", "--n", type=int, default=16, help="number of images")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument(
        "--dataset", default=CLASSES_OF, help="whose class names, prompt template and image format to use"
    )
    add_sampling_options(parser)
    parser.add_argument(
        "--template", default="", help="prompt template with {} for the class name; empty: the dataset's"
    )
    parser.add_argument(
        "--batch-size", type=int, default=sampling_defaults()["batch_size"], help="images per pipeline call"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from regl.compute import resolve
    from regl.data.datasets import class_index
    from regl.generate.generator import Generator, check_count, save_pngs, to_dataset_format

    check_count(args.n)
    torch.set_num_threads(args.threads)
    names, template = class_list(args.dataset)
    template = args.template or template
    label = class_index(names, args.class_name)
    generator = Generator(
        Path(args.base),
        names,
        template,
        lora=Path(args.lora) if args.lora else None,
        compute=resolve(args.device, args.dtype),
    )
    images = generator.generate_class(
        label,
        args.n,
        args.seed,
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
    )
    resolution, channels = dataset_shape(args.dataset)
    paths = save_pngs(
        to_dataset_format(images, resolution, channels),
        Path(args.out),
        names[label].replace(" ", "-").replace("/", "-"),
    )
    print(f"{len(paths)} images of {names[label]!r} in {args.out}")
    return 0


def add_bench_generator_options(parser: argparse.ArgumentParser) -> None:
    from regl.generate.settings import LoraSettings

    add_base_option(parser)
    parser.add_argument("--dataset", default=CLASSES_OF, help="whose classes and client images to use")
    add_threads_option(parser)
    parser.add_argument(
        "--flop-per-cycle",
        type=int,
        default=32,
        help="FP32 FLOP/cycle/core for the peak (32: AVX-512 on two 256-bit FMA pipes)",
    )
    parser.add_argument("--lora-steps", type=int, default=LoraSettings().steps, help="steps of the timed fine-tune")
    add_compute_options(parser)


def cmd_bench_generator(args: argparse.Namespace) -> int:
    from regl.generate.bench import run_benchmark

    print(
        run_benchmark(
            Path(args.base),
            args.dataset,
            args.threads,
            args.flop_per_cycle,
            args.lora_steps,
            (args.device, args.dtype),
        )
    )
    return 0


def add_bench_sampler_options(parser: argparse.ArgumentParser) -> None:
    from regl.fl.settings import ExperimentSettings
    from regl.train.settings import TrainSettings

    add_base_option(parser)
    parser.add_argument("--dataset", default=CLASSES_OF, help="whose classes to generate and test on")
    parser.add_argument("--schedulers", default="dpm,unipc,ddim", help="comma-separated samplers")
    parser.add_argument("--steps", default="4,6,8,10,15,20", help="comma-separated step counts")
    parser.add_argument("--guidance", default="1,1.5", help="comma-separated guidance scales; 1: no guidance")
    parser.add_argument("--per-class", type=int, default=200, help="images per class each row draws and measures")
    parser.add_argument(
        "--epochs",
        type=int,
        default=ExperimentSettings().num_rounds * TrainSettings().epochs,
        help="TSTR training epochs: the passes a default federated run gives a client",
    )
    parser.add_argument("--seed", type=int, default=0, help="image, classifier and TSTR seed")
    parser.add_argument("--out-dir", required=True, help="one JSON per row and table.md; rerun to resume")
    add_threads_option(parser)
    add_compute_options(parser)


def _number_list(flag: str, text: str, kind: type) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ReglError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def cmd_bench_sampler(args: argparse.Namespace) -> int:
    import torch

    from regl.compute import resolve
    from regl.generate.fidelity import DEFAULT_K
    from regl.generate.generator import check_count, check_model_folder
    from regl.generate.sampler_sweep import run_sweep, sweep_rows

    check_model_folder(Path(args.base))
    check_count(args.per_class)
    if args.per_class <= DEFAULT_K:
        raise ReglError(f"--per-class must exceed the precision/recall k ({DEFAULT_K}), got {args.per_class}")
    if args.epochs < 1:
        raise ReglError(f"--epochs must be at least 1, got {args.epochs}")
    rows = sweep_rows(
        [s.strip() for s in args.schedulers.split(",") if s.strip()],
        _number_list("--steps", args.steps, int),
        _number_list("--guidance", args.guidance, float),
    )
    torch.set_num_threads(args.threads)
    compute = resolve(args.device, args.dtype)
    print(
        run_sweep(
            Path(args.base), args.dataset, rows, args.per_class, args.seed, args.epochs, Path(args.out_dir), compute
        )
    )
    return 0


COMMANDS = (
    Command(
        "generate",
        "generate images of one class",
        "Generate N images of one class with a local Stable Diffusion folder (optionally with a client "
        "LoRA) and write them as PNGs at the dataset's resolution and channels.",
        add_generate_options,
        cmd_generate,
    ),
    Command(
        "bench-generator",
        "generation images/s, LoRA steps/s and fine-tune wall time",
        "Print generation throughput at batch 64 (the fill's sampling and plain generation's) with the UNet's "
        "FLOP/s as a fraction of the hardware's peak, the speed and wall time of a default LoRA fine-tune "
        "on a one-class client, and one client's fill of `make demo` stage by stage. Run it on an otherwise "
        "idle machine.",
        add_bench_generator_options,
        cmd_bench_generator,
    ),
    Command(
        "bench-sampler",
        "images/s against TSTR and fidelity over samplers, steps and guidance",
        "For every sampler × guidance × steps, draw --per-class images of each class from the base, time it, and "
        "measure them: TSTR (the federated classifier trained on them alone, tested on real images), the reference "
        "classifier's accuracy on them, Fréchet distance, precision and recall. One JSON per row in --out-dir plus "
        "table.md; a rerun keeps the rows already measured. Run it on an otherwise idle machine.",
        add_bench_sampler_options,
        cmd_bench_sampler,
    ),
)
