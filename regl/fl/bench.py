"""`regl bench`: benchmark arms side by side — same model, rounds and seeds; only the fill changes.

Each arm is one `regl fl` (or `regl centralized`) run in a subprocess, so every arm starts
from a fresh Ray and a failed arm does not take the others down. The child's command line
is built from its settings by the same parser that reads it (`settings_to_argv`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from regl import environment
from regl.atomic import write_json_atomically, write_text_atomically
from regl.cli.options import settings_to_argv
from regl.errors import ReglError
from regl.fill.client import FillSettings
from regl.fl.settings import ExperimentSettings

SPECIAL_ARMS = ("iid", "centralized")


def arm_settings(settings: ExperimentSettings, arm: str, mix: str) -> ExperimentSettings:
    """`settings` as one arm runs them: a fill mode, `diffusion-base` (no LoRA), iid FedAvg or centralized.

    `mix` goes to the arms with as many sources as it has weights.
    """
    if arm == "iid":
        return replace(
            settings,
            partition=replace(settings.partition, kind="iid"),
            fill=replace(settings.fill, mode="none", mix=""),
        )
    if arm == "centralized":  # the pooled data, which `regl centralized` takes without fill options
        return replace(settings, fill=FillSettings())
    mode = arm.replace("diffusion-base", "diffusion")
    sources = len(mode.split("+"))
    fill = replace(
        settings.fill,
        mode=mode,
        lora=settings.fill.lora and "diffusion-base" not in arm,
        mix=mix if mix and len(mix.split(":")) == sources > 1 else "",
    )
    return replace(settings, fill=fill)


def check_arms(arms: list[str]) -> None:
    if not arms:
        raise ReglError("give at least one arm, e.g. --arms none,diffusion")
    for arm in arms:
        if arm not in SPECIAL_ARMS:
            FillSettings(mode=arm.replace("diffusion-base", "diffusion")).check()  # raises on unknown ones


def arm_argv(settings: ExperimentSettings, arm: str, cpus: int, verbose: bool) -> list[str]:
    """The `regl` command line of one arm's run."""
    if arm == "centralized":
        return settings_to_argv(settings, "centralized")
    return settings_to_argv(settings, "fl", cpus=cpus, verbose=verbose)


def run_arm(arm: str, settings: ExperimentSettings, argv: list[str]) -> dict:
    """Run one arm for one seed; returns its summary, or the error when it failed."""
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "regl.cli", *argv])
    summary_file = Path(settings.out_dir) / "summary.json"
    if code != 0 or not summary_file.exists():
        return {
            "arm": arm,
            "seed": settings.seed,
            "error": f"exit code {code}",
            "wall_seconds": time.perf_counter() - started,
        }
    summary = json.loads(summary_file.read_text())
    return {
        "arm": arm,
        "seed": settings.seed,
        "accuracy": summary["final_accuracy"],
        "minority_accuracy": summary.get("final_minority_accuracy"),
        "auc": summary.get("final_auc"),
        "personalized_accuracy": summary.get("final_personalized_accuracy"),
        "fill_seconds": (summary.get("time_split") or {}).get("fill_phase_wall_seconds", 0.0),
        "wall_seconds": time.perf_counter() - started,
    }


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = 100 * float(np.mean(values))
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {100 * float(np.std(values)):.2f}"


def format_table(rows: list[dict], arms: list[str]) -> str:
    """Markdown: one line per arm, mean ± std over seeds."""
    lines = [
        "| arm | accuracy % | minority-class acc. % | AUC % | personalized acc. % | fill s | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        done = [r for r in rows if r["arm"] == arm and "error" not in r]
        failed = [r for r in rows if r["arm"] == arm and "error" in r]
        if not done:
            lines.append(f"| {arm} | {'failed: ' + failed[0]['error'] if failed else 'not run yet'} | | | | | | |")
            continue
        lines.append(
            f"| {arm} | {_cell([r['accuracy'] for r in done])} | {_cell([r['minority_accuracy'] for r in done])} "
            f"| {_cell([r['auc'] for r in done])} | {_cell([r['personalized_accuracy'] for r in done])} "
            f"| {np.mean([r['fill_seconds'] for r in done]):.0f} | {np.mean([r['wall_seconds'] for r in done]):.0f} "
            f"| {','.join(str(r['seed']) for r in done)}{' (' + str(len(failed)) + ' failed)' if failed else ''} |"
        )
    return "\n".join(lines)


def run_arms(
    settings: ExperimentSettings, arms: list[str], seeds: list[int], mix: str, out_root: Path, cpus: int, verbose: bool
) -> str:
    """Run every arm for every seed; writes bench.json and table.md after each run; returns the table.

    bench.json holds this machine's environment (`regl.environment`) beside the runs: the
    same command gives the same figures only where that record matches.
    """
    if not seeds:
        raise ReglError("give at least one seed")
    check_arms(arms)
    runs = [(seed, arm) for seed in seeds for arm in arms]
    rows: list[dict] = []
    machine = environment.describe()
    for number, (seed, arm) in enumerate(runs, 1):
        seeded = replace(
            settings,
            seed=seed,
            partition=replace(settings.partition, seed=seed),
            out_dir=str(out_root / f"{arm}-s{seed}"),
        )
        child = arm_settings(seeded, arm, mix)
        argv = arm_argv(child, arm, cpus, verbose)
        print(f"\n[{number}/{len(runs)}] arm {arm}, seed {seed}: regl {' '.join(argv)}", flush=True)
        rows.append(run_arm(arm, child, argv))
        write_json_atomically(out_root / "bench.json", {"environment": machine, "runs": rows})
        write_text_atomically(out_root / "table.md", format_table(rows, arms) + "\n")
    return format_table(rows, arms)
