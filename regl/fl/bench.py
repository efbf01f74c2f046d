"""`regl bench`: benchmark arms side by side — same model, rounds and seeds; only the fill changes.

Each cell (arm × seed) is one `regl fl` (or `regl centralized`) run in a subprocess, so every
cell starts from a fresh Ray and a failed one does not take the others down. The child reads
its settings from the run-config file the bench writes into its folder (`--config`).

A bench resumes: a cell whose folder holds a finished run of exactly its settings is skipped
and its row read back from that folder, so rows are always a function of the cell folders
and rerunning a finished bench only rewrites what changed (nothing).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from regl.atomic import write_json_atomically
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.fl.bench_cell import Cell
from regl.fl.bench_report import format_table, write_figures, write_if_changed
from regl.fl.settings import ExperimentSettings
from regl.seeds import SEED_DERIVATION
from regl.stopping import call

if TYPE_CHECKING:
    from regl.generate.near_copies import NearCopyScores

SPECIAL_ARMS = ("iid", "centralized")
# Arm parts that draw the diffusion fill with another generator than the bench's --fill-lora.
GENERATOR_PARTS = {
    "diffusion-base": "none",
    "diffusion-client": "client",
    "diffusion-federated": "federated",
    "diffusion-federated-local": "federated+local",
}
# What `regl centralized` takes of a bench's settings: the data, model and training, no fill or methods.
CENTRALIZED_FIELDS = ("dataset", "partition", "model", "num_rounds", "train", "seed", "out_dir")
# What bench measured of a cell's run (its wall time, Ray start included) and the run's command line.
CELL_RECORD = "bench-cell.json"
# The settings a cell's child runs with, as Flower's flat run config.
RUN_CONFIG = "run-config.json"
# A generating arm's fill images alone, trained on and tested on the run's test set (in the federation's look).
GENERATOR_TSTR = "generator-tstr.json"
TSTR_PER_CLASS = 100
TSTR_EPOCHS = 10
# With client domains: how the generated images of a cell's missing classes fit the clients' looks.
DOMAIN_FIT = "domain-fit.json"
# A generating arm's fill images that are near-copies of the images their generator was trained on.
NEAR_COPIES = "near-copies.json"
NEAR_COPY_REFERENCE = 5000  # held-out real images scored against every client's images, at most
# The federation's data, which every arm of a bench shares (with the partition-* keys).
DATA_KEYS = ("dataset", "classes", "test-data")
# Where a run keeps things, not what it computes: a moved results folder still counts as finished.
LOCATION_KEYS = ("out-dir", "fill-store")
# What only a run with the federation's adapter reads.
ADAPTER_KEYS = (
    "fill-adapter-rounds",
    "fill-adapter-steps",
    "fill-adapter-rule",
    "fill-adapter-dp-noise",
    "fill-adapter-dp-clip",
)
# What only a run that samples the diffusion model reads (the diffusion fill, the warm start): a run
# without either is the same cell whatever they are, so a new sampling default reruns only those that sample.
SAMPLING_KEYS = (
    "fill-lora",
    "fill-lora-steps",
    "fill-prior-per-class",
    "fill-lora-style-token",
    "fill-lora-rank",
    "fill-lora-targets",
    "fill-lora-lr",
    "fill-lora-early-stop",
    "fill-lora-cfg-dropout",
    *ADAPTER_KEYS,
    "fill-steps",
    "fill-guidance",
    "fill-base",
    "fill-device",
    "fill-dtype",
)


# Arm parts that are not fill sources: a method, alone or '+'-joined with a fill (diffusion+focal+fedprox).
STRATEGY_PARTS = ("fedprox", "fedavgm", "fedadam")
OTHER_PARTS = ("balanced-aggregation", "augment", "init-public", "init-synthetic")
DP_PART = re.compile(r"dp(\d+(\.\d+)?)")  # dp<z>: client-level DP at noise multiplier z
INIT_PART_PER_CLASS = 1000  # the warm start of an init-* part, when the bench gives no --warm-start-per-class


def is_method_part(part: str) -> bool:
    from regl.train.settings import LOSSES

    return (
        part in LOSSES
        or part in STRATEGY_PARTS
        or part in OTHER_PARTS
        or DP_PART.fullmatch(part) is not None
        or "=" in part
    )


def with_setting(settings: ExperimentSettings, part: str) -> ExperimentSettings:
    """`settings` with one run-config key set by an arm part KEY=VALUE (fill-lora-rank=16): a sweep of a setting
    is arms of one bench, each cell keyed by its own settings."""
    from regl.options import cast, config_fields

    key, value = part.split("=", 1)
    known = {cf.key: cf for cf in config_fields(ExperimentSettings)}
    if key not in known or key in LOCATION_KEYS or key == "seed":
        raise ReglError(f"arm part {part!r}: {key!r} is not a run setting an arm can set (see regl fl --help)")
    if key in DATA_KEYS or key.startswith("partition-"):  # the bench's audits keep its clients' images per seed
        raise ReglError(f"arm part {part!r}: the arms of a bench share one federation's data; give {key} to the bench")
    return ExperimentSettings.from_config({**settings.to_config(), key: cast(known[key], value)})


def with_method(settings: ExperimentSettings, part: str) -> ExperimentSettings:
    """`settings` with one method part of an arm switched on."""
    if "=" in part:
        return with_setting(settings, part)
    if part in STRATEGY_PARTS:
        return replace(settings, strategy=part)
    if part == "balanced-aggregation":
        return replace(settings, aggregate_weight="class-balanced")
    if part == "augment":
        return replace(settings, augment=True)
    if part.startswith("init-"):
        return replace(
            settings,
            init=part.removeprefix("init-"),
            warm_start_per_class=settings.warm_start_per_class or INIT_PART_PER_CLASS,
        )
    if match := DP_PART.fullmatch(part):
        if not float(match.group(1)) > 0:
            raise ReglError(f"arm part {part!r}: the DP noise multiplier must be > 0 (no dp part means no DP)")
        return replace(settings, dp_noise=float(match.group(1)))
    return replace(settings, loss=part)


def arm_settings(settings: ExperimentSettings, arm: str, mix: str) -> ExperimentSettings:
    """`settings` as one arm runs them: a fill mode, `diffusion-base` (no LoRA), methods, iid FedAvg or centralized.

    An arm is '+'-joined parts: fill sources (none if there are none), methods (a --loss,
    a --strategy, balanced-aggregation, augment, init-public, init-synthetic, dp<z>) and settings
    (KEY=VALUE, a run-config key: fill-lora-rank=16). `mix`
    goes to the arms with as many fill sources as it has weights.
    """
    if arm == "iid":
        return replace(
            settings,
            partition=replace(settings.partition, kind="iid"),
            fill=replace(settings.fill, mode="none", mix=""),
        )
    if arm == "centralized":  # the pooled data, which `regl centralized` takes without fill or method options
        defaults = ExperimentSettings()
        return replace(
            defaults,
            **{f.name: getattr(settings, f.name) for f in fields(ExperimentSettings) if f.name in CENTRALIZED_FIELDS},
        )
    parts = arm.split("+")
    for part in filter(is_method_part, parts):
        settings = with_method(settings, part)
    fill_parts = [part for part in parts if not is_method_part(part)]
    mode = fill_mode(fill_parts)
    sources = len(mode.split("+"))
    lora = next((GENERATOR_PARTS[part] for part in fill_parts if part in GENERATOR_PARTS), settings.fill.lora)
    fill = replace(settings.fill, mode=mode, lora=lora, mix=mix if mix and len(mix.split(":")) == sources > 1 else "")
    return replace(settings, fill=fill)


def fill_mode(fill_parts: list[str]) -> str:
    """An arm's fill mode: its fill parts, a generator arm (diffusion-base, …) counted as diffusion."""
    return "+".join("diffusion" if part in GENERATOR_PARTS else part for part in fill_parts) or "none"


def check_arms(arms: list[str], settings: ExperimentSettings | None = None, mix: str = "") -> None:
    """Unknown arm parts raise; with the bench's `settings`, so does an arm whose methods cannot combine."""
    if not arms:
        raise ReglError("give at least one arm, e.g. --arms none,diffusion")
    for arm in arms:
        if arm in SPECIAL_ARMS:
            continue
        fill_parts = [part for part in arm.split("+") if not is_method_part(part)]
        if sum(part in GENERATOR_PARTS or part == "diffusion" for part in fill_parts) > 1:
            raise ReglError(f"arm {arm}: one diffusion part at most (diffusion, {', '.join(GENERATOR_PARTS)})")
        FillSettings(mode=fill_mode(fill_parts)).check()  # raises on unknown parts
        if settings is not None:
            try:
                arm_settings(settings, arm, mix).check()
            except ReglError as error:
                raise ReglError(f"arm {arm}: {error}") from None


def arm_argv(settings: ExperimentSettings, arm: str, cpus: int, verbose: bool) -> list[str]:
    """The `regl` command line of one arm's run: its settings are the run-config file in its folder."""
    config = str(Path(settings.out_dir) / RUN_CONFIG)
    if arm == "centralized":
        return ["centralized", "--config", config]
    return ["fl", "--config", config, "--cpus", str(cpus), *(["--verbose"] if verbose else [])]


def bench_cells(
    settings: ExperimentSettings, arms: list[str], seeds: list[int], mix: str, out_root: Path, cpus: int, verbose: bool
) -> list[Cell]:
    """Every arm for every seed, seed by seed; each cell's run goes to OUT_ROOT/<arm>-s<seed>."""
    cells = []
    for seed in seeds:
        for arm in arms:
            seeded = replace(
                settings,
                seed=seed,
                partition=replace(settings.partition, seed=seed),
                out_dir=str(out_root / f"{arm}-s{seed}"),
            )
            child = arm_settings(seeded, arm, mix)
            cells.append(Cell(arm, seed, child, tuple(arm_argv(child, arm, cpus, verbose))))
    return cells


def unread_keys(settings: ExperimentSettings) -> tuple[str, ...]:
    """Settings the run never reads: a new default for them leaves its cell finished."""
    unread = () if settings.warm_start_per_class else ("warm-start-epochs", "init", "init-freeze")
    if settings.strategy != "fedprox":
        unread += ("fedprox-mu",)
    if not settings.dp_noise:
        unread += ("dp-clip", "dp-clipping")
    if not settings.fill.lora.startswith("federated"):
        unread += ADAPTER_KEYS
    synthetic_start = settings.warm_start_per_class > 0 and settings.init == "synthetic"
    samples = bool({"diffusion", "oracle"} & set(settings.fill.sources)) or synthetic_start
    return unread if samples else unread + SAMPLING_KEYS


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def why_unfinished(cell: Cell) -> str:
    """Why the cell's folder holds no finished run of its settings; empty when it does.

    Only the settings the run reads count (config.json without its environment,
    LOCATION_KEYS and `unread_keys`): a run on another machine or with other --cpus is the
    same cell. A setting the run predates counts as its default: a new setting's default
    is what ran before it existed.
    """
    if not cell.folder.exists():
        return "new"
    if not (cell.folder / "summary.json").is_file():
        return "no summary.json: interrupted or failed"
    if not (cell.folder / "config.json").is_file():
        return "no config.json"
    expected = json.loads(json.dumps(cell.settings.to_config()))  # as it reads back from config.json
    # read back as settings, so a value an older run wrote (fill-lora true) counts as what it means now
    recorded = ExperimentSettings.from_config(_read_json(cell.folder / "config.json")).to_config()
    ignored = LOCATION_KEYS + unread_keys(cell.settings)
    differing = [key for key in expected if key not in ignored and recorded.get(key) != expected[key]]
    if differing:
        changes = ", ".join(
            f"{key} {repr(recorded[key]) if key in recorded else '(not recorded)'} → {expected[key]!r}"
            for key in differing
        )
        return f"its summary.json is for other settings: {changes}"
    derivation = _read_json(cell.folder / "config.json").get("environment", {}).get("seed_derivation", 1)
    if derivation != SEED_DERIVATION:
        return f"its run drew its seeds with derivation {derivation}, this one with {SEED_DERIVATION}"
    if not (cell.folder / CELL_RECORD).is_file():
        return f"no {CELL_RECORD}: bench stopped before recording the run"
    return ""


def finished_row(cell: Cell) -> dict[str, Any]:
    """The cell's table row, read from its folder; `environment` is what its run recorded."""
    summary = _read_json(cell.folder / "summary.json")
    in_domain = summary.get("final_in_domain_accuracy")
    fit = _read_json(cell.folder / DOMAIN_FIT) if (cell.folder / DOMAIN_FIT).is_file() else {}
    tstr = _read_json(cell.folder / GENERATOR_TSTR) if (cell.folder / GENERATOR_TSTR).is_file() else {}
    copies = _read_json(cell.folder / NEAR_COPIES) if (cell.folder / NEAR_COPIES).is_file() else {}
    audited = next((copies[source] for source in ("diffusion", "oracle") if source in copies), None)
    return {
        "arm": cell.arm,
        "seed": cell.seed,
        "accuracy": summary["final_accuracy"],
        "minority_accuracy": summary.get("final_minority_accuracy"),
        "auc": summary.get("final_auc"),
        "personalized_accuracy": summary.get("final_personalized_accuracy"),
        **({} if in_domain is None else {"in_domain_accuracy": in_domain}),
        **({"own_look": fit["own_look"], "missing_recognised": fit["recognised"]} if fit else {}),
        **({"generator_tstr": tstr["accuracy"]} if tstr else {}),
        **({"near_copies": audited["flagged"], "near_copies_floor": audited["reference_flagged"]} if audited else {}),
        **({"monitor_cosine": summary["monitor_mean_cosine"]} if "monitor_mean_cosine" in summary else {}),
        **({"epsilon": summary["privacy"]["epsilon"]} if "privacy" in summary else {}),
        **_sent(cell.folder / "traffic.json"),
        "fill_seconds": (summary.get("time_split") or {}).get("fill_phase_wall_seconds", 0.0),
        "rounds_seconds": (summary.get("time_split") or {}).get("rounds_wall_seconds", 0.0),
        "wall_seconds": _read_json(cell.folder / CELL_RECORD)["wall_seconds"],
        "environment": _read_json(cell.folder / "config.json")["environment"],
    }


def _sent(traffic: Path) -> dict[str, float]:
    """What the clients sent the server in the run (traffic.json: every record of every reply), in bytes:
    in all and for the federated generator's adapter rounds."""
    if not traffic.is_file():
        return {}
    entries = _read_json(traffic)
    return {
        "sent_bytes": float(sum(e["bytes"] for e in entries)),
        "generator_sent_bytes": float(sum(e["bytes"] for e in entries if e["action"] == "adapter_round")),
    }


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run the cell's child; returns its row, or the error when it failed."""
    (cell.folder / CELL_RECORD).unlink(missing_ok=True)
    (cell.folder / DOMAIN_FIT).unlink(missing_ok=True)
    (cell.folder / GENERATOR_TSTR).unlink(missing_ok=True)
    (cell.folder / NEAR_COPIES).unlink(missing_ok=True)
    cell.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(cell.folder / RUN_CONFIG, cell.settings.to_config())
    started = time.perf_counter()
    code = call([sys.executable, "-m", "regl.cli", *cell.argv])  # stopped, the bench stops the child too
    wall = time.perf_counter() - started
    if code != 0 or not (cell.folder / "summary.json").exists():
        return {"arm": cell.arm, "seed": cell.seed, "error": f"exit code {code}", "wall_seconds": wall}
    write_json_atomically(cell.folder / CELL_RECORD, {"wall_seconds": wall, "command": cell.command})
    return finished_row(cell)


def add_generator_tstr(cells: list[Cell]) -> None:
    """GENERATOR_TSTR in each finished cell folder whose fill holds generated images; made once.

    The generator's side of an arm: a classifier trained on the fill's generated images alone
    (every client's, up to TSTR_PER_CLASS of each class), tested on the run's global test set,
    so in the federation's look (its shared look, or each client's domain in turn).
    """
    from regl.data.datasets import ImageDataset
    from regl.fl.bench_report import stored_shards
    from regl.fl.experiment import test_data
    from regl.generate.generated_sets import first_per_class
    from regl.generate.tstr import train_and_test

    for cell in cells:
        sources = [s for s in ("diffusion", "oracle") if s in cell.settings.fill.sources]
        if not sources or (cell.folder / GENERATOR_TSTR).is_file():
            continue
        stored = stored_shards(cell.settings, _read_json(cell.folder / "summary.json")["fill"])
        if stored is None:
            print(f"arm {cell.arm}, seed {cell.seed}: no complete synthetic stores, so no generator TSTR", flush=True)
            continue
        shards = [shards[source] for shards in stored for source in sources if source in shards]
        if not shards:
            print(f"arm {cell.arm}, seed {cell.seed}: its fill holds no generated images, so no generator TSTR")
            continue
        images = ImageDataset(
            np.concatenate([s.x for s in shards]), np.concatenate([s.y for s in shards]), shards[0].class_names
        )
        counts = images.class_counts()
        per_class = int(min(TSTR_PER_CLASS, counts.min()))
        if per_class < 1:
            print(f"arm {cell.arm}, seed {cell.seed}: its fill lacks a class, so no generator TSTR", flush=True)
            continue
        accuracy = train_and_test(first_per_class(images, per_class), test_data(cell.settings), TSTR_EPOCHS, cell.seed)
        record = {"accuracy": accuracy, "per_class": per_class, "epochs": TSTR_EPOCHS, "sources": sources}
        write_json_atomically(cell.folder / GENERATOR_TSTR, record)


def _generator_name(settings: ExperimentSettings, source: str) -> str:
    """Who drew a fill source's images, as near-copies.json says it."""
    if source == "oracle":
        return "the base, shown in the true look (never saw a client's images: the control)"
    return {
        "none": "the base (never saw a client's images: the control)",
        "client": "each client's LoRA",
        "federated": "the federation's adapter",
        "federated+local": "the federation's adapter, then each client's local steps",
    }[settings.fill.lora]


def _trained_on(
    settings: ExperimentSettings, clients: tuple[int, ...], kept: dict
) -> tuple[np.ndarray, NearCopyScores]:
    """The images of `clients` and their held-out reference (the clients' in-domain test sets, in their looks,
    NEAR_COPY_REFERENCE at most) scored against them; `kept` holds them for the bench's other cells of the seed."""
    from regl.fl.experiment import client_data, in_domain_test_set
    from regl.generate.near_copies import near_copy_scores

    key = (settings.seed, clients)
    if key not in kept:
        held_out = [in_domain_test_set(settings, client).x for client in clients]
        step = -(-sum(map(len, held_out)) // NEAR_COPY_REFERENCE)
        training = np.concatenate([client_data(settings, client).x for client in clients])
        kept[key] = training, near_copy_scores(np.concatenate([x[::step] for x in held_out]), training)
    return kept[key]


def add_near_copies(cells: list[Cell]) -> None:
    """NEAR_COPIES in each finished cell folder whose fill holds generated images; made once.

    Each source's images are scored (regl/generate/near_copies.py) against the images of the clients
    whose data trained their generator: a client's LoRA's against its own client's images; the
    federation's adapter's, and the base's, against every client's (the base never saw them, so its
    fraction is the criterion's floor on generated images). Held-out test images in the clients'
    looks are scored against the same images: the floor on real ones.
    """
    from regl.fl.bench_report import stored_shards
    from regl.generate.near_copies import NearCopyScores, audit_record, near_copy_scores

    kept: dict = {}
    for cell in cells:
        settings = cell.settings
        sources = [s for s in ("diffusion", "oracle") if s in settings.fill.sources]
        if not sources or (cell.folder / NEAR_COPIES).is_file():
            continue
        stored = stored_shards(settings, _read_json(cell.folder / "summary.json")["fill"])
        if stored is None:
            print(f"arm {cell.arm}, seed {cell.seed}: no complete synthetic stores, so no near-copy audit", flush=True)
            continue
        record = {}
        for source in sources:
            generated = {client: shards[source].x for client, shards in enumerate(stored) if source in shards}
            if not generated:
                continue
            if source == "diffusion" and settings.fill.lora == "client":
                groups, against = [((client,), x) for client, x in generated.items()], "each client's own images"
            else:
                everyone = tuple(range(settings.partition.num_clients))
                groups, against = [(everyone, np.concatenate(list(generated.values())))], "every client's images"
            print(f"arm {cell.arm}, seed {cell.seed}: near-copy audit of the {source} images", flush=True)
            scored, reference = [], []
            for clients, images in groups:
                training, held_out = _trained_on(settings, clients, kept)
                scored.append(near_copy_scores(images, training))
                reference.append(held_out)
            audit = audit_record(NearCopyScores.pooled(scored), NearCopyScores.pooled(reference))
            record[source] = {"generator": _generator_name(settings, source), "against": against, **audit}
        if record:
            write_json_atomically(cell.folder / NEAR_COPIES, record)


def add_domain_fits(cells: list[Cell]) -> None:
    """DOMAIN_FIT in each finished cell folder whose clients have a look and generated images; made once."""
    from regl.fl.bench_report import stored_shards
    from regl.fl.domain_fit import GENERATED_SOURCES, missing_class_fit, train_judges

    judges = {}
    for cell in cells:
        settings = cell.settings
        generates = set(GENERATED_SOURCES) & set(settings.fill.sources)
        if settings.partition.domain == "none" or not generates or (cell.folder / DOMAIN_FIT).is_file():
            continue
        stored = stored_shards(settings, _read_json(cell.folder / "summary.json")["fill"])
        if stored is None:
            print(f"arm {cell.arm}, seed {cell.seed}: no complete synthetic stores, so no domain fit", flush=True)
            continue
        if settings.seed not in judges:
            print(f"training the look and class judges for seed {settings.seed}", flush=True)
            judges[settings.seed] = train_judges(settings)
        fit = missing_class_fit(settings, stored, judges[settings.seed])
        if fit is not None:
            write_json_atomically(cell.folder / DOMAIN_FIT, fit)


def bench_record(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """bench.json: the distinct environments the runs recorded, and the rows, each naming its environment by index.

    Cells resumed from an earlier bench may have run on another machine; a failed row has none.
    """
    environments: list[dict] = []
    runs = []
    for row in rows:
        if "environment" in row:
            if row["environment"] not in environments:
                environments.append(row["environment"])
            row = {**row, "environment": environments.index(row["environment"])}
        runs.append(row)
    return {"environment": environments, "runs": runs}


def write_tables(out_root: Path, rows: list[dict[str, Any]], arms: list[str], notes: list[str]) -> str:
    """bench.json and table.md (the table, then `notes`); returns the table."""
    table = format_table(rows, arms)
    write_if_changed(out_root / "bench.json", json.dumps(bench_record(rows), indent=2).encode())
    write_if_changed(out_root / "table.md", "\n\n".join([table, *notes]).encode() + b"\n")
    return table


def run_arms(
    settings: ExperimentSettings,
    arms: list[str],
    seeds: list[int],
    mix: str,
    out_root: Path,
    cpus: int,
    verbose: bool,
    command: str,
) -> str:
    """Run every cell not finished before and write the results folder; returns the table.

    OUT_ROOT gets command.txt (`command`, the `regl bench` line that wrote it), bench.json
    and table.md (rewritten after each run), accuracy.png and, when an arm used diffusion,
    grid.png; the cells' runs stay in OUT_ROOT/<arm>-s<seed>. Files are rewritten only when
    their content changes.
    """
    if not seeds:
        raise ReglError("give at least one seed")
    check_arms(arms)
    out_root.mkdir(parents=True, exist_ok=True)
    write_if_changed(out_root / "command.txt", f"{command}\n".encode())
    cells = bench_cells(settings, arms, seeds, mix, out_root, cpus, verbose)
    reasons = [why_unfinished(cell) for cell in cells]
    rows = {number: finished_row(cell) for number, (cell, reason) in enumerate(zip(cells, reasons)) if not reason}
    for number, (cell, reason) in enumerate(zip(cells, reasons)):
        head = f"[{number + 1}/{len(cells)}] arm {cell.arm}, seed {cell.seed}"
        if not reason:
            print(f"{head}: skipped, finished in {cell.folder}", flush=True)
            continue
        print(f"\n{head}: running ({reason}): {cell.command}", flush=True)
        rows[number] = run_cell(cell)
        write_tables(out_root, [rows[n] for n in sorted(rows)], arms, [])
    finished = [cell for number, cell in enumerate(cells) if "error" not in rows[number]]
    add_domain_fits(finished)
    add_generator_tstr(finished)
    add_near_copies(finished)
    rows = {number: row if "error" in row else finished_row(cells[number]) for number, row in rows.items()}
    ordered = [rows[n] for n in sorted(rows)]
    title = f"{settings.dataset}, {settings.partition.describe()}, seeds {','.join(map(str, seeds))}"
    notes = write_figures(out_root, finished, arms, title)
    for note in notes:
        print(note)
    print(f"ran {sum(bool(r) for r in reasons)} of {len(cells)} cells, skipped {reasons.count('')}")
    return write_tables(out_root, ordered, arms, notes)
