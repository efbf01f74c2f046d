"""`regl fl`: the same ClientApp and ServerApp on Flower's simulation engine (Ray)."""

import json
from pathlib import Path

from flwr.simulation import run_simulation

from clients.client_app import app as client_app
from clients.server_app import build_server_app
from regl.errors import ReglError
from regl.fl.experiment import ExperimentSettings
from regl.fl.sandbox import in_sandbox


def simulate(settings: ExperimentSettings, num_cpus: int) -> dict:
    """One Ray actor per CPU, each running one client at a time with one torch thread.

    Returns the run's summary.json content.
    """
    if not in_sandbox():
        raise RuntimeError("Ray must only start inside the loopback-only sandbox (regl.fl.sandbox)")
    run_simulation(
        server_app=build_server_app(settings),
        client_app=client_app,
        num_supernodes=settings.partition.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "include_dashboard": False},
        },
    )
    summary = Path(settings.out_dir) / "summary.json"
    if not summary.exists():
        raise ReglError(f"the federated run ended without a summary in {settings.out_dir}; see the log above")
    return json.loads(summary.read_text())
