"""The node's share of the federated generator: a round of the federation's adapter on the client's images.

The ClientApp forwards each round here (regl/fill/remote.py) when its node names a fill service: the
service has the base, the data and the round's cached latents loaded, where a fresh ClientApp process
would load them every round. The round is the library's own (`regl.generate.federated_lora`), run as a
job, so it never loads a pipeline beside a fill or fine-tune job (service/jobs.py says why that matters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from regl.atomic import write_bytes_atomically
from regl.compute import resolve
from regl.errors import ReglError
from regl.generate.settings import ADAPTER_ROUND_OPTIONS, LoraSettings
from regl.service import encoding
from regl.service.errors import field_error
from regl.service.jobs import Job
from regl.service.local_model import LocalModel
from regl.service.schemas import AdapterRoundRequest, AdapterRoundResult
from regl.service.settings import ServiceSettings

if TYPE_CHECKING:
    from regl.generate.lora import LoraTraining


class AdapterTrainings:
    """The client's cached latents and prompts for the adapter rounds of one LoRA recipe: those of the last round.

    Kept in the app's state from round to round; a round of another recipe (another run) replaces them, and a
    fill with the federation's adapter frees them (the rounds are over), as a ClientApp's process does.
    Touched by the job worker only.
    """

    def __init__(self) -> None:
        self.key: tuple[LoraSettings, bool] | None = None
        self.training: LoraTraining | None = None

    def get(self, key: tuple[LoraSettings, bool], start: Callable[[], LoraTraining]) -> LoraTraining:
        """The training of `key`, started by `start()` unless it is the one kept."""
        if key != self.key:
            self.clear()  # the old pipeline goes before the new one loads
            self.training, self.key = start(), key
        return self.training

    def clear(self) -> None:
        self.key, self.training = None, None


def received_adapter(packed: str, base: Path, rank: int, targets: str) -> dict[str, np.ndarray]:
    """The adapter a request carries, when it is a LoRA of that rank and those layers on the service's base;
    else a 422 that names the field and what is wrong."""
    from regl.fl.remote_update import unpack_arrays
    from regl.generate.federated_lora import check_adapter

    try:
        adapter = unpack_arrays(packed)
        check_adapter(adapter, base, LoraSettings(rank=rank, targets=targets))
    except (ValueError, ReglError) as exc:
        raise field_error("adapter", str(exc)) from exc
    return adapter


def rounds_folder(settings: ServiceSettings) -> Path:
    """Where the node keeps each round's trained adapter until the ServerApp has fetched it."""
    return Path(settings.store) / "adapter-rounds"


def clear_adapter_rounds(settings: ServiceSettings) -> None:
    """A fresh service has no job records, so an earlier process's round adapters can no longer be fetched."""
    for stale in rounds_folder(settings).glob("*.npz"):
        stale.unlink(missing_ok=True)


def forget_adapter(record: dict[str, Any]) -> None:
    """A forgotten adapter-round job takes its adapter file with it."""
    if record["kind"] == "adapter-round" and (path := record["result"].get("adapter")):
        Path(path).unlink(missing_ok=True)


def adapter_round_work(
    body: AdapterRoundRequest,
    adapter: dict[str, np.ndarray],
    model: LocalModel,
    settings: ServiceSettings,
    trainings: AdapterTrainings,
) -> Callable[[Job], dict]:
    lora = LoraSettings(**{name: getattr(body, name) for name in ADAPTER_ROUND_OPTIONS}, prior_per_class=0)

    def work(job: Job) -> dict[str, Any]:
        from regl.generate.federated_lora import client_training, local_round
        from regl.generate.generator import base_fingerprint

        started = time.perf_counter()

        def start() -> LoraTraining:
            job.message = "caching the client's latents and prompts"
            compute = resolve(settings.device, settings.dtype, "training")
            return client_training(
                settings.base, model.data, model.class_names, model.template, lora, compute, body.train_a
            )

        training = trainings.get((lora, body.train_a), start)
        trained, loss = local_round(
            training,
            adapter,
            body.steps,
            body.seed,
            on_step=lambda step: job.report(f"step {step}/{body.steps}", step / body.steps),
        )
        out = rounds_folder(settings) / f"{job.id}.npz"
        write_bytes_atomically(out, encoding.npz_bytes(**trained))
        return AdapterRoundResult(
            adapter=str(out),
            loss=loss,
            examples=len(model.data),
            data_digest=model.data.content_digest,
            base_fingerprint=base_fingerprint(settings.base),
            seconds=time.perf_counter() - started,
        ).model_dump()

    return work
