"""Before the fill: the federated generator's rounds (`--fill-lora federated` or `federated+local`).

1. the server starts from the adapter of the last round kept on disk, else from peft's initialisation;
2. each round it sends the adapter to every client, each trains its steps on its own images,
   sends its copy back, and the server joins them by `--fill-adapter-rule`, weighted by the
   clients' images, and keeps the result (a killed run resumes after the last round kept);
3. the fill phase then sends every client the final adapter to draw its missing classes with.

A client that fails a round is left out of that round's average and named in the summary.
"""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from regl.clients.fill_phase import exchange
from regl.clients.traffic import TrafficLog, record_bytes
from regl.fill.keys import adapter_digest
from regl.fl.adapter_aggregation import aggregate
from regl.fl.federated_generator import AdapterRounds, initial_adapter
from regl.fl.progress import Write, duration
from regl.fl.settings import ExperimentSettings


def adapter_record(adapter: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in adapter.items()})


def run_adapter_phase(
    grid: Grid, settings: ExperimentSettings, traffic: TrafficLog, write: Write
) -> tuple[dict[str, np.ndarray], dict]:
    """The federation's adapter after `--fill-adapter-rounds` rounds, and what the run summary records of them."""
    fill = settings.fill
    nodes = sorted(grid.get_node_ids())
    kept = AdapterRounds(settings)
    done, adapter, rounds = kept.latest(fill.adapter_rounds)
    if adapter is None:
        adapter = initial_adapter(settings)
    resumed = f"; rounds 1-{done} kept in {kept.folder}" if done else ""
    write(
        f"federated generator: {fill.adapter_rounds} rounds of {fill.adapter_steps} LoRA steps on {len(nodes)} "
        f"clients, joined by {fill.adapter_rule}{resumed}"
    )
    config = settings.to_config()
    started, failures = time.perf_counter(), []
    for server_round in range(done + 1, fill.adapter_rounds + 1):
        round_started = time.perf_counter()
        sent = adapter_record(adapter)

        def content(node: int, sent: ArrayRecord = sent, server_round: int = server_round) -> RecordDict:
            return RecordDict({"config": ConfigRecord({**config, "adapter-round": server_round}), "adapter": sent})

        replies: list[Message] = exchange(grid, nodes, "adapter_round", content, traffic, failures)
        updates = [{name: array.numpy() for name, array in reply.content["adapter"].items()} for reply in replies]
        metrics = [dict(reply.content["metrics"]) for reply in replies]
        adapter = aggregate(adapter, updates, [m["examples"] for m in metrics], fill.adapter_rule)
        losses = [m["loss"] for m in metrics]
        rounds.append(
            {
                "round": server_round,
                "clients": sorted(int(m["client"]) for m in metrics),
                "mean_loss": float(np.mean(losses)),
                "seconds": time.perf_counter() - round_started,
                "client_seconds": float(sum(m["seconds"] for m in metrics)),
            }
        )
        kept.save(server_round, adapter, rounds)
        write(
            f"generator round {server_round}/{fill.adapter_rounds}: mean loss {np.mean(losses):.4f} over "
            f"{len(replies)} clients, {duration(time.perf_counter() - started)} elapsed"
        )
    summary = {
        "rounds": rounds,
        "rule": fill.adapter_rule,
        "adapter_digest": adapter_digest(adapter),
        "adapter_bytes": record_bytes(adapter_record(adapter)),  # as a client sends it, serialised
        "wall_seconds": time.perf_counter() - started,
        "failures": failures,
        "kept_in": str(kept.folder),
    }
    return adapter, summary
