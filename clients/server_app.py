"""ServerApp: FedAvg over the federation, central evaluation and the run report."""

import time
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients.strategy import RecordingFedAvg
from regl.experiment import ExperimentSettings, evaluate_global, new_model
from regl.run_report import RunReport


NODE_WAIT_SECONDS = 120.0


def wait_for_nodes(grid: Grid, expected: int) -> None:
    """FedAvg would wait forever for missing nodes; fail with the mismatch instead."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while (found := len(list(grid.get_node_ids()))) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the run config asks for {expected} clients (partition-num-clients) but only {found} "
                f"nodes joined within {NODE_WAIT_SECONDS:.0f}s; make the federation's num-supernodes match"
            )
        time.sleep(1.0)


def run_federation(grid: Grid, settings: ExperimentSettings) -> dict:
    """Run FedAvg for settings.num_rounds and write the report into settings.out_dir."""
    num_clients = settings.partition.num_clients
    wait_for_nodes(grid, num_clients)
    strategy = RecordingFedAvg(
        min_train_nodes=num_clients, min_available_nodes=num_clients, fraction_train=1.0
    )
    model = new_model(settings)
    report = RunReport(Path(settings.out_dir), {"name": settings.name, "mode": "federated", **settings.to_config()})
    started = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        eval_started = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate_global(settings, model)
        record = {"round": server_round, **result, **_round_timing(strategy.last_round, eval_started)}
        strategy.last_round = {}
        report.add_round(record)
        print(f"round {server_round:3d}: accuracy {100 * result['accuracy']:.2f}%", flush=True)
        return MetricRecord({"accuracy": result["accuracy"], "loss": result["loss"]})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.num_rounds,
        train_config=ConfigRecord(settings.to_config()),
        evaluate_fn=evaluate_fn,
    )
    return report.finish({"wall_seconds": time.perf_counter() - started})


def _round_timing(last_round: dict, eval_started: float) -> dict:
    """Round wall time and what the clients spent computing in it."""
    if "clients" not in last_round:
        return {}
    clients = last_round["clients"]
    now = time.perf_counter()
    return {
        "round_seconds": now - last_round["started"],
        "train_phase_seconds": last_round["trained"] - last_round["started"],
        "server_eval_seconds": now - eval_started,
        "client_compute_seconds": sum(c["train-seconds"] + c["eval-seconds"] for c in clients),
        "failed_clients": last_round["failures"],
        "personalized_accuracy": sum(c["personalized-accuracy"] for c in clients) / max(len(clients), 1),
        "clients": clients,
    }


def build_server_app(settings: ExperimentSettings | None = None) -> ServerApp:
    """`settings` given: `regl fl`; None: `flwr run .`, settings from the run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(1)
        chosen = settings or ExperimentSettings.from_config(dict(context.run_config))
        if not chosen.out_dir:
            chosen = replace(chosen, out_dir=f"runs/{chosen.name}")
        run_federation(grid, chosen)

    return server_app


app = build_server_app()
