"""`regl serve` and `regl bench-service`: the local generation service.

`regl serve` options are the fields of `ServiceSettings` (service/settings.py), which also
reads them from REGL_* environment variables; an option given on the command line wins,
one left out leaves the environment (or the field's default) in charge.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regl.cli.options import Command, add_compute_options
from regl.errors import ReglError

if TYPE_CHECKING:
    from regl.service.settings import ServiceSettings

SERVE_JOB_STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class FromEnvironment:
    """An option not given: REGL_* may still set it. Shown in --help as the field's default."""

    value: Any

    def __str__(self) -> str:
        return str(self.value)


def service_default(name: str) -> Any:
    from regl.service.settings import ServiceSettings

    return ServiceSettings.model_fields[name].default


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    from regl.compute import DEVICES, DTYPES
    from regl.data.domains import DOMAIN_KINDS
    from regl.data.looks import LOOKS
    from regl.data.partitions import PARTITION_KINDS

    def option(flag: str, text: str, short: tuple[str, ...] = (), **kwargs: Any) -> None:
        dest = flag.removeprefix("--").replace("-", "_")
        parser.add_argument(
            flag, *short, dest=dest, default=FromEnvironment(service_default(dest)), help=text, **kwargs
        )

    option("--base", "diffusers SD folder")
    option("--lora", "LoRA folder to serve with")
    option(
        "--data",
        "the client's images: a folder with one subfolder per class, or a built-in dataset "
        "(with --client: that client's share); needed for mixup, fine-tune, fill",
    )
    option("--dataset", "class names, prompt template and image size when there is no --data")
    option(
        "--classes",
        "a federation node's class list, comma-separated: --data (folder or npz) is that node's own data, "
        "and the service trains and fills on the node's training split (regl deploy --data-dirs)",
    )
    option("--client", "with a built-in --data: serve this client of the partition; -1: all of --data", type=int)
    option("--clients", "number of clients in that partition", type=int)
    option("--partition", "that partition's label skew", choices=PARTITION_KINDS)
    option("--classes-per-client", "k for --partition classes", short=("-k",), type=int)
    option("--beta", "Dirichlet concentration", type=float)
    option("--imbalance-ratio", "for --partition imbalance", type=float)
    option("--domain", "that client's look (feature skew), as regl fl --domain", choices=DOMAIN_KINDS)
    option("--look", "the federation's shared look, as regl fl --look", choices=LOOKS)
    option("--partition-seed", "the partition's seed, the run's --seed", type=int)
    option("--host", "bind address; anything but loopback needs a token (REGL_TOKEN)")
    option("--port", "TCP port", type=int)
    option("--threads", "torch CPU threads", type=int)
    option("--device", "where the generator and fine-tunes run; auto: cuda when torch sees a GPU", choices=DEVICES)
    option("--dtype", "their precision; auto: float16 generation on CUDA, float32 on most CPUs", choices=DTYPES)
    option("--max-images-per-request", "largest n of one request", type=int)
    option("--max-batch", "most images in one pipeline call", type=int)
    option("--batch-wait-ms", "how long a batch waits for more requests", type=float)
    option("--max-queue", "waiting requests before 429", type=int)
    option("--request-timeout-s", "a generate request's limit", type=float)
    option("--max-finetune-steps", "LoRA steps one fine-tune or fill may ask for", type=int)
    option("--store", "where LoRAs and fills go")


def service_settings(args: argparse.Namespace) -> ServiceSettings:
    """The options given on the command line over REGL_* over the fields' defaults."""
    from pydantic import ValidationError

    from regl.service.settings import ServiceSettings

    given = {
        k: v for k, v in vars(args).items() if k in ServiceSettings.model_fields and not isinstance(v, FromEnvironment)
    }
    try:
        return ServiceSettings(**given)
    except ValidationError as exc:
        raise ReglError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from regl.compute import resolve
    from regl.generate.generator import check_model_folder
    from regl.service.app import create_app

    settings = service_settings(args)
    settings.check_exposure()
    check_model_folder(Path(settings.base))
    if settings.lora is not None and not Path(settings.lora).is_dir():
        raise ReglError(f"LoRA folder {settings.lora} does not exist")
    resolve(settings.device, settings.dtype)  # a device or dtype this machine lacks is named before uvicorn starts
    if settings.data:
        from regl.service.local_model import load_client_data

        load_client_data(settings)  # a missing folder or a corrupt image is named before uvicorn starts
    # Stopped (SIGTERM, Ctrl-C), uvicorn ends the open requests, then the app waits a little for a running job to
    # stop at its next step; the process then ends with the job's thread, whose files are renamed into place whole.
    app = create_app(settings, job_stop_wait_s=SERVE_JOB_STOP_WAIT_S)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()  # unlike uvicorn.run, it lets the stop through to `main` (exit 143 on SIGTERM)
    return 0


def add_bench_service_options(parser: argparse.ArgumentParser) -> None:
    from regl.cli.generation import sampling_defaults

    sampling = sampling_defaults()
    parser.add_argument("--base", default=str(service_default("base")), help="diffusers SD folder")
    parser.add_argument("--dataset", default=service_default("dataset"), help="whose classes to ask for")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers, 1–4 images each")
    parser.add_argument("--steps", type=int, default=sampling["steps"], help="denoising steps")
    parser.add_argument("--guidance", type=float, default=sampling["guidance"], help="classifier-free guidance scale")
    parser.add_argument("--threads", type=int, default=service_default("threads"), help="torch CPU threads")
    parser.add_argument(
        "--max-batch", type=int, default=service_default("max_batch"), help="most images in one pipeline call"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=service_default("batch_wait_ms"),
        help="how long a batch waits for more requests",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the fastest is kept")
    add_compute_options(parser)


def cmd_bench_service(args: argparse.Namespace) -> int:
    from regl.service.bench import run_service_bench
    from regl.service.settings import ServiceSettings

    if args.callers < 1 or args.repeats < 1:
        raise ReglError(f"--callers and --repeats must be at least 1, got {args.callers} and {args.repeats}")
    settings = ServiceSettings(
        base=Path(args.base),
        dataset=args.dataset,
        data="",
        lora=None,
        threads=args.threads,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        token=None,
        max_queue=max(128, args.callers),
        max_images_per_request=service_default("max_images_per_request"),
        request_timeout_s=3600,
        device=args.device,
        dtype=args.dtype,
    )
    run_service_bench(settings, args.callers, args.steps, args.guidance, args.repeats)
    return 0


COMMANDS = (
    Command(
        "serve",
        "run the local generation service (FastAPI on uvicorn)",
        "Serve class samples, LoRA fine-tunes and the synthetic fill over HTTP (OpenAPI docs at /docs). "
        "Every option also reads from the environment as REGL_<OPTION> (e.g. REGL_TOKEN, REGL_MAX_BATCH); "
        "an option given here wins.",
        add_serve_options,
        cmd_serve,
    ),
    Command(
        "bench-service",
        "request batching of `regl serve`: concurrent vs sequential vs raw",
        "Start the service on a free loopback port and send it CALLERS concurrent generate requests of "
        "1–4 images each, then the same requests one at a time, then time raw pipeline calls at batch 1–64; "
        "each is run REPEATS times and the fastest kept. Prints the concurrent throughput as a fraction of the "
        "best raw batch's and p50/p95 latency. Run it on an idle machine.",
        add_bench_service_options,
        cmd_bench_service,
    ),
)
