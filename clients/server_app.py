"""ServerApp: FedAvg over the federation, central evaluation and the run report."""

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from regl.atomic import write_json_atomically
from regl.clients.fill_phase import FillPhase
from regl.clients.participation import Participation
from regl.clients.polling import QuickGrid
from regl.clients.strategy import build_strategy
from regl.clients.traffic import TrafficLog
from regl.fl.experiment import ExperimentSettings, evaluate_global, new_model
from regl.fl.progress import RoundProgress, Write, print_line
from regl.fl.report import RunReport
from regl.seeds import derive_seed, secret_seed

NODE_WAIT_SECONDS = 120.0
# a round's replies are awaited this long; a node that dies is reported by the SuperLink sooner
# (its heartbeat lapses within about a minute), so this bounds only a live node that hangs
ROUND_TIMEOUT_SECONDS = 1800.0


def wait_for_nodes(grid: Grid, expected: int) -> None:
    """All nodes must join before the fill and round 1 (each holds classes the others may lack); fail with the
    mismatch instead of waiting forever. Later rounds go on with the nodes that are there (clients/strategy.py)."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while (found := len(list(grid.get_node_ids()))) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the run config asks for {expected} clients (partition-num-clients) but only {found} "
                f"nodes joined within {NODE_WAIT_SECONDS:.0f}s; make the federation's num-supernodes match"
            )
        time.sleep(1.0)


def run_federation(grid: Grid, settings: ExperimentSettings, write: Write = print_line) -> dict:
    """Run the strategy (FedAvg unless --strategy says otherwise) for settings.num_rounds; report into settings.out_dir.

    `write` gets the progress lines: the fill's, then one per round.
    """
    num_clients = settings.partition.num_clients
    wait_for_nodes(grid, num_clients)
    if settings.dp_noise:  # Flower draws the DP noise from numpy's global generator: seeded where no client knows
        np.random.seed(secret_seed() % 2**32)  # the legacy seed takes 32 bits
    traffic = TrafficLog()
    model = new_model(settings)
    participation = Participation(grid, settings, traffic) if settings.clients_per_round else None
    report = RunReport(Path(settings.out_dir), {"name": settings.name, "mode": "federated", **settings.to_config()})
    started = time.perf_counter()
    warm = {}
    if settings.warm_start_per_class:
        from regl.fl.warm_start import warm_start

        source = "base-generated" if settings.init == "synthetic" else "public-pool"
        write(
            f"warm start: {settings.warm_start_per_class} {source} images of every class, "
            f"{settings.warm_start_epochs} epochs on the server"
        )
        warm = warm_start(settings, model, write)  # round 0's evaluation is the warm-started model's
    train_extras, generator, filling = {}, None, None
    adapter = None
    if "diffusion" in settings.fill.sources and settings.fill.lora.startswith("federated"):
        from regl.clients.adapter_phase import run_adapter_phase

        adapter, generator = run_adapter_phase(grid, settings, traffic, write, participation)
    if settings.fill.synthetic:
        known = (participation.counts, participation.node_of) if participation else None
        filling = FillPhase(grid, settings, traffic, write, adapter, known)
        train_extras = filling.train_config()
        if participation is None:
            filling.fill(sorted(grid.get_node_ids()))
    choose = _sampler(participation, filling, write) if participation else None
    strategy, recording = build_strategy(settings, traffic, _monitor(settings), choose)
    progress = RoundProgress(settings.num_rounds, started, write)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        eval_started = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate_global(settings, model)
        record = {"round": server_round, **result, **_round_timing(recording.last_round, eval_started)}
        recording.last_round = {}
        recording.global_accuracy.append(result["accuracy"])
        report.add_round(record)
        progress.round_done(server_round, result["accuracy"], tuple(record.get("missing_clients", ())))
        return MetricRecord({"accuracy": result["accuracy"], "loss": result["loss"]})

    strategy.start(
        grid=QuickGrid(grid),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=settings.num_rounds,
        train_config=ConfigRecord({**settings.to_config(), **train_extras}),
        evaluate_fn=evaluate_fn,
        timeout=ROUND_TIMEOUT_SECONDS,
    )
    write_json_atomically(Path(settings.out_dir) / "traffic.json", traffic.messages())
    fill = filling.summary() if filling else None
    return report.finish(
        {
            "wall_seconds": time.perf_counter() - started,
            "fill": fill,
            **({"generator": generator} if generator else {}),
            "time_split": {
                **_time_split(fill, report.rounds),
                **({"generator_wall_seconds": generator["wall_seconds"]} if generator else {}),
                **{f"warm_start_{k}": v for k, v in warm.items()},
            },
            "bytes_sent_per_client": traffic.bytes_per_client(),
            **_privacy(settings, (generator or {}).get("privacy")),
            **_monitor_summary(report.rounds),
        }
    )


def _sampler(participation: Participation, filling: FillPhase | None, write: Write):
    """Recording's `choose`: the round's sampled nodes, and the fill of the clients among them sampled for the
    first time (a client never sampled makes none)."""
    filled: set[int] = set()

    def choose(server_round: int) -> tuple[list[int], dict]:
        sampled = participation.sample("classifier", server_round)
        chosen = {"participants": sorted(sampled)}
        new = [client for client in sorted(sampled) if client not in filled]
        if filling is not None and new:
            write(f"round {server_round}: {len(new)} of its {len(sampled)} clients are sampled for the first time")
            fill_started = time.perf_counter()
            made = filling.fill([sampled[client] for client in new])
            filled.update(new)  # a client whose fill failed is not asked again: its rounds report it missing
            chosen |= {"filled_clients": made, "fill_seconds": time.perf_counter() - fill_started}
        return list(sampled.values()), chosen

    return choose


def _monitor_summary(rounds: list[dict]) -> dict:
    """The monitor's mean cosine to the true composition over the rounds, and when it saw imbalance."""
    cosines = [r["monitor_cosine"] for r in rounds if "monitor_cosine" in r]
    if not cosines:
        return {}
    return {
        "monitor_mean_cosine": sum(cosines) / len(cosines),
        "monitor_detected_round": rounds[-1].get("monitor_imbalance_detected"),
    }


def _monitor(settings: ExperimentSettings):
    """The Ratio Loss's composition monitor, on auxiliary images from the public pool; None for other losses."""
    if settings.loss != "ratio":
        return None
    from regl.data.datasets import load_split
    from regl.fl.monitor import CompositionMonitor, auxiliary_set

    aux = auxiliary_set(load_split(settings.dataset).public, derive_seed(settings.seed, "monitor-auxiliary"))
    return CompositionMonitor(aux, settings.train, new_model(settings))


def _privacy(settings: ExperimentSettings, generator: dict | None) -> dict:
    """The classifier's DP guarantee, composed with the federated generator's when its private adapter came first."""
    if not settings.dp_noise:
        return {}
    from regl.fl.privacy import privacy_report

    clipping, rounds = settings.dp_clipping, settings.num_rounds
    return {"privacy": privacy_report(settings.dp_noise, settings.dp_clip, clipping, rounds, generator)}


def _time_split(fill: dict | None, rounds: list[dict]) -> dict:
    """Wall time of the fill phase and the rounds, and the clients' compute in each part."""
    clients = (fill or {}).get("clients", [])
    trained = [r for r in rounds if "round_seconds" in r]
    return {
        "fill_phase_wall_seconds": (fill or {}).get("wall_seconds", 0.0),
        "client_finetune_seconds": sum(c.get("finetune-seconds", 0.0) for c in clients),
        "client_generate_seconds": sum(c.get("generate-seconds", 0.0) + c.get("noise-seconds", 0.0) for c in clients),
        "rounds_wall_seconds": sum(r["round_seconds"] for r in trained),
        "client_train_seconds": sum(c["train-seconds"] for r in trained for c in r["clients"]),
        "client_eval_seconds": sum(c["eval-seconds"] for r in trained for c in r["clients"]),
        "server_eval_seconds": sum(r["server_eval_seconds"] for r in trained),
    }


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
        "missing_clients": last_round["missing_clients"],
        "errors": last_round["errors"],
        **{k: last_round[k] for k in ("participants", "filled_clients", "fill_seconds") if k in last_round},
        **last_round.get("monitor", {}),
        "personalized_accuracy": sum(c["personalized-accuracy"] for c in clients) / max(len(clients), 1),
        **_mean_in_domain(clients),
        "clients": clients,
    }


def _mean_in_domain(clients: list[dict]) -> dict:
    """With client domains: the clients' mean in-domain accuracy (regl/fl/experiment.py:train_client)."""
    scores = [c["in-domain-accuracy"] for c in clients if "in-domain-accuracy" in c]
    return {"in_domain_accuracy": sum(scores) / len(scores)} if scores else {}


def build_server_app(settings: ExperimentSettings | None = None, write: Write = print_line) -> ServerApp:
    """`settings` given: `regl fl`; None: `flwr run .`, settings from the run config. `write` gets progress lines."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(1)
        chosen = settings or ExperimentSettings.from_config(dict(context.run_config))
        chosen.check()
        if not chosen.out_dir:
            chosen = replace(chosen, out_dir=f"runs/{chosen.name}")
        run_federation(grid, chosen, write)

    return server_app


app = build_server_app()
