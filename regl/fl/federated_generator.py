"""The federated generator: the fill's LoRA adapter trained by the whole federation before the classifier's rounds.

Each round every client trains `--fill-adapter-steps` steps from the global adapter on its own
images and class prompts (`adapter_round`), in its own process or, where its node names a fill
service, in that warm `regl serve` (regl/fill/remote.py); the server joins the copies
(regl/fl/adapter_aggregation.py) and keeps the adapter of every finished round on disk
(`AdapterRounds`), so a killed run resumes from its last complete round and the federated arms
of a bench share one adapter. Only the adapter's arrays travel; images never leave a client.

Torch-free to import: a ClientApp whose service trains never loads torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from regl.atomic import write_json_atomically
from regl.fill.keys import compute_key, digest, lora_settings_key, seeds_key
from regl.fl.settings import ExperimentSettings
from regl.generate.settings import LoraSettings, client_look_token
from regl.seeds import derive_seed

Adapter = dict[str, np.ndarray]
# a process keeps each client's cached latents and prompts from round to round (a Ray worker serves several)
_TRAININGS: dict[tuple[ExperimentSettings, int], Any] = {}


def adapter_settings(settings: ExperimentSettings, client_id: int | None = None) -> LoraSettings:
    """The LoRA every client trains in the federation's rounds: the fill's rank, layers and rate, no priors (the
    other clients hold the classes one lacks), initialised at the run's own seed; with a style token, client
    `client_id`'s own look token (the rounds' key, with no client, keeps the word)."""
    fill = settings.fill
    word = fill.lora_style_token
    return LoraSettings(
        rank=fill.lora_rank,
        targets=fill.lora_targets,
        lr=fill.lora_lr,
        cfg_dropout=fill.lora_cfg_dropout,
        prior_per_class=0,
        style_token=word if client_id is None else client_look_token(word, client_id),
        seed=derive_seed(settings.seed, "adapter-init"),
    )


def initial_adapter(settings: ExperimentSettings) -> Adapter:
    from regl.fl.experiment import class_names
    from regl.generate.federated_lora import initial_adapter as peft_initial
    from regl.generate.prompts import template_for

    names = class_names(settings)
    return peft_initial(settings.fill.base_folder(), names, template_for(settings.dataset), adapter_settings(settings))


def adapter_round(
    settings: ExperimentSettings, client_id: int, adapter: Adapter, server_round: int
) -> tuple[Adapter, dict[str, Any], str]:
    """One client's round: `adapter_steps` steps from the global adapter; its trained copy, what it did, and the
    digest of the images it trained on (the fill service's copy where the node has one)."""
    started = time.perf_counter()
    fill = settings.fill
    lora, train_a = adapter_settings(settings, client_id), fill.adapter_rule != "ffa"  # ffa: A stays as sent
    seed = derive_seed(settings.seed, "adapter-round", client_id, server_round)
    if fill.service:
        from regl.fill.remote import remote_adapter_round

        trained, done = remote_adapter_round(
            fill.service, lora, fill.adapter_steps, train_a, seed, adapter, fill.base_folder()
        )
        loss, examples, data = done["loss"], done["examples"], done["data_digest"]
    else:
        trained, loss, examples, data = _in_process_round(settings, client_id, lora, train_a, adapter, seed)
    metrics = {"client": client_id, "examples": examples, "loss": loss, "seconds": time.perf_counter() - started}
    return trained, metrics, data


def _in_process_round(
    settings: ExperimentSettings, client_id: int, lora: LoraSettings, train_a: bool, adapter: Adapter, seed: int
) -> tuple[Adapter, float, int, str]:
    """The round in this process, from the client's cached training: the adapter, loss, examples, data digest."""
    from regl.fl.experiment import client_view
    from regl.generate.federated_lora import client_training, local_round
    from regl.generate.prompts import template_for

    view = client_view(settings, client_id)
    key = (settings, client_id)
    if key not in _TRAININGS:
        _TRAININGS[key] = client_training(
            settings.fill.base_folder(),
            view.data,
            view.class_names,
            template_for(settings.dataset),
            lora,
            settings.fill.compute("training"),
            train_a=train_a,
        )
    trained, loss = local_round(_TRAININGS[key], adapter, settings.fill.adapter_steps, seed)
    return trained, loss, len(view.data), view.data.content_digest


def client_data_digest(settings: ExperimentSettings, client_id: int) -> str:
    """What the kept rounds of the federation's adapter are checked against: the client's images by content, as
    its fill service holds them where its node has one (the rounds trained there)."""
    if settings.fill.service:
        from regl.fill.remote import remote_data_digest

        return remote_data_digest(settings.fill.service)
    from regl.fl.experiment import client_view

    return client_view(settings, client_id).data.content_digest


def forget_trainings() -> None:
    """The generator's rounds are over in this process: free the clients' cached pipelines and latents."""
    _TRAININGS.clear()


class AdapterRounds:
    """The global adapter after each finished round, under the run's fill store, keyed by what it depends on.

    The number of rounds is not in the key: a run asking for more rounds continues from the last one kept.
    """

    def __init__(self, settings: ExperimentSettings) -> None:
        from regl.generate.generator import base_fingerprint

        fill = settings.fill
        key = {  # the clients' images themselves are checked on resume (`latest`'s data)
            "dataset": settings.dataset,
            "classes": settings.classes,
            "partition": asdict(settings.partition),
            "seed": settings.seed,
            **seeds_key(),
            "base": base_fingerprint(fill.base_folder()),
            "lora": lora_settings_key(adapter_settings(settings)),
            "steps": fill.adapter_steps,
            "rule": fill.adapter_rule,
            **compute_key(fill.compute("training")),
            # a private run's rounds are not a plain run's, nor another noise's or clip's; plain keys stay as they were
            **({"dp": {"noise": fill.adapter_dp_noise, "clip": fill.adapter_dp_clip}} if fill.adapter_dp_noise else {}),
            # rounds on a sample of the clients are not rounds on all of them (the same for plain keys, as above)
            **({"clients_per_round": settings.clients_per_round} if settings.clients_per_round else {}),
        }
        self.key = key
        self.folder = Path(fill.store) / f"federated-rounds-{digest(key)}"

    def latest(self, rounds: int) -> tuple[int, Adapter | None, list[dict], dict[str, str]]:
        """The last kept round up to `rounds`, its adapter, the record of every round up to it and the digest of
        each client's images they were trained on (client → digest)."""
        record_file = self.folder / "rounds.json"
        if not record_file.is_file():
            return 0, None, [], {}
        record = json.loads(record_file.read_text())
        if record["key"] != json.loads(json.dumps(self.key)):
            return 0, None, [], {}
        kept = [r for r in record["rounds"] if r["round"] <= rounds]
        if not kept:
            return 0, None, [], {}
        with np.load(self.folder / f"round-{kept[-1]['round']}.npz") as arrays:
            return kept[-1]["round"], {name: arrays[name] for name in arrays.files}, kept, record.get("data", {})

    def save(self, server_round: int, adapter: Adapter, rounds: list[dict], data: dict[str, str]) -> None:
        """The round's adapter, then the record that names it: a kill in between leaves the previous round."""
        from regl.atomic import write_bytes_atomically

        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = _npz_bytes(adapter)
        write_bytes_atomically(self.folder / f"round-{server_round}.npz", buffer)
        write_json_atomically(self.folder / "rounds.json", {"key": self.key, "rounds": rounds, "data": data})


def _npz_bytes(arrays: Adapter) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
