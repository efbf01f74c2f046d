"""`regl fl`: the same apps on `flwr.simulation.run_simulation` (Ray), quiet unless asked.

What Flower, Ray and the libraries print (per-round INFO logs, actor output, warnings)
goes to OUT_DIR/flower.log; the terminal gets the run's progress lines. With `verbose`
Flower's and Ray's output stays on the terminal too.
"""

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from flwr.common.logger import update_console_handler
from flwr.simulation import run_simulation

from regl.clients.client_app import app as client_app
from regl.clients.server_app import build_server_app
from regl.errors import ReglError
from regl.fl.experiment import ExperimentSettings
from regl.fl.sandbox import in_sandbox

LOG_NAME = "flower.log"


@contextmanager
def flower_output(log_file: Path, verbose: bool) -> Iterator[TextIO]:
    """Route this process's output (Ray's daemons and actors inherit it) to `log_file`; yields the terminal.

    Quiet: file descriptors 1 and 2 point at the log, so C++ and subprocess output lands there
    too. Verbose: nothing is moved; Flower's logger also writes to the log.
    """
    flower_logger = logging.getLogger("flwr")
    if verbose:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s: %(message)s"))
        flower_logger.addHandler(handler)
        try:
            yield sys.stdout
        finally:
            flower_logger.removeHandler(handler)
            handler.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_file, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    update_console_handler(colored=False)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
        terminal.close()
        update_console_handler(colored=True)


@contextmanager
def ray_keeps_off_sigterm() -> Iterator[None]:
    """Leave SIGTERM to regl's handler (regl/stopping.py), which stops the run as Ctrl-C does.

    Ray's driver puts its own in when it starts, and that exits at once (SystemExit), so Python
    would wait at exit for Flower's ServerApp thread, which never learns the run has stopped.
    """
    import ray._private.utils as ray_utils  # private: a Ray without it keeps its handler; the sandbox's grace ends it

    own = getattr(ray_utils, "set_sigterm_handler", None)
    if own is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = own


def simulate(settings: ExperimentSettings, num_cpus: int, verbose: bool = False) -> dict:
    """One Ray actor per CPU, each running one client at a time with one torch thread.

    Returns the run's summary.json content; a failed run raises ReglError naming its log.
    """
    if not in_sandbox():
        raise RuntimeError("Ray must only start inside the loopback-only sandbox (regl.fl.sandbox)")
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / LOG_NAME
    with flower_output(log_file, verbose) as terminal:

        def write(line: str) -> None:
            print(line, file=terminal, flush=True)

        sampled = f"{settings.clients_per_round} sampled of " if settings.clients_per_round else ""
        write(
            f"{settings.name}: {settings.num_rounds} rounds on {sampled}{settings.partition.num_clients} clients; "
            f"Flower's and Ray's logs in {log_file}"
        )
        try:
            with ray_keeps_off_sigterm():
                run_simulation(
                    server_app=build_server_app(settings, write),
                    client_app=client_app,
                    num_supernodes=settings.partition.num_clients,
                    backend_config={
                        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": num_cpus, "include_dashboard": False},
                    },
                )
        except Exception as exc:
            with open(log_file, "a") as log:
                traceback.print_exc(file=log)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReglError(f"the federated run failed: {reason} (details in {log_file})") from exc
    summary = out_dir / "summary.json"
    if not summary.exists():
        raise ReglError(f"the federated run ended without a summary in {out_dir}; see {log_file}")
    return json.loads(summary.read_text())
