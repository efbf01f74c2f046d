"""What the `regl` commands share: the parser and help classes and the experiment's option groups.

Every experiment option takes its default from `ExperimentSettings()` (regl/fl/settings.py),
through `EXPERIMENT_OPTIONS`; the same table turns parsed options into settings, and
settings back into a command line (`argv.py`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from regl.errors import ReglError

if TYPE_CHECKING:
    from regl.data.partitions import PartitionSpec
    from regl.fl.settings import ExperimentSettings

# `regl fl` option (its argparse dest) → its key in ExperimentSettings.to_config()
EXPERIMENT_OPTIONS = {
    "dataset": "dataset",
    "classes": "classes",
    "test_data": "test-data",
    "partition": "partition-kind",
    "clients": "partition-num-clients",
    "classes_per_client": "partition-classes-per-client",
    "beta": "partition-beta",
    "imbalance_ratio": "partition-imbalance-ratio",
    "domain": "partition-domain",
    "seed": "seed",
    "rounds": "num-rounds",
    "local_epochs": "train-epochs",
    "batch_size": "train-batch-size",
    "lr": "train-lr",
    "model": "model",
    "out_dir": "out-dir",
    "fill": "fill",
    "fill_supplement": "fill-supplement",
    "fill_mix": "fill-mix",
    "fill_target": "fill-target",
    "fill_lora": "fill-lora",
    "fill_lora_steps": "fill-lora-steps",
    "fill_prior_per_class": "fill-prior-per-class",
    "fill_lora_style_token": "fill-lora-style-token",
    "fill_steps": "fill-steps",
    "fill_guidance": "fill-guidance",
    "fill_base": "fill-base",
    "fill_store": "fill-store",
    "fill_device": "fill-device",
    "fill_dtype": "fill-dtype",
    "warm_start_per_class": "warm-start-per-class",
    "warm_start_epochs": "warm-start-epochs",
    "init": "init",
    "init_freeze": "init-freeze",
    "loss": "loss",
    "augment": "augment",
    "strategy": "strategy",
    "fedprox_mu": "fedprox-mu",
    "aggregate_weight": "aggregate-weight",
    "dp_noise": "dp-noise",
    "dp_clip": "dp-clip",
    "dp_clipping": "dp-clipping",
}
CPUS = 2  # Ray workers of `regl fl` and `regl bench`: one client at a time on each


class Parser(argparse.ArgumentParser):
    """Bad input ends in one line, `regl: error: ...`, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"regl: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default except for flags and unset options (empty, none): their help says what they mean."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or str(action.default) in ("", "None"):
            return action.help
        return super()._get_help_string(action)


@dataclass(frozen=True)
class Command:
    """One subcommand. Its options are added only when it runs, so `regl --help` imports nothing heavy."""

    name: str
    help: str
    description: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def experiment_defaults() -> dict[str, Any]:
    """Option dest → default, from `ExperimentSettings()`."""
    from regl.fl.settings import ExperimentSettings

    config = ExperimentSettings().to_config()
    return {dest: config[key] for dest, key in EXPERIMENT_OPTIONS.items()}


def add_partition_options(parser: argparse.ArgumentParser) -> None:
    from regl.data.domains import DOMAIN_KINDS
    from regl.data.partitions import PARTITION_KINDS

    default = experiment_defaults()
    parser.add_argument(
        "--partition",
        default=default["partition"],
        choices=PARTITION_KINDS,
        help="label skew: iid; k classes per client; Dirichlet(beta); global imbalance ratio then iid",
    )
    parser.add_argument("--clients", type=int, default=default["clients"], help="number of clients")
    parser.add_argument(
        "--classes-per-client", "-k", type=int, default=default["classes_per_client"], help="k for --partition classes"
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=default["beta"],
        help="Dirichlet concentration for --partition dirichlet; smaller is more skewed",
    )
    parser.add_argument(
        "--imbalance-ratio",
        type=float,
        default=default["imbalance_ratio"],
        help="majority:minority class count ratio Γ for --partition imbalance",
    )
    parser.add_argument(
        "--domain",
        default=default["domain"],
        choices=DOMAIN_KINDS,
        help="feature skew: each client's images (training and test) in a look of its own; rotate: "
        "0-75 degrees, style: stroke/gamma/inversion, noise: Gaussian std 0.1*j/(N-1)",
    )
    parser.add_argument("--seed", type=int, default=default["seed"], help="partition, model and training seed")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default=experiment_defaults()["dataset"],
        help="mnist-10k (shipped), fashion-mnist, or a folder with one subfolder per class",
    )
    add_partition_options(parser)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    default = experiment_defaults()
    parser.add_argument("--rounds", type=int, default=default["rounds"], help="federated rounds")
    parser.add_argument("--local-epochs", type=int, default=default["local_epochs"], help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=default["batch_size"], help="local batch size")
    parser.add_argument("--lr", type=float, default=default["lr"], help="SGD learning rate")
    parser.add_argument(
        "--model",
        default=default["model"],
        choices=["", "cnn", "resnet18"],
        help="classifier; empty: cnn for grayscale, resnet18 for RGB data",
    )
    parser.add_argument(
        "--out-dir",
        default=default["out_dir"],
        help="where rounds.json, summary.json and accuracy.png go; empty: runs/<run name>",
    )


def add_warm_start_options(parser: argparse.ArgumentParser) -> None:
    from regl.fl.settings import INITS

    default = experiment_defaults()
    group = parser.add_argument_group(
        "warm start", "the server trains the initial global model on balanced images before round 1"
    )
    group.add_argument(
        "--warm-start-per-class",
        type=int,
        default=default["warm_start_per_class"],
        help="images of every class the server trains on (--init synthetic: generated with the base at the "
        "fill's steps and guidance); 0: off",
    )
    group.add_argument(
        "--warm-start-epochs", type=int, default=default["warm_start_epochs"], help="epochs over those images"
    )
    group.add_argument(
        "--init",
        default=default["init"],
        choices=INITS,
        help="what the warm start trains on: synthetic (the base's images, no public data needed) or public "
        "(the public pool's real images: transfer learning)",
    )
    group.add_argument(
        "--init-freeze",
        action="store_true",
        default=default["init_freeze"],
        help="keep the warm-started feature extractor frozen: clients train the output layer only",
    )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The imbalance methods a fill is compared with and combined with: local loss, strategy, DP, augmentation."""
    from regl.fl.settings import AGGREGATE_WEIGHTS, DP_CLIPPING, STRATEGIES
    from regl.train.losses import LOSSES

    default = experiment_defaults()
    group = parser.add_argument_group("imbalance methods", "the clients' loss, the server's strategy, privacy")
    group.add_argument(
        "--loss",
        default=default["loss"],
        choices=LOSSES,
        help="local loss: cross-entropy, focal (γ 2), class-balanced (β 0.9999), balanced-softmax, fedlc (τ 1), "
        "fedrs (α 0.5), ratio (Ratio Loss with the server's composition monitor)",
    )
    group.add_argument(
        "--augment",
        action="store_true",
        default=default["augment"],
        help="random shifts, rotations ≤ 10°, brightness/contrast, and mirror flips where the classes allow them",
    )
    group.add_argument(
        "--strategy",
        default=default["strategy"],
        choices=STRATEGIES,
        help="the server's strategy: fedavg, fedprox (clients add μ/2·‖w − w_global‖²), fedavgm (server momentum "
        "0.9), fedadam (server Adam, η 0.01)",
    )
    group.add_argument("--fedprox-mu", type=float, default=default["fedprox_mu"], help="FedProx's μ")
    group.add_argument(
        "--aggregate-weight",
        default=default["aggregate_weight"],
        choices=AGGREGATE_WEIGHTS,
        help="each client's weight in the average: its examples, or its mean share of each class's count",
    )
    group.add_argument(
        "--dp-noise",
        type=float,
        default=default["dp_noise"],
        help="client-level DP: Gaussian noise multiplier z on the uniform mean of clipped updates; 0: off",
    )
    group.add_argument("--dp-clip", type=float, default=default["dp_clip"], help="L2 bound on each client's update")
    group.add_argument(
        "--dp-clipping",
        default=default["dp_clipping"],
        choices=DP_CLIPPING,
        help="who clips the updates: each client (Flower's fixedclipping_mod) or the server",
    )


def add_fill_options(parser: argparse.ArgumentParser, with_mode: bool = True) -> None:
    """Without the mode (`regl bench`: each arm sets it) --fill-mix is kept apart as `arm_mix`."""
    default = experiment_defaults()
    group = parser.add_argument_group("synthetic fill", "what each client adds to its real data before round 1")
    if with_mode:
        group.add_argument(
            "--fill",
            default=default["fill"],
            help="none, public (the base's whole public pretraining pool, as real data), or sources "
            "joined by '+': diffusion, noise, mixup, public-equal (real public images at the planned counts), "
            "oracle (base images in the client's true --domain), e.g. diffusion+noise",
        )
    group.add_argument(
        "--fill-supplement",
        type=float,
        default=default["fill_supplement"],
        help="synthetic images as a fraction of each client's real ones",
    )
    group.add_argument(
        "--fill-mix",
        dest="fill_mix" if with_mode else "arm_mix",
        metavar="MIX",
        default=default["fill_mix"],
        help="weights of the fill's sources in their order, e.g. 75:25; empty: equal",
    )
    group.add_argument(
        "--fill-target",
        default=default["fill_target"],
        choices=["uniform", "global"],
        help="class composition to fill towards; global asks every client for its class counts",
    )
    group.add_argument(
        "--fill-no-lora",
        dest="fill_lora",
        action="store_false",
        default=default["fill_lora"],
        help="diffusion from the base as is, without fine-tuning each client's LoRA",
    )
    group.add_argument(
        "--fill-lora-steps", type=int, default=default["fill_lora_steps"], help="each client's LoRA fine-tuning steps"
    )
    group.add_argument(
        "--fill-prior-per-class",
        type=int,
        default=default["fill_prior_per_class"],
        help="base images per missing class kept in LoRA training",
    )
    group.add_argument(
        "--fill-lora-style-token",
        metavar="WORD",
        default=default["fill_lora_style_token"],
        help="a word for the client's look in its LoRA's prompts (on its own images' prompts, not the priors', "
        "and on every prompt the fill generates with), e.g. sks; empty: none",
    )
    group.add_argument("--fill-steps", type=int, default=default["fill_steps"], help="diffusion sampling steps")
    group.add_argument(
        "--fill-guidance", type=float, default=default["fill_guidance"], help="classifier-free guidance scale"
    )
    group.add_argument("--fill-base", default=default["fill_base"], help="diffusers SD folder; empty: the shipped base")
    group.add_argument(
        "--fill-store",
        default=default["fill_store"],
        help="where clients keep their synthetic stores and LoRAs; reused when nothing changed",
    )
    add_compute_options(group, "--fill-", default["fill_device"], default["fill_dtype"])


def add_compute_options(
    parser: argparse._ActionsContainer, prefix: str = "--", device: str = "auto", dtype: str = "auto"
) -> None:
    """Where the generator and LoRA run and in what precision; the rules are in regl/compute.py."""
    from regl.compute import DEVICES, DTYPES

    parser.add_argument(
        f"{prefix}device", default=device, choices=DEVICES, help="auto: cuda when torch sees a GPU, else cpu"
    )
    parser.add_argument(
        f"{prefix}dtype",
        default=dtype,
        choices=DTYPES,
        help="auto: float16 generation on CUDA, a LoRA in bf16 autocast over float32 weights; on a CPU with "
        "bf16 instructions (AVX512-BF16, AMX) bf16 autocast for generation and float32 for a LoRA, else float32",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How a simulated run uses the machine and what it prints; not part of the experiment."""
    parser.add_argument("--cpus", type=int, default=CPUS, help="CPUs Ray may use; one client per CPU")
    parser.add_argument(
        "--verbose", action="store_true", help="also show Flower's and Ray's logs (always kept in OUT_DIR/flower.log)"
    )


def partition_spec(args: argparse.Namespace) -> PartitionSpec:
    from regl.data.partitions import PartitionSpec

    return PartitionSpec(
        kind=args.partition,
        num_clients=args.clients,
        classes_per_client=args.classes_per_client,
        beta=args.beta,
        imbalance_ratio=args.imbalance_ratio,
        domain=args.domain,
        seed=args.seed,
    )


def experiment_settings(args: argparse.Namespace, out_suffix: str = "") -> ExperimentSettings:
    """The settings the parsed options ask for, checked; options a command lacks keep their defaults.

    The fill store and base become absolute paths (child runs may start elsewhere), and an
    empty --out-dir becomes runs/<run name><out_suffix>.
    """
    from regl.fl.settings import ExperimentSettings

    positive = {"--rounds": args.rounds, "--local-epochs": args.local_epochs, "--batch-size": args.batch_size}
    for flag, value in positive.items():
        if value < 1:
            raise ReglError(f"{flag} must be at least 1, got {value}")
    if not args.lr > 0:
        raise ReglError(f"--lr must be > 0, got {args.lr}")
    if getattr(args, "warm_start_per_class", 0) < 0 or getattr(args, "warm_start_epochs", 1) < 1:
        raise ReglError(
            f"--warm-start-per-class must be ≥ 0 and --warm-start-epochs ≥ 1, got {args.warm_start_per_class} "
            f"and {args.warm_start_epochs}"
        )
    if args.clients < 2:
        raise ReglError(f"--clients must be at least 2 for a federation, got {args.clients}")
    settings = ExperimentSettings.from_config(
        {key: getattr(args, dest) for dest, key in EXPERIMENT_OPTIONS.items() if hasattr(args, dest)}
    )
    fill = settings.fill
    settings = replace(
        settings,
        fill=replace(
            fill, store=str(Path(fill.store).resolve()), base=str(Path(fill.base).resolve()) if fill.base else ""
        ),
    )
    settings.fill.check()
    settings.check()
    if "oracle" in settings.fill.sources and settings.partition.domain == "none":
        raise ReglError("--fill oracle passes base images through each client's domain: give a --domain")
    if "diffusion" in settings.fill.sources or (settings.warm_start_per_class and settings.init == "synthetic"):
        from regl.generate.generator import check_model_folder

        check_model_folder(settings.fill.base_folder())
        settings.fill.compute()  # --fill-device cuda without a GPU is named here, not in every client
        settings.fill.compute("training")
    if not settings.out_dir:
        settings = replace(settings, out_dir=f"runs/{settings.name}{out_suffix}")
    return settings
