"""`regl eval-generator`: how good generated images are — recognisable, realistic, varied, and able to train.

Accuracy of a real-trained CNN on them, Fréchet distance, precision and recall per class,
and train-on-synthetic-test-on-real (TSTR) beside the same classifier on as many real images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regl.cli.generation import add_sampling_options, class_list
from regl.cli.options import Command
from regl.data.looks import LOOKS
from regl.errors import ReglError
from regl.generate.settings import CLASSES_OF

if TYPE_CHECKING:
    from regl.data.datasets import ImageDataset


def add_eval_generator_options(parser: argparse.ArgumentParser) -> None:
    from regl.fl.settings import ExperimentSettings
    from regl.generate.fidelity import DEFAULT_K
    from regl.train.settings import TrainSettings

    parser.add_argument("--dataset", default=CLASSES_OF, help="whose classes to generate and compare with")
    parser.add_argument(
        "--look",
        default="none",
        choices=LOOKS,
        help="the federation's shared look, as regl fl --look: the real images measured against (private pool, "
        "test set, and the public images TSTR compares with) are in it, so a generator fitted to the look is "
        "judged in it",
    )
    add_sampling_options(parser)
    parser.add_argument("--lora-scale", type=float, default=1.0, help="weight of the LoRA")
    parser.add_argument(
        "--per-class",
        type=int,
        default=100,
        help="generated images per class the reference CNN measures (accuracy, Fréchet distance, precision and "
        "recall); with --tstr, the first this many of each class of the one generated set",
    )
    parser.add_argument(
        "--pr-k",
        type=int,
        default=DEFAULT_K,
        help="k of the k-nearest-neighbour manifolds of precision and recall (Kynkäänniemi et al. 2019)",
    )
    parser.add_argument(
        "--tstr",
        default="",
        metavar="N,N,...",
        help="train on synthetic, test on real: images per class, e.g. 100,500,1000; for each N the federated "
        "arms' classifier and optimiser train on the first N generated and on N real public-pool images per class "
        "(fewer where the pool holds fewer), then meet the real test set; one generation at the largest N serves "
        "all",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=ExperimentSettings().num_rounds * TrainSettings().epochs,
        help="TSTR training epochs; the default is the passes over its data a default federated run gives a "
        "client (rounds × local epochs)",
    )
    parser.add_argument(
        "--save-generated",
        default="",
        metavar="FILE.npz",
        help="also write the generated set, with its settings, for a later --load-generated; it is saved "
        "every 5,000 images, and the same command continues a set an interruption cut off",
    )
    parser.add_argument(
        "--load-generated",
        default="",
        metavar="FILE.npz",
        help="measure a set --save-generated wrote instead of generating (the sampling options are then unused)",
    )
    parser.add_argument(
        "--out", default="", metavar="FILE.json", help="also write every figure, the settings and the environment"
    )
    parser.add_argument("--grid", default="", help="also save a PNG: per class, 8 real then 8 generated images")
    parser.add_argument(
        "--own-classes",
        default="",
        help="comma-separated classes a client holds: their accuracy and Fréchet distance are "
        "reported apart from the other (missing) classes; empty: the LoRA's client's",
    )


def check_eval_generator_args(args: argparse.Namespace, counts: list[int], test_counts: list[int]) -> None:
    """Fail before hours of generation, not after."""
    if args.per_class < 2:
        raise ReglError(f"--per-class must be at least 2, got {args.per_class}")
    if args.pr_k < 1:
        raise ReglError(f"--pr-k must be at least 1, got {args.pr_k}")
    if min(args.per_class, *test_counts) <= args.pr_k:
        raise ReglError(
            f"precision and recall with --pr-k {args.pr_k} need more than {args.pr_k} generated and real test "
            f"images per class; --per-class is {args.per_class}, the smallest test class has {min(test_counts)}"
        )
    if counts and args.epochs < 1:
        raise ReglError(f"--epochs must be at least 1, got {args.epochs}")
    if args.save_generated and args.load_generated:
        raise ReglError("--save-generated and --load-generated exclude each other: a loaded set is already saved")
    if args.load_generated and not Path(args.load_generated).is_file():
        raise ReglError(f"generated set {args.load_generated} does not exist")


def generated_images(
    args: argparse.Namespace, names: tuple[str, ...], template: str, like: ImageDataset, per_class: int
) -> tuple[ImageDataset, dict[str, Any]]:
    """The set to measure: loaded, or generated (saved as it grows if asked, and then continued
    from what an interrupted call saved), and the settings that drew it."""
    from regl.compute import resolve
    from regl.fill.keys import compute_key
    from regl.generate.generated_sets import generated_set, load_generated, save_generated, saved_part
    from regl.generate.generator import Generator, base_fingerprint
    from regl.seeds import SEED_DERIVATION

    if args.load_generated:
        path = Path(args.load_generated)
        fake, generation = load_generated(path, names, like.resolution, like.channels, per_class)
        return fake, {**generation, "loaded_from": args.load_generated}
    lora = Path(args.lora) if args.lora else None
    compute = resolve(args.device, args.dtype)
    sampling = {"steps": args.steps, "guidance": args.guidance, "scheduler": args.scheduler}
    generation = {
        "dataset": args.dataset,
        "base": args.base,
        "base_fingerprint": base_fingerprint(Path(args.base)),
        "lora": args.lora,
        "lora_scale": args.lora_scale if lora else None,
        "template": template,
        **sampling,
        "seed": args.seed,
        "seeds": SEED_DERIVATION,
        "per_class": per_class,
        **compute_key(compute),  # a set begun in one precision is not finished in another
    }
    save_to = Path(args.save_generated) if args.save_generated else None
    earlier = saved_part(save_to, generation, names, like.resolution, like.channels) if save_to else None
    done = earlier[0] if earlier else None
    if done is not None and len(done.y) == per_class * len(names):
        print(f"generated set ({per_class} images per class): already finished in {save_to}")
        return done, earlier[1]
    if done is not None:
        print(f"continuing {save_to}: {len(done.y)} of {per_class * len(names)} images are there")
    generator = Generator(Path(args.base), names, template, lora=lora, compute=compute)
    generator.set_lora_scale(args.lora_scale)

    def keep(so_far: ImageDataset) -> None:
        save_generated(save_to, so_far, {**generation, "images_per_second": None})

    classes = list(range(len(names)))
    fake, speed = generated_set(
        generator, classes, per_class, args.seed, like, done=done, keep=keep if save_to else None, **sampling
    )
    generation["images_per_second"] = speed
    if save_to:
        save_generated(save_to, fake, generation)
        print(f"generated set ({per_class} images per class): {save_to}")
    return fake, generation


def cmd_eval_generator(args: argparse.Namespace) -> int:
    import torch

    from regl.data.datasets import DatasetSplit, load_split
    from regl.data.looks import apply_look, split_in_look
    from regl.generate.evaluate import format_quality, measure_generated, quality_record
    from regl.generate.tstr import check_public_pool, format_tstr, parse_counts, train_on_synthetic, tstr_record

    counts = parse_counts(args.tstr)
    looked = split_in_look(load_split(args.dataset), args.look)
    split = DatasetSplit(looked.private, apply_look(looked.public, args.look), looked.test)
    check_eval_generator_args(args, counts, split.test.class_counts().tolist())
    if counts:
        check_public_pool(split.public)
    torch.set_num_threads(args.threads)
    names, template = class_list(args.dataset)
    fake, generation = generated_images(args, names, template, split.test, max([args.per_class, *counts]))
    lora = Path(generation["lora"]) if generation["lora"] else None
    own = own_classes(args.own_classes, names, lora)
    groups = {"client's own classes": own, "missing classes": [c for c in range(len(names)) if c not in own]}
    groups = groups if own else None
    quality = measure_generated(
        fake,
        args.dataset,
        args.per_class,
        groups=groups,
        k=args.pr_k,
        images_per_second=generation["images_per_second"],
        look=args.look,
    )
    if args.grid:
        from regl.generate.evaluate import save_grid

        save_grid(split.test, fake, Path(args.grid))
        print(f"grid of real (left) and generated (right) images: {args.grid}")
    title = f"{generation['base']}" + (f" + LoRA {lora} (scale {generation['lora_scale']})" if lora else "")
    if args.load_generated:
        title += f", generated set {args.load_generated}"
    if args.look != "none":
        title += f", judged against real images in the look {args.look}"
    print(format_quality(quality, names, title, groups))
    rows = train_on_synthetic(fake, split.public, split.test, counts, args.epochs, args.seed) if counts else []
    if rows:
        print(f"\n{format_tstr(rows, split.test, args.epochs, args.seed)}")
    if args.out:
        from regl.atomic import write_json_atomically
        from regl.environment import describe

        record = {
            "dataset": args.dataset,
            "look": args.look,
            "generation": generation,
            "quality": quality_record(quality, names, groups),
            "tstr": tstr_record(rows, split.test, args.epochs, args.seed) if rows else None,
            "environment": describe(),
        }
        write_json_atomically(Path(args.out), record)
        print(f"figures: {args.out}")
    return 0


def own_classes(spec: str, names: tuple[str, ...], lora: Path | None) -> list[int]:
    """Classes given as `a,b,c`, else those the LoRA's client held, else none."""
    from regl.data.datasets import class_index
    from regl.generate.generator import LORA_METADATA

    if spec:
        return sorted({class_index(names, part.strip()) for part in spec.split(",")})
    if lora and (lora / LORA_METADATA).is_file():
        counts = json.loads((lora / LORA_METADATA).read_text())["client_class_counts"]
        return [c for c, n in enumerate(counts) if n > 0]
    return []


COMMANDS = (
    Command(
        "eval-generator",
        "accuracy, Fréchet distance, precision/recall and TSTR of generated images",
        "Train the small CNN on the dataset's real private pool, then report its accuracy per class on "
        "generated images, and the Fréchet distance, precision and recall (k-NN manifolds) between generated and "
        "real test images in its feature space. With --tstr, also train the federated arms' classifier on "
        "generated images alone and on as many real public-pool images, and compare their real test accuracy.",
        add_eval_generator_options,
        cmd_eval_generator,
    ),
)
