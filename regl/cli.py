"""The `regl` command. Heavy imports (torch, Flower) happen inside each subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regl.errors import ReglError

FLOWER_STATE_DIR = Path(".flwr")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="mnist-10k",
                        help="mnist-10k (shipped), fashion-mnist, or a folder with one subfolder per class "
                             "(default: %(default)s)")
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

    p = sub.add_parser("sandbox", help="run a command (e.g. `flwr run .`) offline in a loopback-only namespace",
                       description="Run COMMAND with Flower's offline environment, FLWR_HOME=./.flwr, in new "
                                   "network and PID namespaces: only loopback is reachable and every process "
                                   "it starts is stopped when it ends.")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=cmd_sandbox)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
