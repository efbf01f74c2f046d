"""`regl bench-sampler`: images/s against downstream quality over sampler, steps and guidance.

Each row draws `per_class` images of every class from the base with one (sampler, steps,
guidance), times the drawing, and measures the images: TSTR (the federated arms' classifier
trained on them alone, tested on the real test set), the reference classifier's accuracy on
them ("recognised"), and the Fréchet distance, precision and recall to the real test images.
Each row is kept in a JSON file of its own, so a cut-off sweep resumes where it stopped, and
table.md is rewritten after every row.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from regl.atomic import write_json_atomically, write_text_atomically
from regl.compute import Compute
from regl.errors import ReglError

SWEEP_RECORD = "sweep.json"


@dataclass(frozen=True)
class SamplerRow:
    scheduler: str
    steps: int
    guidance: float

    @property
    def name(self) -> str:
        return f"{self.scheduler}-s{self.steps}-g{self.guidance:g}"


def sweep_rows(schedulers: list[str], steps: list[int], guidance: list[float]) -> list[SamplerRow]:
    from regl.generate.generator import SCHEDULERS

    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        raise ReglError(f"unknown sampler {', '.join(unknown)}; use any of {', '.join(SCHEDULERS)}")
    if not schedulers or not steps or not guidance:
        raise ReglError("give at least one sampler, one step count and one guidance scale")
    if min(steps) < 1 or min(guidance) < 1:
        raise ReglError(f"steps must be ≥ 1 and guidance ≥ 1 (1: none), got {steps} and {guidance}")
    return [SamplerRow(s, n, g) for s in schedulers for g in guidance for n in sorted(steps)]


def _measure_row(
    generator, dataset: str, row: SamplerRow, per_class: int, seed: int, epochs: int, classifier
) -> dict[str, Any]:
    from regl.data.datasets import load_split
    from regl.generate.evaluate import measure_generated
    from regl.generate.generated_sets import generated_set
    from regl.generate.tstr import train_and_test

    split = load_split(dataset)
    classes = list(range(len(generator.class_names)))
    fake, speed = generated_set(
        generator,
        classes,
        per_class,
        seed,
        split.test,
        steps=row.steps,
        guidance=row.guidance,
        scheduler=row.scheduler,
    )
    quality = measure_generated(fake, dataset, per_class, classifier=classifier)
    return {
        **asdict(row),
        "images_per_second": speed,
        "tstr_accuracy": train_and_test(fake, split.test, epochs, seed),
        "recognised": quality.mean_accuracy(),
        "frechet": quality.frechet,
        "precision": quality.fidelity.precision,
        "recall": quality.fidelity.recall,
    }


def format_table(record: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| sampler | guidance | steps | images/s | TSTR % (real: {100 * record['real_tstr_accuracy']:.2f}) "
        "| recognised % | Fréchet | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheduler']} | {r['guidance']:g} | {r['steps']} | {r['images_per_second']:.1f} | "
            f"{100 * r['tstr_accuracy']:.2f} | {100 * r['recognised']:.1f} | {r['frechet']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run_sweep(
    base: Path,
    dataset: str,
    rows: list[SamplerRow],
    per_class: int,
    seed: int,
    epochs: int,
    out_dir: Path,
    compute: Compute,
) -> str:
    """Measure every row not measured yet with these settings; returns the table."""
    import torch

    from regl.data.datasets import load_split
    from regl.environment import describe
    from regl.generate.evaluate import reference_classifier
    from regl.generate.generator import Generator, base_fingerprint
    from regl.generate.prompts import template_for
    from regl.generate.tstr import draw_per_class, train_and_test

    split = load_split(dataset)
    settings = {
        "dataset": dataset,
        "base_fingerprint": base_fingerprint(base),
        "per_class": per_class,
        "seed": seed,
        "epochs": epochs,
        "compute": compute.describe(),
        "threads": torch.get_num_threads(),  # images/s of rows kept from another thread count would not compare
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    record_file = out_dir / SWEEP_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if record.get("settings") != settings:
        real = train_and_test(draw_per_class(split.public, per_class, seed), split.test, epochs, seed)
        record = {"settings": settings, "real_tstr_accuracy": real, "environment": describe()}
        write_json_atomically(record_file, record)

    @functools.cache
    def measuring_tools():
        """The generator and the reference classifier, made only when some row is not kept."""
        generator = Generator(base, split.test.class_names, template_for(dataset), compute=compute)
        generator.generate([0, 1], [0, 1], steps=2)  # warm-up: the first call's one-time costs stay out of row 1
        return generator, reference_classifier(dataset, seed)

    measured = []
    for i, row in enumerate(rows, 1):
        row_file = out_dir / f"{row.name}.json"
        kept = json.loads(row_file.read_text()) if row_file.is_file() else {}
        if kept.get("settings") == settings:
            print(f"[{i}/{len(rows)}] {row.name}: measured before, kept")
        else:
            print(f"[{i}/{len(rows)}] {row.name}: measuring")
            generator, classifier = measuring_tools()
            kept = {"settings": settings, **_measure_row(generator, dataset, row, per_class, seed, epochs, classifier)}
            write_json_atomically(row_file, kept)
        measured.append(kept)
        write_text_atomically(out_dir / "table.md", format_table(record, measured))
    return format_table(record, measured)
