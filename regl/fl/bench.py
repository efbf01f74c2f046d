"""`regl bench`: benchmark arms side by side — same model, rounds and seeds; only the fill changes.

Each arm is one `regl fl` (or `regl centralized`) run in a subprocess, so every arm starts
from a fresh Ray and a failed arm does not take the others down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from regl.errors import ReglError
from regl.atomic import write_json_atomically, write_text_atomically

SPECIAL_ARMS = ("iid", "centralized")


def arm_options(arm: str, mix: str) -> list[str]:
    """`regl fl` options of an arm: a fill mode, `diffusion-base` (no LoRA), or iid FedAvg.

    `mix` goes to the arms with as many sources as it has weights.
    """
    if arm == "iid":
        return ["--partition", "iid", "--fill", "none"]
    mode = arm.replace("diffusion-base", "diffusion")
    options = ["--fill", mode]
    if "diffusion-base" in arm:
        options.append("--fill-no-lora")
    if mix and len(mix.split(":")) == len(mode.split("+")) > 1:
        options += ["--fill-mix", mix]
    return options


def check_arms(arms: list[str]) -> None:
    from regl.fill.client import FillSettings

    if not arms:
        raise ReglError("give at least one arm, e.g. --arms none,diffusion")
    for arm in arms:
        if arm not in SPECIAL_ARMS:
            FillSettings(mode=arm.replace("diffusion-base", "diffusion")).sources  # raises on unknown ones


def run_arm(arm: str, seed: int, common: list[str], fill: list[str], out_dir: Path, mix: str = "") -> dict:
    """Run one arm for one seed; returns its summary, or the error when it failed."""
    if arm == "centralized":
        argv = ["centralized", *common]
    else:
        argv = ["fl", *common, *fill, *arm_options(arm, mix)]
    argv += ["--seed", str(seed), "--out-dir", str(out_dir)]
    started = time.perf_counter()
    print(f"\n=== {arm} (seed {seed}): regl {' '.join(argv)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "regl.cli", *argv])
    summary_file = out_dir / "summary.json"
    if code != 0 or not summary_file.exists():
        return {"arm": arm, "seed": seed, "error": f"exit code {code}", "wall_seconds": time.perf_counter() - started}
    summary = json.loads(summary_file.read_text())
    return {
        "arm": arm, "seed": seed,
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
    lines = ["| arm | accuracy % | minority-class acc. % | AUC % | personalized acc. % | fill s | wall s | seeds |",
             "|---|---|---|---|---|---|---|---|"]
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


def run_bench(arms: list[str], seeds: list[int], common: list[str], fill: list[str], out_root: Path,
              mix: str = "") -> str:
    """Run every arm for every seed; writes bench.json and table.md after each run; returns the table."""
    if not seeds:
        raise ReglError("give at least one seed")
    check_arms(arms)
    rows: list[dict] = []
    for seed in seeds:
        for arm in arms:
            rows.append(run_arm(arm, seed, common, fill, out_root / f"{arm}-s{seed}", mix))
            write_json_atomically(out_root / "bench.json", rows)
            write_text_atomically(out_root / "table.md", format_table(rows, arms) + "\n")
    return format_table(rows, arms)
