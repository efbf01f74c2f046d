"""`regl fl`, `bench`, `deploy`, `centralized` and `sandbox`: the federated runs.

Flower and Ray only ever start inside the loopback-only sandbox: a command started outside
it checks its input, then runs itself again inside (regl/fl/sandbox.py).
"""

from __future__ import annotations

import argparse
import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from regl.cli.options import (
    Command,
    add_config_option,
    add_experiment_options,
    add_run_options,
    experiment_settings,
)
from regl.errors import ReglError
from regl.fl.sandbox import in_sandbox, rerun_self_isolated, run_isolated

if TYPE_CHECKING:
    from regl.fl.settings import ExperimentSettings

FLOWER_STATE_DIR = Path(".flwr")
DEPLOY_STATE_DIR = Path(".flwr-deploy")


def check_data(settings: ExperimentSettings, node_local: bool = False) -> None:
    """Load the data and partition (and, under DP, build the model) once up front so bad input fails before Ray starts.

    The partitioner's warnings are left to the run itself, which keeps them in its log.
    With node-local data only the server's test set is checked: each node reads its own.
    """
    from regl.fl.experiment import class_names, federation, new_model, test_data

    class_names(settings)
    if settings.test_data or node_local:
        test_data(settings)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            federation(settings)
    if settings.dp_noise and any(True for _ in new_model(settings).buffers()):
        raise ReglError(
            "DP clips and noises the whole model the clients send, and this model's BatchNorm statistics would "
            "be clipped and noised with it: use --model cnn with --dp-noise"
        )


def add_fl_options(parser: argparse.ArgumentParser) -> None:
    add_experiment_options(parser, ("data", "training"))
    add_config_option(parser)
    add_run_options(parser)
    add_experiment_options(parser, ("fill", "warm start", "methods"))


def cmd_fl(args: argparse.Namespace) -> int:
    settings = experiment_settings(args)
    check_data(settings)
    if not in_sandbox():
        code = rerun_self_isolated(args.argv, FLOWER_STATE_DIR)
        return track(Path(settings.out_dir), "run") if code == 0 and args.tracking else code
    from regl.fl.simulation import simulate

    summary = simulate(settings, num_cpus=args.cpus, verbose=args.verbose)
    in_domain = summary.get("final_in_domain_accuracy")
    print(
        f"final global accuracy {100 * summary['final_accuracy']:.2f}%, mean personalized accuracy "
        f"{100 * summary['final_personalized_accuracy']:.2f}%, "
        + ("" if in_domain is None else f"mean in-domain accuracy {100 * in_domain:.2f}%, ")
        + f"{summary['wall_seconds']:.0f}s; "
        f"results in {settings.out_dir} (summary.json, rounds.json, accuracy.png, traffic.json, flower.log)"
    )
    print(format_time_split(summary["time_split"], args.cpus))
    for line in method_lines(summary):
        print(line)
    return 0


def track(folder: Path, kind: str) -> int:
    """Log the finished run or bench in `folder` to MLflow, outside the sandbox (a tracking server is off loopback)."""
    from mlflow.exceptions import MlflowException

    from regl.fl.tracking import track_bench, track_run

    try:
        where = (track_bench if kind == "bench" else track_run)(folder)
    except (MlflowException, OSError) as exc:
        raise ReglError(f"the {kind} finished (results in {folder}) but MLflow tracking failed: {exc}") from exc
    print(f"tracked in MLflow: {where}" + (f" (mlflow ui --backend-store-uri {where})" if "sqlite:" in where else ""))
    return 0


def method_lines(summary: dict) -> list[str]:
    """What a run's methods add to its printed summary: the DP guarantee, the monitor's accuracy."""
    lines = []
    if privacy := summary.get("privacy"):
        composed = privacy.get("generator")
        lines.append(
            f"differential privacy: client-level (ε {privacy['epsilon']:.2f}, δ {privacy['delta']:g}) after "
            f"{privacy['rounds']} rounds at noise multiplier {privacy['noise_multiplier']:g}, clip "
            f"{privacy['clip']:g} ({privacy['accountant']})"
            + (
                f", composed with the federated generator's {composed['rounds']} rounds at noise multiplier "
                f"{composed['noise_multiplier']:g}, clip {composed['clip']:g} (the classifier's alone: ε "
                f"{privacy['epsilon_alone']:.2f})"
                if composed
                else ""
            )
        )
    elif generator := (summary.get("generator") or {}).get("privacy"):
        lines.append(
            f"differential privacy: the federated generator's adapter client-level (ε {generator['epsilon']:.2f}, δ "
            f"{generator['delta']:g}) after {generator['rounds']} rounds at noise multiplier "
            f"{generator['noise_multiplier']:g}, clip {generator['clip']:g}; the classifier's updates are not private"
        )
    if "monitor_mean_cosine" in summary:
        detected = summary["monitor_detected_round"]
        lines.append(
            f"composition monitor: mean cosine {summary['monitor_mean_cosine']:.4f} to the true class composition; "
            + (f"imbalance detected in round {detected}" if detected else "no imbalance detected")
        )
    return lines


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """The fill's mode is each arm's; --fill-mix goes to the arms with as many sources as it has weights."""
    add_experiment_options(parser, ("data", "training"))
    parser.add_argument(
        "--arms",
        default="none,diffusion",
        help="comma-separated: any --fill mode (none, public, diffusion, mixup, oracle, 'diffusion+noise', …), "
        "diffusion-base / diffusion-client / diffusion-federated / diffusion-federated-local (the diffusion fill "
        "with that generator), iid (FedAvg on an iid partition), centralized; '+'-joined with methods (focal, "
        "fedprox, dp1.0, …) and with settings KEY=VALUE of the run config (diffusion-federated+fill-lora-rank=16)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated")
    add_run_options(parser)
    add_experiment_options(parser, ("fill", "warm start", "methods"), skip=("fill",))


def cmd_bench(args: argparse.Namespace) -> int:
    from regl.fl.bench import check_arms, run_arms

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ReglError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    check_arms(arms)
    arm_mix, args.fill_mix = args.fill_mix, ""  # the bench's own fill is none: the mix is the arms'
    settings = experiment_settings(args)
    check_arms(arms, settings, arm_mix)
    if "oracle" in arms and settings.partition.domain == settings.partition.look == "none":
        raise ReglError("the oracle arm passes base images through the true look: give a --domain or a --look")
    check_data(settings)
    name = settings.name.removesuffix(f"-s{args.seed}")
    out_root = Path(args.out_dir or f"runs/bench-{name}")
    if not in_sandbox():
        code = rerun_self_isolated(args.argv, FLOWER_STATE_DIR)
        return track(out_root, "bench") if code == 0 and args.tracking else code
    command = "regl " + shlex.join(args.argv)
    table = run_arms(settings, arms, seeds, arm_mix, out_root, args.cpus, args.verbose, command)
    print(
        f"\n{args.dataset}, {settings.partition.describe()}, {args.clients} clients, {args.rounds} rounds × "
        f"{args.local_epochs} local epochs, seeds {args.seeds}\n{table}\n(command.txt, table.md, bench.json and "
        f"the figures in {out_root}; each run in {out_root}/<arm>-s<seed>)"
    )
    return 0


def add_deploy_options(parser: argparse.ArgumentParser) -> None:
    groups = add_experiment_options(parser, ("data", "training", "fill", "warm start", "methods", "node-local data"))
    groups["node-local data"].add_argument(
        "--data-dirs",
        default="",
        help="one folder (a subfolder per class it holds, named as the run's classes) or npz per node, "
        "comma-separated; sets --clients to their number. --dataset still names the prompts and base model",
    )
    locks = parser.add_argument_group(
        "locks",
        "TLS and SuperNode authentication: by default a throwaway CA for 127.0.0.1 and a key pair per node, made "
        "in OUT_DIR/tls; every node's public key is registered with the SuperLink before it starts",
    )
    for flag, what in (
        ("--ssl-ca-certfile", "the CA certificate the nodes verify the SuperLink's against"),
        ("--ssl-certfile", "the SuperLink's certificate (PEM), naming 127.0.0.1"),
        ("--ssl-keyfile", "its private key (PEM, unencrypted)"),
    ):
        locks.add_argument(flag, default="", help=f"{what}; the three together, or none for a trial CA")
    locks.add_argument(
        "--node-keys",
        default="",
        metavar="DIR",
        help="supernode-<i>.key and supernode-<i>.pub for each node (OpenSSH EC keys on a NIST curve: ssh-keygen -t "
        "ecdsa -b 384); empty: made for the run",
    )
    locks.add_argument(
        "--unknown-nodes",
        type=int,
        default=0,
        metavar="N",
        help="also start N SuperNodes with keys never registered, to see the SuperLink refuse them (a trial of the "
        "lock); the run goes on with the others",
    )
    parser.add_argument(
        "--in-process-fill",
        action="store_true",
        help="make the fill inside each ClientApp instead of in the node's regl serve",
    )
    parser.add_argument(
        "--in-process-train",
        action="store_true",
        help="train each round inside a fresh ClientApp process (imports torch every round) instead of in the "
        "node's warm regl serve",
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    data_dirs = tuple(d for d in args.data_dirs.split(",") if d) if args.data_dirs else ()
    if args.data_dirs and len(data_dirs) < 2:
        raise ReglError(f"--data-dirs needs a folder for each of at least two nodes, got {args.data_dirs!r}")
    for folder in data_dirs:
        if not Path(folder).exists():
            raise ReglError(f"--data-dirs: {folder} does not exist")
    if data_dirs:
        args.clients = len(data_dirs)
    settings = experiment_settings(args, out_suffix="-deploy")
    settings = replace(settings, out_dir=str(Path(settings.out_dir).resolve()))
    check_data(settings, node_local=bool(data_dirs))
    service_fill = settings.fill.synthetic and not args.in_process_fill
    ssl_files = (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
    if any(ssl_files) and not all(ssl_files):
        raise ReglError("give --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile together, or none for a trial CA")
    if all(ssl_files):
        from regl.fl.tls import given_credentials

        given_credentials(*ssl_files)  # a bad file fails here, before any process starts
    if args.unknown_nodes < 0:
        raise ReglError(f"--unknown-nodes must be 0 or more, got {args.unknown_nodes}")
    if not in_sandbox():
        return rerun_self_isolated(args.argv, DEPLOY_STATE_DIR)
    from regl.fl.deployment import deploy, make_locks

    absolute = tuple(str(Path(d).resolve()) for d in data_dirs)
    nodes = settings.partition.num_clients
    tls_dir = Path(settings.out_dir) / "tls"
    locks = make_locks(tls_dir, nodes, ssl_files if all(ssl_files) else None, args.node_keys, args.unknown_nodes)
    summary = deploy(settings, service_fill, DEPLOY_STATE_DIR, locks, absolute, service_train=not args.in_process_train)
    done = summary["deployment"]
    with_service = done["service_fill"] or done["service_train"]
    print(
        f"final global accuracy {100 * summary['final_accuracy']:.2f}%, {done['nodes']} SuperNodes"
        f"{' each with its regl serve' if with_service else ''}, set-up {done['setup_seconds']:.0f}s, "
        f"{done['total_seconds']:.0f}s in all; results and logs in {settings.out_dir}"
    )
    print(format_time_split(summary["time_split"], settings.partition.num_clients))
    for line in method_lines(summary):
        print(line)
    return 0


def format_time_split(split: dict, cpus: int) -> str:
    """Wall time by phase; communication is what the rounds took beyond the clients' compute on `cpus` workers."""
    compute = (split["client_train_seconds"] + split["client_eval_seconds"]) / cpus
    communication = split["rounds_wall_seconds"] - compute - split["server_eval_seconds"]
    return (
        f"wall time: fill {split['fill_phase_wall_seconds']:.0f}s (client fine-tune "
        f"{split['client_finetune_seconds']:.0f}s + generate {split['client_generate_seconds']:.0f}s of compute), "
        f"rounds {split['rounds_wall_seconds']:.0f}s = train+eval {compute:.0f}s on {cpus} workers + "
        f"server eval {split['server_eval_seconds']:.0f}s + communication/overhead {communication:.0f}s"
    )


def add_centralized_options(parser: argparse.ArgumentParser) -> None:
    add_experiment_options(parser, ("data", "training"))
    add_config_option(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def cmd_centralized(args: argparse.Namespace) -> int:
    import torch

    from regl.fl.centralized import run_centralized

    settings = experiment_settings(args, out_suffix="-centralized")
    check_data(settings)
    torch.set_num_threads(args.threads)
    summary = run_centralized(settings)
    print(f"final accuracy {100 * summary['final_accuracy']:.2f}%; results in {settings.out_dir}")
    return 0


def add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")


def cmd_sandbox(args: argparse.Namespace) -> int:
    if not args.command:
        raise ReglError("give the command to run, e.g. `regl sandbox flwr run . --stream`")
    return run_isolated(args.command, FLOWER_STATE_DIR)


COMMANDS = (
    Command(
        "fl",
        "run federated training (FedAvg on Flower's simulation engine)",
        "Run the ReGL Flower apps on the simulation engine inside a loopback-only network namespace. "
        "Prints one line per round; Flower's and Ray's logs go to OUT_DIR/flower.log. Writes "
        "rounds.json, summary.json and accuracy.png.",
        add_fl_options,
        cmd_fl,
    ),
    Command(
        "bench",
        "benchmark arms side by side: FedAvg with each fill, iid, centralized",
        "Run `regl fl` once per arm and seed (same data, model, rounds and seeds; only the fill changes) "
        "and print a table of final accuracy, minority-class accuracy, AUC and personalized accuracy, "
        "mean ± std over seeds. Arms: none, noise, mixup, diffusion (client LoRA), diffusion-base (no "
        "LoRA), public, any '+' combination of the sources (e.g. diffusion+noise), iid, centralized. "
        "--fill-mix applies to the arms with as many sources as it has weights. OUT_DIR gets command.txt, "
        "bench.json, table.md, accuracy.png (every arm by round) and, with a diffusion arm, grid.png (real vs "
        "generated images); each arm × seed runs in OUT_DIR/<arm>-s<seed>. Rerun, it resumes: a cell whose "
        "folder holds a finished run of the same settings is skipped.",
        add_bench_options,
        cmd_bench,
    ),
    Command(
        "deploy",
        "run the federation as separate processes on loopback: SuperLink, SuperNodes, one regl serve per node",
        "Start a Flower SuperLink, one SuperNode per client with its own data partition (node config "
        "partition-id), and, when the fill is synthetic, one `regl serve` per node that holds the same "
        "partition and makes that client's fill; then `flwr run` the app against them. Everything binds "
        "127.0.0.1 inside the loopback-only sandbox and stops when the run ends. Logs in OUT_DIR/logs.",
        add_deploy_options,
        cmd_deploy,
    ),
    Command(
        "centralized",
        "train the same model on the pooled private data (reference arm)",
        "Train the federated run's model on the union of the clients' data; one round = --local-epochs "
        "epochs. Same outputs as `regl fl`.",
        add_centralized_options,
        cmd_centralized,
    ),
    Command(
        "sandbox",
        "run a command (e.g. `flwr run .`) offline in a loopback-only namespace",
        "Run COMMAND with Flower's offline environment, FLWR_HOME=./.flwr, in new network and PID "
        "namespaces: only loopback is reachable and every process it starts is stopped when it ends.",
        add_sandbox_options,
        cmd_sandbox,
    ),
)
