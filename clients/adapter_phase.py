"""Before the fill: the federated generator's rounds (`--fill-lora federated` or `federated+local`).

1. the server starts from the adapter of the last round kept on disk, else from peft's initialisation;
2. each round it sends the adapter to every client, each trains its steps on its own images,
   sends its copy back, and the server joins them by `--fill-adapter-rule`, weighted by the
   clients' images (under `--fill-adapter-dp-noise`: their clipped updates averaged uniformly,
   plus Gaussian noise), and keeps the result (a killed run resumes after the last round kept);
3. the fill phase then sends every client the final adapter to draw its missing classes with.

A client that fails a round is left out of that round's average and named in the summary.
"""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from regl.clients.fill_phase import exchange
from regl.clients.participation import Participation
from regl.clients.traffic import TrafficLog, record_bytes
from regl.fill.keys import adapter_digest
from regl.fl.adapter_aggregation import aggregate, private_aggregate, update_norm
from regl.fl.federated_generator import AdapterRounds, initial_adapter
from regl.fl.progress import Write, duration
from regl.fl.settings import ExperimentSettings
from regl.seeds import secret_seed


def adapter_record(adapter: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in adapter.items()})


def run_adapter_phase(
    grid: Grid,
    settings: ExperimentSettings,
    traffic: TrafficLog,
    write: Write,
    participation: Participation | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """The federation's adapter after `--fill-adapter-rounds` rounds, and what the run summary records of them.

    Rounds kept from an earlier run count only for the same clients' images (each sends a digest of
    them); a round some client failed is used but not kept, so a resumed run trains it again. With
    `participation`, each round trains the clients sampled for it (a draw of its own, apart from the
    classifier's rounds).
    """
    fill = settings.fill
    config = settings.to_config()
    started, failures = time.perf_counter(), []
    kept = AdapterRounds(settings)
    done, adapter, rounds, data = kept.latest(fill.adapter_rounds)
    if done and _changed(_data_digests(grid, config, traffic, failures), data):
        write(f"federated generator: the clients' images changed since the rounds kept in {kept.folder}")
        done, adapter, rounds, data = 0, None, [], {}
    if adapter is None:
        adapter = initial_adapter(settings)
    resumed = f"; rounds 1-{done} kept in {kept.folder}" if done else ""
    private = (
        f" with client-level DP (noise multiplier {fill.adapter_dp_noise:g}, clip {fill.adapter_dp_clip:g})"
        if fill.adapter_dp_noise
        else ""
    )
    sampled = f"{settings.clients_per_round} sampled of " if participation else ""
    write(
        f"federated generator: {fill.adapter_rounds} rounds of {fill.adapter_steps} LoRA steps on "
        f"{sampled}{len(grid.get_node_ids())} clients, joined by {fill.adapter_rule}{private}{resumed}"
    )
    for server_round in range(done + 1, fill.adapter_rounds + 1):
        round_started = time.perf_counter()
        if participation is not None:
            nodes = sorted(participation.sample("generator", server_round).values())
        else:
            nodes = sorted(grid.get_node_ids())  # a SuperNode started again has a new id
        sent = adapter_record(adapter)

        def content(node: int, sent: ArrayRecord = sent, server_round: int = server_round) -> RecordDict:
            return RecordDict({"config": ConfigRecord({**config, "adapter-round": server_round}), "adapter": sent})

        round_failures: list[dict] = []
        replies: list[Message] = exchange(grid, nodes, "adapter_round", content, traffic, round_failures)
        failures += round_failures
        updates = [{name: array.numpy() for name, array in reply.content["adapter"].items()} for reply in replies]
        metrics = [dict(reply.content["metrics"]) for reply in replies]
        data.update({str(reply.content["data"]["client"]): str(reply.content["data"]["digest"]) for reply in replies})
        clipping = {}
        if fill.adapter_dp_noise:  # client-level DP: uniform weights, the clipped updates' mean plus noise
            clip, seed = fill.adapter_dp_clip, secret_seed()  # a seed the clients know would let them denoise
            norms = [update_norm(adapter, update, fill.adapter_rule) for update in updates]
            clipping = {"update_norms": norms, "clipped": sum(norm > clip for norm in norms)}
            uniform = [1.0] * len(updates)
            adapter = private_aggregate(adapter, updates, uniform, fill.adapter_rule, clip, fill.adapter_dp_noise, seed)
        else:
            adapter = aggregate(adapter, updates, [m["examples"] for m in metrics], fill.adapter_rule)
        losses = [m["loss"] for m in metrics]
        rounds.append(
            {
                "round": server_round,
                "clients": sorted(int(m["client"]) for m in metrics),
                "mean_loss": float(np.mean(losses)),
                "seconds": time.perf_counter() - round_started,
                "client_seconds": float(sum(m["seconds"] for m in metrics)),
                "failures": round_failures,
                **clipping,  # to size --fill-adapter-dp-clip by; the server's own record, outside what DP releases
            }
        )
        if not round_failures:
            kept.save(server_round, adapter, rounds, data)
        write(
            f"generator round {server_round}/{fill.adapter_rounds}: mean loss {np.mean(losses):.4f} over "
            f"{len(replies)} clients, {duration(time.perf_counter() - started)} elapsed"
            + (f"; {clipping['clipped']} updates clipped" if clipping else "")
            + (f"; {len(round_failures)} failed, so the round is not kept" if round_failures else "")
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
    if fill.adapter_dp_noise:
        from regl.fl.privacy import privacy_report

        summary["privacy"] = privacy_report(fill.adapter_dp_noise, fill.adapter_dp_clip, "server", fill.adapter_rounds)
    return adapter, summary


def _changed(digests: dict[str, str], kept: dict[str, str]) -> bool:
    """Whether a client whose images trained the kept rounds has other images now (or is gone)."""
    return any(digests.get(client) != digest for client, digest in kept.items())


def _data_digests(grid: Grid, config: dict, traffic: TrafficLog, failures: list[dict]) -> dict[str, str]:
    """Each client's digest of its images (client → digest): what kept rounds were trained on must match."""
    nodes = sorted(grid.get_node_ids())
    replies = exchange(
        grid, nodes, "data_digest", lambda _: RecordDict({"config": ConfigRecord(config)}), traffic, failures
    )
    return {str(reply.content["data"]["client"]): str(reply.content["data"]["digest"]) for reply in replies}
