"""The `regl` command. Heavy imports (torch, Flower) happen inside each subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from regl.errors import ReglError

FLOWER_STATE_DIR = Path(".flwr")
DEPLOY_STATE_DIR = Path(".flwr-deploy")


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
    from regl.data.partitions import PartitionSpec

    return PartitionSpec(args.partition, args.clients, args.classes_per_client, args.beta,
                         args.imbalance_ratio, args.seed)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    from regl.generate.generator import DEFAULT_BASE, SCHEDULERS

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

    from regl.fl.experiment import ExperimentSettings
    from regl.train.loop import TrainSettings

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
        fill=_fill_settings(args),
    )
    if not settings.out_dir:
        settings = replace(settings, out_dir=f"runs/{settings.name}{suffix}")
    return settings


def _fill_settings(args: argparse.Namespace):
    from regl.fill.client import FillSettings

    if not hasattr(args, "fill_supplement"):
        return FillSettings()
    bench = not hasattr(args, "fill")  # `regl bench` sets the mode (and so the mix) per arm
    fill = FillSettings(
        mode="none" if bench else args.fill, supplement=args.fill_supplement, mix="" if bench else args.fill_mix,
        target=args.fill_target,
        lora=not args.fill_no_lora, lora_steps=args.fill_lora_steps, prior_per_class=args.fill_prior_per_class,
        steps=args.fill_steps, guidance=args.fill_guidance,
        base=str(Path(args.fill_base).resolve()) if args.fill_base else "",
        store=str(Path(args.fill_store).resolve()),
    )
    fill.check()
    if "diffusion" in fill.sources:
        from regl.generate.generator import check_model_folder

        check_model_folder(fill.base_folder())
    return fill


def _add_fill_options(p: argparse.ArgumentParser, with_mode: bool = True) -> None:
    from regl.fill.client import FillSettings

    defaults = FillSettings()
    g = p.add_argument_group("synthetic fill", "what each client adds to its real data before round 1")
    if with_mode:
        g.add_argument("--fill", default="none",
                       help="none, public (the base's public pretraining pool, as real data), or sources joined "
                            "by '+': diffusion, noise, mixup, e.g. diffusion+noise (default: %(default)s)")
    g.add_argument("--fill-supplement", type=float, default=defaults.supplement,
                   help="synthetic images as a fraction of each client's real ones (default: %(default)s)")
    g.add_argument("--fill-mix", default="",
                   help="weights of the --fill sources in their order, e.g. 75:25 (default: equal)")
    g.add_argument("--fill-target", default="uniform", choices=["uniform", "global"],
                   help="class composition to fill towards; global asks every client for its class counts "
                        "(default: %(default)s)")
    g.add_argument("--fill-no-lora", action="store_true",
                   help="diffusion from the base as is, without fine-tuning each client's LoRA")
    g.add_argument("--fill-lora-steps", type=int, default=defaults.lora_steps, help="(default: %(default)s)")
    g.add_argument("--fill-prior-per-class", type=int, default=defaults.prior_per_class,
                   help="base images per missing class kept in LoRA training (default: %(default)s)")
    g.add_argument("--fill-steps", type=int, default=defaults.steps, help="diffusion sampling steps (default: %(default)s)")
    g.add_argument("--fill-guidance", type=float, default=defaults.guidance, help="(default: %(default)s)")
    g.add_argument("--fill-base", default="", help="diffusers SD folder (default: the shipped base)")
    g.add_argument("--fill-store", default=defaults.store,
                   help="where clients keep their synthetic stores and LoRAs; reused when nothing changed "
                        "(default: %(default)s)")


def _check_data(settings) -> None:
    """Load the data and partition once up front so bad input fails before Ray starts."""
    from regl.fl.experiment import federation

    federation(settings)


def cmd_partition(args: argparse.Namespace) -> int:
    from regl.data.datasets import load_split
    from regl.data.partitions import partition_labels
    from regl.data.skew_stats import format_table, save_heatmap, skew_stats

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
    from regl.fl.sandbox import in_sandbox, rerun_self_isolated

    settings = _settings(args)
    _check_data(settings)
    if not in_sandbox():
        return rerun_self_isolated(FLOWER_STATE_DIR)
    from clients.simulation import simulate

    summary = simulate(settings, num_cpus=args.cpus)
    print(f"final global accuracy {100 * summary['final_accuracy']:.2f}%, mean personalized accuracy "
          f"{100 * summary['final_personalized_accuracy']:.2f}%, {summary['wall_seconds']:.0f}s; "
          f"results in {settings.out_dir} (summary.json, rounds.json, accuracy.png, traffic.json)")
    print(_format_time_split(summary["time_split"], args.cpus))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from regl.fl.sandbox import in_sandbox, rerun_self_isolated

    settings = _settings(args, suffix="-deploy")
    settings = replace(settings, out_dir=str(Path(settings.out_dir).resolve()))
    _check_data(settings)
    service_fill = settings.fill.synthetic and not args.in_process_fill
    if not in_sandbox():
        return rerun_self_isolated(DEPLOY_STATE_DIR)
    from clients.deployment import deploy

    summary = deploy(settings, service_fill, DEPLOY_STATE_DIR)
    done = summary["deployment"]
    print(f"final global accuracy {100 * summary['final_accuracy']:.2f}%, {done['nodes']} SuperNodes"
          f"{' each with its regl serve' if service_fill else ''}, set-up {done['setup_seconds']:.0f}s, "
          f"{done['total_seconds']:.0f}s in all; results and logs in {settings.out_dir}")
    print(_format_time_split(summary["time_split"], settings.partition.num_clients))
    return 0


def _format_time_split(split: dict, cpus: int) -> str:
    """Wall time by phase; communication is what the rounds took beyond the clients' compute on `cpus` workers."""
    compute = (split["client_train_seconds"] + split["client_eval_seconds"]) / cpus
    communication = split["rounds_wall_seconds"] - compute - split["server_eval_seconds"]
    return (f"wall time: fill {split['fill_phase_wall_seconds']:.0f}s (client fine-tune "
            f"{split['client_finetune_seconds']:.0f}s + generate {split['client_generate_seconds']:.0f}s of compute), "
            f"rounds {split['rounds_wall_seconds']:.0f}s = train+eval {compute:.0f}s on {cpus} workers + "
            f"server eval {split['server_eval_seconds']:.0f}s + communication/overhead {communication:.0f}s")


def cmd_bench(args: argparse.Namespace) -> int:
    from regl.fl.bench import run_bench
    from regl.fl.sandbox import in_sandbox, rerun_self_isolated

    from regl.fl.bench import check_arms

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ReglError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    check_arms(arms)
    settings = _settings(args)
    _check_data(settings)
    if not in_sandbox():
        return rerun_self_isolated(FLOWER_STATE_DIR)
    common = ["--dataset", args.dataset, "--partition", args.partition, "--clients", str(args.clients),
              "-k", str(args.classes_per_client), "--beta", str(args.beta),
              "--imbalance-ratio", str(args.imbalance_ratio), "--rounds", str(args.rounds),
              "--local-epochs", str(args.local_epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    fill = ["--cpus", str(args.cpus), "--fill-supplement", str(args.fill_supplement),
            "--fill-target", args.fill_target, "--fill-lora-steps", str(args.fill_lora_steps),
            "--fill-prior-per-class", str(args.fill_prior_per_class), "--fill-steps", str(args.fill_steps),
            "--fill-guidance", str(args.fill_guidance), "--fill-store", args.fill_store]
    if args.fill_base:
        fill += ["--fill-base", args.fill_base]
    name = settings.name.removesuffix(f"-s{args.seed}")
    out_root = Path(args.out_dir or f"runs/bench-{name}")
    table = run_bench(arms, seeds, common, fill, out_root, mix=args.fill_mix)
    print(f"\n{args.dataset}, {settings.partition.describe()}, {args.clients} clients, {args.rounds} rounds × "
          f"{args.local_epochs} local epochs, seeds {args.seeds}\n{table}\n(table.md and bench.json in {out_root})")
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    import torch

    from regl.fl.centralized import run_centralized

    settings = _settings(args, suffix="-centralized")
    _check_data(settings)
    torch.set_num_threads(args.threads)
    summary = run_centralized(settings)
    print(f"final accuracy {100 * summary['final_accuracy']:.2f}%; results in {settings.out_dir}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from regl.fl.sandbox import run_isolated

    if not args.command:
        raise ReglError("give the command to run, e.g. `regl sandbox flwr run . --stream`")
    return run_isolated(args.command, FLOWER_STATE_DIR)


def cmd_pretrain_base(args: argparse.Namespace) -> int:
    import torch

    from regl.generate.pretrain import PretrainSettings, pretrain_base

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
    from regl.data.datasets import BUILTINS, load_dataset
    from regl.generate.prompts import template_for

    names = BUILTINS[dataset].class_names if dataset in BUILTINS else load_dataset(dataset).class_names
    return names, template_for(dataset)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from regl.data.datasets import class_index
    from regl.generate.generator import Generator, check_count, save_pngs, to_dataset_format

    check_count(args.n)
    torch.set_num_threads(args.threads)
    names, template = _class_list(args.dataset)
    template = args.template or template
    label = class_index(names, args.class_name)
    generator = Generator(Path(args.base), names, template, lora=Path(args.lora) if args.lora else None)
    images = generator.generate_class(label, args.n, args.seed, steps=args.steps, guidance=args.guidance,
                                      scheduler=args.scheduler, batch_size=args.batch_size)
    resolution, channels = _dataset_shape(args.dataset)
    paths = save_pngs(to_dataset_format(images, resolution, channels), Path(args.out),
                      names[label].replace(" ", "-").replace("/", "-"))
    print(f"{len(paths)} images of {names[label]!r} in {args.out}")
    return 0


def _dataset_shape(dataset: str) -> tuple[int, int]:
    from regl.data.datasets import BUILTINS, load_dataset

    if dataset in BUILTINS:
        return 28, 1
    data = load_dataset(dataset)
    return data.resolution, data.channels


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from regl.data.datasets import load_dataset
    from regl.generate.lora import LoraSettings, finetune_lora
    from regl.generate.prompts import template_for

    torch.set_num_threads(args.threads)
    if args.client >= 0:
        from regl.fl.experiment import ExperimentSettings, client_data

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
    import torch

    from regl.generate.generator import Generator
    from regl.generate.evaluate import evaluate_generator, format_quality

    if args.per_class < 2:
        raise ReglError(f"--per-class must be at least 2, got {args.per_class}")
    torch.set_num_threads(args.threads)
    names, template = _class_list(args.dataset)
    lora = Path(args.lora) if args.lora else None
    own = _own_classes(args.own_classes, names, lora)
    groups = {"client's own classes": own, "missing classes": [c for c in range(len(names)) if c not in own]}
    groups = groups if own else None
    generator = Generator(Path(args.base), names, template, lora=lora)
    generator.set_lora_scale(args.lora_scale)
    quality, fake = evaluate_generator(generator, args.dataset, args.per_class, args.seed, groups=groups,
                                       steps=args.steps, guidance=args.guidance, scheduler=args.scheduler)
    if args.grid:
        from regl.data.datasets import load_split
        from regl.generate.evaluate import save_grid

        save_grid(load_split(args.dataset).test, fake, Path(args.grid))
        print(f"grid of real (left) and generated (right) images: {args.grid}")
    title = f"{args.base}" + (f" + LoRA {args.lora} (scale {args.lora_scale})" if lora else "")
    print(format_quality(quality, names, title, groups))
    return 0


def _own_classes(spec: str, names: tuple[str, ...], lora: Path | None) -> list[int]:
    """Classes given as `a,b,c`, else those the LoRA's client held, else none."""
    import json

    from regl.data.datasets import class_index
    from regl.generate.generator import LORA_METADATA

    if spec:
        return sorted({class_index(names, part.strip()) for part in spec.split(",")})
    if lora and (lora / LORA_METADATA).is_file():
        counts = json.loads((lora / LORA_METADATA).read_text())["client_class_counts"]
        return [c for c, n in enumerate(counts) if n > 0]
    return []


def cmd_bench_generator(args: argparse.Namespace) -> int:
    from regl.generate.bench import run_benchmark

    print(run_benchmark(Path(args.base), args.dataset, args.threads, args.flop_per_cycle, args.lora_steps))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from regl.generate.generator import check_model_folder
    from service.app import create_app
    from service.settings import ServiceSettings

    given = {k: v for k, v in vars(args).items() if k in ServiceSettings.model_fields and v is not None}
    try:
        settings = ServiceSettings(**given)
    except ValidationError as exc:
        raise ReglError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    settings.check_exposure()
    check_model_folder(Path(settings.base))
    if settings.lora is not None and not Path(settings.lora).is_dir():
        raise ReglError(f"LoRA folder {settings.lora} does not exist")
    if settings.data:
        from service.local_model import load_client_data

        load_client_data(settings)  # a missing folder or a corrupt image is named before uvicorn starts
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=10)
    return 0


def cmd_bench_service(args: argparse.Namespace) -> int:
    from service.bench import run_service_bench
    from service.settings import ServiceSettings

    if args.callers < 1 or args.repeats < 1:
        raise ReglError(f"--callers and --repeats must be at least 1, got {args.callers} and {args.repeats}")
    settings = ServiceSettings(base=Path(args.base), dataset=args.dataset, data="", lora=None, threads=args.threads,
                               max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, token=None,
                               max_queue=max(128, args.callers), max_images_per_request=64,
                               request_timeout_s=3600)
    run_service_bench(settings, args.callers, args.steps, args.guidance, args.repeats)
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
    _add_fill_options(p)
    p.set_defaults(func=cmd_fl)

    p = sub.add_parser("bench", help="benchmark arms side by side: FedAvg with each fill, iid, centralized",
                       description="Run `regl fl` once per arm and seed (same data, model, rounds and seeds; "
                                   "only the fill changes) and print a table of final accuracy, minority-class "
                                   "accuracy, AUC and personalized accuracy, mean ± std over seeds. Arms: none, "
                                   "noise, mixup, diffusion (client LoRA), diffusion-base (no LoRA), public, any "
                                   "'+' combination of the sources (e.g. diffusion+noise), iid, centralized.")
    _add_data_options(p)
    _add_training_options(p)
    p.add_argument("--arms", default="none,diffusion", help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs Ray may use; one client per CPU (default: %(default)s)")
    _add_fill_options(p, with_mode=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("deploy", help="run the federation as separate processes on loopback: SuperLink, "
                                      "SuperNodes, one regl serve per node",
                       description="Start a Flower SuperLink, one SuperNode per client with its own data partition "
                                   "(node config partition-id), and, when the fill is synthetic, one `regl serve` "
                                   "per node that holds the same partition and makes that client's fill; then "
                                   "`flwr run` the app against them. Everything binds 127.0.0.1 inside the "
                                   "loopback-only sandbox and stops when the run ends. Logs in OUT_DIR/logs.")
    _add_data_options(p)
    _add_training_options(p)
    _add_fill_options(p)
    p.add_argument("--in-process-fill", action="store_true",
                   help="make the fill inside each ClientApp instead of in the node's regl serve")
    p.set_defaults(func=cmd_deploy)

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
    p.add_argument("--vae-steps", type=int, default=2000, help="(default: %(default)s)")
    p.add_argument("--unet-steps", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="(default: %(default)s)")
    p.add_argument("--size", default="tiny", choices=["tiny", "test"],
                   help="tiny: the shipped base; test: a far smaller model for smoke runs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT.pretrain/")
    p.set_defaults(func=cmd_pretrain_base)

    from regl.generate.generator import DEFAULT_BASE

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
    p.add_argument("--own-classes", default="",
                   help="comma-separated classes a client holds: their accuracy and Fréchet distance are "
                        "reported apart from the other (missing) classes; defaults to the LoRA's client")
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

    p = sub.add_parser("serve", help="run the local generation service (FastAPI on uvicorn)",
                       description="Serve class samples, LoRA fine-tunes and the synthetic fill over HTTP "
                                   "(OpenAPI docs at /docs). Every option also reads from the environment "
                                   "as REGL_<OPTION> (e.g. REGL_TOKEN, REGL_MAX_BATCH); an option given here wins.")
    p.add_argument("--base", help="diffusers SD folder (default: the shipped base)")
    p.add_argument("--lora", help="LoRA folder to serve with")
    p.add_argument("--data", help="the client's images: a folder with one subfolder per class, or a built-in "
                                  "dataset (with --client: that client's share); needed for mixup, fine-tune, fill")
    p.add_argument("--dataset", help="class names, prompt template and image size when there is no --data "
                                     "(default: fashion-mnist)")
    p.add_argument("--client", type=int, help="with a built-in --data: serve this client of the partition")
    p.add_argument("--clients", type=int, help="number of clients in that partition (default: 10)")
    p.add_argument("--partition", choices=["iid", "classes", "dirichlet", "imbalance"], help="(default: classes)")
    p.add_argument("--classes-per-client", "-k", type=int, help="(default: 2)")
    p.add_argument("--beta", type=float, help="Dirichlet concentration (default: 0.5)")
    p.add_argument("--imbalance-ratio", type=float, help="for --partition imbalance (default: 10.0)")
    p.add_argument("--partition-seed", type=int, help="the partition's seed, the run's --seed (default: 0)")
    p.add_argument("--host", help="bind address; anything but loopback needs a token (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="(default: 8000)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 2)")
    p.add_argument("--max-images-per-request", type=int, help="largest n of one request (default: 64)")
    p.add_argument("--max-batch", type=int, help="most images in one pipeline call (default: 64)")
    p.add_argument("--batch-wait-ms", type=float, help="how long a batch waits for more requests (default: 20)")
    p.add_argument("--max-queue", type=int, help="waiting requests before 429 (default: 128)")
    p.add_argument("--request-timeout-s", type=float, help="a generate request's limit (default: 300)")
    p.add_argument("--max-finetune-steps", type=int, help="LoRA steps one fine-tune or fill may ask for "
                                                          "(default: 5000)")
    p.add_argument("--store", help="where LoRAs and fills go (default: .regl-cache/service)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench-service", help="request batching of `regl serve`: concurrent vs sequential vs raw",
                       description="Start the service on a free loopback port and send it CALLERS concurrent "
                                   "generate requests of 1–4 images each, then the same requests one at a time, "
                                   "then time one raw batch-64 pipeline call; each is run REPEATS times and the "
                                   "fastest kept. Run it on an idle machine.")
    p.add_argument("--base", default=str(DEFAULT_BASE), help="diffusers SD folder (default: the shipped base)")
    p.add_argument("--dataset", default="fashion-mnist", help="(default: %(default)s)")
    p.add_argument("--callers", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="(default: %(default)s)")
    p.add_argument("--guidance", type=float, default=3.0, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0, help="(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (default: %(default)s)")
    p.set_defaults(func=cmd_bench_service)

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
