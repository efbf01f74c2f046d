"""A client's synthetic fill: plan it, make it, keep it.

Runs on the client. It fine-tunes the client's LoRA on its own images, generates the
planned images of each class (diffusion, natural noise), takes the mixup images other
clients produced for it, and keeps the result in its synthetic store, so later rounds,
reruns and other arms with the same settings reuse it instead of generating again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from regl.data.datasets import BUILTINS, ImageDataset
from regl.data.domains import ClientDomain
from regl.errors import ReglError
from regl.fill.keys import (
    adapter_digest,
    check_made_alike,
    compute_key,
    digest,
    lora_settings_key,
    seeds_key,
    settings_key,
    source_seed,
)
from regl.fill.plan import FillPlan
from regl.fill.settings import FillSettings
from regl.generate.settings import LoraSettings, client_look_token

RemoteFill = Callable[[FillPlan], tuple[dict[str, ImageDataset], dict]]
# (the stage, e.g. "LoRA step 40/100"; the fraction of that stage done); it may raise to stop the fill
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ClientFill:
    """What a client's fill needs to know about its run; `domain`: its look, when it has one.

    `data_digest`: the content digest of the client's images (`ImageDataset.content_digest`), which its
    store, LoRA and base-image keys then carry. A folder's or a node's images may change under the same
    path, so their fill needs it; a built-in dataset's client may go without: its images are fixed by
    the dataset (shipped, or a pinned npm version), the run's partition, seed and the client's domain.
    `adapter`: the federation's adapter (regl/generate/federated_lora.py), for `--fill-lora federated`
    and `federated+local`.
    """

    dataset: str
    template: str
    client_id: int
    run_seed: int
    settings: FillSettings
    domain: ClientDomain | None = None
    data_digest: str = ""
    adapter_digest: str = ""
    look: str = "none"  # the federation's shared look (regl/data/looks.py), on the client's images
    adapter: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if "oracle" in self.settings.sources and not self.has_domain and self.look == "none":
            raise ReglError("the oracle fill passes base images through the true look: give a --domain or a --look")
        federated = self.settings.lora.startswith("federated") and "diffusion" in self.settings.sources
        if federated and not self.adapter_digest:
            raise ReglError(f"--fill-lora {self.settings.lora} draws with the federation's adapter, and none was named")
        if self.adapter is not None and adapter_digest(self.adapter) != self.adapter_digest:
            raise ValueError(f"client {self.client_id} was given another adapter than its fill names")
        if not self.data_digest and self.dataset not in BUILTINS:
            raise ValueError(f"the fill of {self.dataset} needs the digest of the client's images for its keys")

    @property
    def has_domain(self) -> bool:
        return self.domain is not None and self.domain.kind != "none"

    def _domain_key(self) -> dict:
        """The look the client's images (and so its LoRA and fill) have: its domain and the shared look; nothing
        without one."""
        return {
            **({"domain": asdict(self.domain)} if self.has_domain else {}),
            **({"look": self.look} if self.look != "none" else {}),
        }

    def in_true_look(self, images: ImageDataset) -> ImageDataset:
        """Images (the base's, the public pool's) in the look the client's own have: the shared look, then its
        domain."""
        from regl.data.looks import apply_look

        looked = apply_look(images, self.look)
        return self.domain.apply(looked, "generated") if self.has_domain else looked

    def _data_key(self, data: ImageDataset | None = None) -> dict:
        """The client's images by content (those given, else those the fill was made for); nothing for a
        built-in dataset's client without a digest, so its keys stay what they were before digests."""
        if not self.data_digest:
            return {}
        return {"data": self.data_digest if data is None else data.content_digest}

    def store_key(self, plan: FillPlan) -> dict:
        key = {
            "dataset": self.dataset,
            "client": self.client_id,
            "seed": self.run_seed,
            **seeds_key(),
            "plan": plan.to_json(),
            "settings": settings_key(self.settings),
            **self._domain_key(),
            **self._data_key(),
        }
        if any(plan.counts[source].sum() > 0 for source in ("diffusion", "oracle")):
            from regl.generate.generator import base_fingerprint

            key["base"] = base_fingerprint(self.settings.base_folder())
            key.update(compute_key(self.settings.compute()))
        if self.settings.lora != "none" and plan.counts["diffusion"].sum() > 0:
            key["lora"] = self._generator_key()
        return key

    def _generator_key(self) -> dict:
        """What the diffusion images' generator is: the client's LoRA settings, or the federation's adapter by
        content (with the local steps on top, for federated+local)."""
        local = {"settings": lora_settings_key(self._lora_settings()), **compute_key(self.settings.compute("training"))}
        if self.settings.lora == "client":
            return local
        return {
            "federated": self.adapter_digest,
            **({"local": local} if self.settings.lora == "federated+local" else {}),
        }

    def store_folder(self, key: dict) -> Path:
        return Path(self.settings.store) / f"client-{self.client_id}-{digest(key)}"

    def load(self, plan: FillPlan) -> ImageDataset | None:
        from regl.fill.store import SyntheticStore

        key = self.store_key(plan)
        return SyntheticStore(self.store_folder(key)).load(key)

    def make(
        self,
        data: ImageDataset,
        plan: FillPlan,
        mixed: ImageDataset | None,
        remote: RemoteFill | None = None,
        on_progress: Progress | None = None,
    ) -> tuple[ImageDataset, dict]:
        """Generate the planned images (or reuse the store); returns them and the timings.

        `remote` makes the diffusion and noise shards elsewhere (the client's `regl serve`);
        without it they are made in this process, reporting to `on_progress`.
        """
        from regl.fill.store import SyntheticStore

        if self._data_key(data) != self._data_key():
            raise ValueError(f"client {self.client_id}'s fill was keyed by other images than it is given")
        key = self.store_key(plan)
        store = SyntheticStore(self.store_folder(key))
        if (stored := store.load(key)) is not None:
            return stored, {"reused": 1}
        if remote is not None:
            shards, timings = remote(plan)
            check_made_alike(key, timings.pop("made_with"))
            timings = {"reused": 0, **timings}
        else:
            timings = {"reused": 0}
            shards = self.make_shards(data, plan, timings, on_progress)
        if mixed is not None and len(mixed):
            shards["mixup"] = mixed
        seeds = {source: source_seed(self.run_seed, self.client_id, source) for source in shards}
        return store.write(key, shards, seeds, data.class_names), timings

    def make_shards(
        self, data: ImageDataset, plan: FillPlan, timings: dict, on_progress: Progress | None = None
    ) -> dict[str, ImageDataset]:
        """The diffusion and noise images of the plan, made here."""
        shards: dict[str, ImageDataset] = {}
        if plan.counts["diffusion"].sum() > 0:
            counts = plan.counts["diffusion"]
            shards["diffusion"] = (
                self._diffusion(data, counts, timings, on_progress)
                if self.settings.lora != "none"
                else self._base_images(data, counts, timings, on_progress)
            )
        if plan.counts["oracle"].sum() > 0:
            base_images = self._base_images(data, plan.counts["oracle"], timings, on_progress)
            shards["oracle"] = self.in_true_look(base_images)
        if plan.counts["noise"].sum() > 0:
            started = time.perf_counter()
            shards["noise"] = self._noise(data, plan.counts["noise"])
            timings["noise_seconds"] = time.perf_counter() - started
        if plan.counts["public-equal"].sum() > 0:
            shards["public-equal"] = self._public_equal(plan.counts["public-equal"])
        return shards

    def _diffusion(
        self, data: ImageDataset, counts: np.ndarray, timings: dict, on_progress: Progress | None, lora: bool = True
    ) -> ImageDataset:
        """The planned images from the fill's generator (the client's LoRA, the federation's adapter, that adapter
        with local steps), or with `lora=False` from the base.

        Image seeds depend on the client and run only: a class's i-th image has the same seed
        from the base and from the LoRA.
        """
        from regl.generate.generator import Generator, image_seed, to_dataset_format

        report = on_progress or (lambda message, fraction: None)
        base = self.settings.base_folder()
        started = time.perf_counter()
        if lora and self.settings.lora == "client":
            generator, timings["lora_steps"] = self._lora_generator(data, base, report)
        elif lora:
            generator = self._federated_generator(data, base)
        else:
            generator = Generator(base, data.class_names, self.template, compute=self.settings.compute())
        timings["finetune_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        labels = [c for c, n in enumerate(counts) for _ in range(int(n))]
        seed = source_seed(self.run_seed, self.client_id, "diffusion")
        images = generator.generate(
            labels,
            [image_seed(seed, i) for i in range(len(labels))],
            **self.settings.sampling(),
            on_batch=lambda done: report(f"diffusion image {done}/{len(labels)}", done / len(labels)),
        )
        timings["generate_seconds"] = time.perf_counter() - started
        x = to_dataset_format(images, data.resolution, data.channels)
        return ImageDataset(x, np.asarray(labels, dtype=np.int64), data.class_names)

    def _base_images(
        self, data: ImageDataset, counts: np.ndarray, timings: dict, on_progress: Progress | None
    ) -> ImageDataset:
        """The base's images of `counts`, kept in a store of their own: the oracle then passes exactly the
        diffusion-base arm's images through the client's look instead of drawing them again."""
        from regl.fill.store import SyntheticStore

        key = self.base_images_key(data, counts)
        store = SyntheticStore(Path(self.settings.store) / f"base-client-{self.client_id}-{digest(key)}")
        if (kept := store.load_shards(key)) is not None:
            return kept["diffusion"]
        images = self._diffusion(data, counts, timings, on_progress, lora=False)
        seed = source_seed(self.run_seed, self.client_id, "diffusion")
        store.write(key, {"diffusion": images}, {"diffusion": seed}, data.class_names)
        return images

    def base_images_key(self, data: ImageDataset, counts: np.ndarray) -> dict:
        """What the base's images of `counts` for this client depend on."""
        from regl.generate.generator import base_fingerprint

        return {
            "dataset": self.dataset,
            "template": self.template,
            "client": self.client_id,
            "seed": self.run_seed,
            **seeds_key(),
            "counts": counts.tolist(),
            **self.settings.sampling_key(),
            "base": base_fingerprint(self.settings.base_folder()),
            **compute_key(self.settings.compute()),
            **self._data_key(data),
        }

    def _lora_settings(self) -> LoraSettings:
        """The client's LoRA, or its local steps on the federation's adapter (whose style token is the client's
        own look token, as in the rounds)."""
        word = self.settings.lora_style_token
        return LoraSettings(
            rank=self.settings.lora_rank,
            targets=self.settings.lora_targets,
            lr=self.settings.lora_lr,
            early_stop=self.settings.lora_early_stop,
            cfg_dropout=self.settings.lora_cfg_dropout,
            steps=self.settings.lora_steps,
            prior_per_class=self.settings.prior_per_class,
            style_token=client_look_token(word, self.client_id) if self.settings.lora != "client" else word,
            seed=source_seed(self.run_seed, self.client_id, "lora") % 2**31,
        )

    def lora_key(self, data: ImageDataset, base: Path) -> dict:
        """What the client's LoRA depends on: its images, settings and seeds, the base weights."""
        from regl.generate.generator import base_fingerprint

        return {
            "dataset": self.dataset,
            "counts": data.class_counts().tolist(),
            "seed": self.run_seed,
            **seeds_key(),
            "settings": lora_settings_key(self._lora_settings()),
            "base": base_fingerprint(base),
            **self._domain_key(),
            **compute_key(self.settings.compute("training")),
            **self._data_key(data),
        }

    def lora_folder(self, data: ImageDataset, base: Path) -> Path:
        """Where the client's LoRA is kept beside the store, under its key."""
        return Path(self.settings.store) / f"lora-client-{self.client_id}-{digest(self.lora_key(data, base))}"

    def _lora_generator(self, data: ImageDataset, base: Path, report: Progress):
        """The client's LoRA: trained once per (client data, settings, base weights), kept beside the store; with
        the steps it ran (fewer than the settings' where it stopped early)."""
        from regl.generate.generator import LORA_FILE, LORA_METADATA, Generator
        from regl.generate.lora import finetune_lora

        lora_settings = self._lora_settings()
        compute = self.settings.compute("training")
        folder = self.lora_folder(data, base)
        if (folder / LORA_FILE).is_file():
            steps_run = json.loads((folder / LORA_METADATA).read_text())["steps_run"]
            return Generator(
                base, data.class_names, self.template, lora=folder, compute=self.settings.compute()
            ), steps_run
        resume = (folder / "checkpoint" / "state.pt").is_file()
        steps = lora_settings.steps
        result = finetune_lora(
            data,
            data.class_names,
            self.template,
            base,
            folder,
            lora_settings,
            resume=resume,
            show_progress=False,
            on_step=lambda step: report(f"LoRA step {step}/{steps}", step / steps),
            compute=compute,
            prior_cache=Path(self.settings.store) / "priors",
        )
        result.generator.set_compute(self.settings.compute())
        return result.generator, result.steps_run

    def _federated_generator(self, data: ImageDataset, base: Path):
        """The federation's adapter, saved once in diffusers' format beside the store; for federated+local, a
        copy trained `lora_steps` more steps on the client's own images, kept beside it."""
        from regl.generate.federated_lora import client_training, local_round, save_adapter
        from regl.generate.generator import LORA_FILE, Generator

        if self.adapter is None:
            raise ReglError(
                f"client {self.client_id} makes its fill with the federation's adapter, and was not sent it"
            )
        adapter, name = self.adapter, f"federated-adapter-{self.adapter_digest}"
        if self.settings.lora == "federated+local":
            key = {**self.lora_key(data, base), "federated": self.adapter_digest}
            name = f"federated-local-client-{self.client_id}-{digest(key)}"
        folder = Path(self.settings.store) / name
        if not (folder / LORA_FILE).is_file():
            if self.settings.lora == "federated+local":
                training = client_training(
                    base,
                    data,
                    data.class_names,
                    self.template,
                    self._lora_settings(),
                    self.settings.compute("training"),
                )
                seed = source_seed(self.run_seed, self.client_id, "lora")
                adapter, _ = local_round(training, adapter, self.settings.lora_steps, seed)
            metadata = {"class_names": list(data.class_names), "template": self.template}
            if self.settings.lora == "federated+local":  # its style token, if any, goes on every prompt
                metadata["settings"] = asdict(self._lora_settings())
            save_adapter(adapter, base, folder, metadata)
        generator = Generator(base, data.class_names, self.template, lora=folder, compute=self.settings.compute())
        generator.style_token = self._lora_settings().style_token  # the federation's adapter is every client's
        return generator

    def _noise(self, data: ImageDataset, counts: np.ndarray) -> ImageDataset:
        from regl.generate.natural_noise import natural_noise

        labels = np.asarray([c for c, n in enumerate(counts) for _ in range(int(n))], dtype=np.int64)
        x = natural_noise(
            len(labels), source_seed(self.run_seed, self.client_id, "noise") % 2**31, data.resolution, data.channels
        )
        return ImageDataset(x, labels, data.class_names)

    def _public_equal(self, counts: np.ndarray) -> ImageDataset:
        """Exactly `counts[c]` real public-pool images of each class c, drawn without replacement, in the shared
        look: the real reference of a generator that draws the federation's look."""
        from regl.data.datasets import load_split

        public = load_split(self.dataset).public
        rng = np.random.default_rng(source_seed(self.run_seed, self.client_id, "public-equal"))
        picked = []
        for c, n in enumerate(counts):
            pool = np.flatnonzero(public.y == c)
            if n > len(pool):
                raise ReglError(
                    f"the public pool of {self.dataset} holds {len(pool)} images of class "
                    f"{public.class_names[c]!r}, but client {self.client_id}'s plan asks for {int(n)}"
                )
            picked.append(rng.choice(pool, size=int(n), replace=False))
        from regl.data.looks import apply_look

        return apply_look(public.subset(np.sort(np.concatenate(picked))), self.look)


def with_fill(data: ImageDataset, synthetic: ImageDataset | None) -> ImageDataset:
    """Real plus synthetic images, one training set."""
    if synthetic is None or not len(synthetic):
        return data
    return ImageDataset(np.concatenate([data.x, synthetic.x]), np.concatenate([data.y, synthetic.y]), data.class_names)
