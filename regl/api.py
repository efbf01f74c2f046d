"""ReGL from a user's own code: fill a client's data, generate images, fine-tune a LoRA.

For a Flower app that is not ReGL's (Flower's quickstart with the user's own `task.py`): each
function takes the arrays the user already holds and runs what `regl fl`'s clients and
`regl serve` run, with the same stores and caches, so a second call with the same data and
settings reuses the first one's images instead of drawing them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from regl.data.datasets import ImageDataset, class_index
from regl.errors import ReglError
from regl.generate.prompts import DEFAULT_TEMPLATE
from regl.generate.settings import SamplingSettings

FILL_SOURCES = ("diffusion", "noise")  # what a client makes alone: mixup needs the federation, the rest are bench arms


def client_data(images: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str]) -> ImageDataset:
    """The arrays as ReGL's dataset: uint8 images N×H×W (grayscale) or N×H×W×C, labels indexing `class_names`."""
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.dtype != np.uint8:
        raise ReglError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] not in (1, 3):
        raise ReglError(f"images must be N×H×W or N×H×W×C, square, with 1 or 3 channels; got shape {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ReglError(f"labels must be {len(x)} integers, one per image; got {y.dtype} of shape {y.shape}")
    names = tuple(str(name) for name in class_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ReglError(f"class_names must name at least two classes, each once; got {list(names)}")
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise ReglError(f"labels must lie in 0..{len(names) - 1} (one per class name), got {y.min()}..{y.max()}")
    return ImageDataset(np.ascontiguousarray(x), y.astype(np.int64), names)


def add_fill(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    *,
    supplement: float = 1.0,
    sources: str = "diffusion",
    template: str = DEFAULT_TEMPLATE,
    client_id: int = 0,
    seed: int = 0,
    **options: object,
) -> tuple[np.ndarray, np.ndarray]:
    """The client's images and labels with its synthetic fill appended (real ones first).

    `supplement`: synthetic images as a fraction of the client's real ones, spent on the classes it
    lacks most (towards a uniform composition over `class_names`, so classes it never saw are filled
    too). `sources`: "diffusion" (a LoRA fine-tuned on these images, then its images of each missing
    class), "noise" (StyleGAN natural noise) or "diffusion+noise". `template`: the prompt with `{}` for
    a class name, as the base was trained on ("a handwritten digit {}" for the shipped digits).
    `client_id` and `seed` name the client's fill in the store. `options`: any other fill setting of
    `regl fl` by its field name (`lora_steps=100`, `sampler="lcm"`, `steps=1`, `store="cache/"`, `base=...`).
    Images come back in the client's own format (resolution and channels).
    """
    from regl.fill.client import ClientFill, with_fill
    from regl.fill.settings import FillSettings, client_plan

    data = client_data(images, labels, class_names)
    if not sources or any(source not in FILL_SOURCES for source in sources.split("+")):
        raise ReglError(f"sources must be {' or '.join(FILL_SOURCES)} joined by '+', got {sources!r}")
    if "{}" not in template:
        raise ReglError(f"template {template!r} needs a {{}} where the class name goes")
    known = {field.name for field in fields(FillSettings)} - {"mode", "supplement", "service"}
    if unknown := sorted(set(options) - known):
        raise ReglError(f"unknown fill option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    settings = FillSettings(mode=sources, supplement=supplement, **options)
    settings.check()
    fill = ClientFill("arrays", template, client_id, seed, settings, data_digest=data.content_digest)
    plan = client_plan(settings, data.class_counts(), None)
    synthetic, _ = fill.make(data, plan, mixed=None)
    filled = with_fill(data, synthetic)
    return filled.x, filled.y


def generate_images(
    class_name: str | int,
    n: int,
    class_names: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    base: str | Path = "",
    lora: str | Path | None = None,
    seed: int = 0,
    steps: int = SamplingSettings.steps,
    guidance: float = SamplingSettings.guidance,
) -> np.ndarray:
    """`n` images of one class (by name or index) as uint8 N×H×W×3 at the base's resolution.

    `base`: a diffusers Stable Diffusion folder (empty: the shipped tiny base); `lora`: a folder
    `finetune` wrote. Image i depends only on `seed` and i, not on `n`.
    """
    from regl.generate.generator import DEFAULT_BASE, Generator, check_count

    check_count(n)
    names = tuple(str(name) for name in class_names)
    label = class_index(names, class_name)
    generator = Generator(Path(base) if base else DEFAULT_BASE, names, template, lora=Path(lora) if lora else None)
    return generator.generate_class(label, n, seed, steps=steps, guidance=guidance)


def finetune_lora(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    *,
    template: str = DEFAULT_TEMPLATE,
    base: str | Path = "",
    **options: object,
) -> Path:
    """Fine-tune a LoRA on the client's images into the folder `out` (which `generate_images(lora=out)` reads).

    `options`: the LoRA's settings by field name (`steps=300`, `rank=4`, `lr=1e-3`, `early_stop=0.005`,
    `prior_per_class=32`, `seed=0`), as `regl finetune` takes them.
    """
    from regl.generate import lora
    from regl.generate.generator import DEFAULT_BASE
    from regl.generate.settings import LoraSettings

    data = client_data(images, labels, class_names)
    known = {field.name for field in fields(LoraSettings)}
    if unknown := sorted(set(options) - known):
        raise ReglError(f"unknown LoRA option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = Path(out)
    base = Path(base) if base else DEFAULT_BASE
    lora.finetune_lora(data, data.class_names, template, base, out, LoraSettings(**options))
    return out
