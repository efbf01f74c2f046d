"""What `regl bench` writes beside its runs: the table, every arm's accuracy curve, and real vs generated images.

Everything here is read from the cells' folders (and, for the grid, the clients' synthetic
stores), so a results folder can be redrawn without running anything again.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from regl.atomic import write_bytes_atomically

if TYPE_CHECKING:
    from regl.data.datasets import ImageDataset
    from regl.fl.bench_cell import Cell
    from regl.fl.settings import ExperimentSettings

GRID_PER_ROW = 8  # real and generated images per class in grid.png, at most
LOOK_CLIENTS = 3  # clients shown in looks.png: those of the last distinct looks (the strongest rotations)


def write_if_changed(path: Path, content: bytes) -> bool:
    """Write `content` atomically unless the file holds it already, so a bench with nothing to do changes no file."""
    if path.is_file() and path.read_bytes() == content:
        return False
    write_bytes_atomically(path, content)
    return True


def _cell(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean, std = scale * float(np.mean(values)), scale * float(np.std(values))
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


# Columns only some runs have: row key → (heading, scale, digits). Client domains (regl/fl/domain_fit.py),
# generated images that are near-copies of their generator's training images and real held-out images
# flagged by the same rule (regl/generate/near_copies.py), what the clients sent the server (traffic.json; runs
# older than it have none) and the federated generator's share of it, the Ratio Loss's monitor (its mean cosine to
# the true composition), DP (the run's ε).
OPTIONAL_COLUMNS = {
    "in_domain_accuracy": ("in-domain acc. %", 100.0, 2),
    "own_look": ("missing classes' images in own look %", 100.0, 2),
    "missing_recognised": ("missing classes' images recognised %", 100.0, 2),
    "generator_tstr": ("generator TSTR in look %", 100.0, 2),
    "near_copies": ("near-copies %", 100.0, 2),
    "near_copies_floor": ("held-out near-copies %", 100.0, 2),
    "sent_bytes": ("MB sent", 1e-6, 1),
    "generator_sent_bytes": ("of it the generator's MB", 1e-6, 1),
    "monitor_cosine": ("monitor cosine", 1.0, 4),
    "epsilon": ("ε (δ = 10⁻⁵)", 1.0, 2),
}


def format_table(rows: list[dict], arms: list[str]) -> str:
    """Markdown: one line per arm, mean ± std over seeds; OPTIONAL_COLUMNS that some run has are added."""
    extra = [key for key in OPTIONAL_COLUMNS if any(key in r for r in rows)]
    headings = "".join(f" {OPTIONAL_COLUMNS[key][0]} |" for key in extra)
    lines = [
        "| arm | accuracy % | minority-class acc. % | AUC % | personalized acc. % |"
        f"{headings} fill s | rounds s | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for arm in arms:
        done = [r for r in rows if r["arm"] == arm and "error" not in r]
        failed = [r for r in rows if r["arm"] == arm and "error" in r]
        if not done:
            empty = " |" * (7 + len(extra))
            lines.append(f"| {arm} | {'failed: ' + failed[0]['error'] if failed else 'not run yet'}{empty}")
            continue
        domain_cells = "".join(f" {_cell([r.get(key) for r in done], *OPTIONAL_COLUMNS[key][1:])} |" for key in extra)
        lines.append(
            f"| {arm} | {_cell([r['accuracy'] for r in done])} | {_cell([r['minority_accuracy'] for r in done])} "
            f"| {_cell([r['auc'] for r in done])} | {_cell([r['personalized_accuracy'] for r in done])} |{domain_cells}"
            f" {np.mean([r['fill_seconds'] for r in done]):.0f} | {np.mean([r['rounds_seconds'] for r in done]):.0f} "
            f"| {np.mean([r['wall_seconds'] for r in done]):.0f} "
            f"| {','.join(str(r['seed']) for r in done)}{' (' + str(len(failed)) + ' failed)' if failed else ''} |"
        )
    return "\n".join(lines)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_figures(out_root: Path, finished: list[Cell], arms: list[str], title: str) -> list[str]:
    """accuracy.png, looks.png (with client domains) and grid.png from the finished cells' folders.

    Returns one note per figure.
    A figure with nothing to show is removed, so the folder never keeps one from another bench.
    """
    notes = []
    accuracy = out_root / "accuracy.png"
    if finished:
        curves = {arm: [_read_json(c.folder / "rounds.json") for c in finished if c.arm == arm] for arm in arms}
        write_if_changed(accuracy, accuracy_plot_png({arm: runs for arm, runs in curves.items() if runs}, title))
        notes.append("accuracy.png: global test accuracy by round, mean over seeds (band: the seeds' min–max).")
    else:
        accuracy.unlink(missing_ok=True)
    notes.extend(write_looks_figure(out_root, finished))
    grid = out_root / "grid.png"
    diffused = sorted(
        (c for c in finished if "diffusion" in c.settings.fill.sources), key=lambda c: (arms.index(c.arm), c.seed)
    )
    if not diffused:
        grid.unlink(missing_ok=True)
        if any("diffusion" in arm for arm in arms):
            notes.append("no grid.png: no diffusion arm finished.")
        return notes
    cell = diffused[0]
    generated = stored_diffusion_images(cell.settings, _read_json(cell.folder / "summary.json")["fill"])
    if generated is None or not len(generated):
        grid.unlink(missing_ok=True)
        notes.append(
            f"no grid.png: arm {cell.arm}, seed {cell.seed} left no complete synthetic store with diffusion "
            f"images in {cell.settings.fill.store} (regl bench does not generate images)."
        )
        return notes
    from regl.fl.experiment import test_data

    left_out = save_class_grid(test_data(cell.settings), generated, grid)  # in the federation's look
    notes.append(
        f"grid.png: real test images as the run tests on them (left) and the diffusion images of arm {cell.arm}, "
        f"seed {cell.seed} "
        f"(its {cell.settings.partition.num_clients} clients' synthetic stores; right), one row per class"
        + (f"; classes without generated images left out: {', '.join(left_out)}." if left_out else ".")
    )
    return notes


# the generators looks.png compares, as their arms name them
LOOK_ARMS = {"diffusion-base": "base", "diffusion": "client LoRA", "diffusion-federated": "federated adapter"}


def write_looks_figure(out_root: Path, finished: list[Cell]) -> list[str]:
    """looks.png: for three clients in a look (their own or the federation's), their real images, then the base's,
    their LoRA's and the federated adapter's images of a class they lack (same image seeds), from the first seed
    with the base and another of those arms finished."""
    from regl.data.domains import distinct_looks
    from regl.fl.experiment import client_data

    path = out_root / "looks.png"
    spec = finished[0].settings.partition if finished else None
    seeds = sorted(
        {c.seed for c in finished if c.arm == "diffusion-base"}
        & {c.seed for c in finished if c.arm in LOOK_ARMS and c.arm != "diffusion-base"}
    )
    if spec is None or (spec.domain == "none" and spec.look == "none") or not seeds:
        path.unlink(missing_ok=True)
        return []
    cells = {arm: c for arm in LOOK_ARMS for c in finished if c.seed == seeds[0] and c.arm == arm}
    stored = {arm: stored_shards(c.settings, _read_json(c.folder / "summary.json")["fill"]) for arm, c in cells.items()}
    gone = [arm for arm, shards in stored.items() if shards is None]
    if gone:
        path.unlink(missing_ok=True)
        return [f"no looks.png: the diffusion stores of seed {seeds[0]}'s arm {', '.join(gone)} are gone."]
    settings = cells["diffusion-base"].settings
    if spec.domain == "none":
        shown_clients = [(client, f"the look {spec.look}") for client in range(min(LOOK_CLIENTS, spec.num_clients))]
    else:
        looks = distinct_looks(spec.domain, spec.num_clients, spec.seed)[-LOOK_CLIENTS:]
        shown_clients = [(domain.client, domain.describe()) for domain in looks]
    rows, legend = [], []
    for client, look in shown_clients:
        real = client_data(settings, client)
        images = [stored[arm][client].get("diffusion") for arm in cells]
        if any(generated is None for generated in images):
            continue
        lacked = [c for c in range(real.num_classes) if real.class_counts()[c] == 0 and (images[0].y == c).any()]
        if not lacked:
            continue
        held = np.flatnonzero(real.class_counts())
        mixed = np.concatenate([np.flatnonzero(real.y == c)[: max(GRID_PER_ROW // len(held), 1)] for c in held])
        rows.append([real.x[mixed[:GRID_PER_ROW]]] + [g.x[g.y == lacked[0]][:GRID_PER_ROW] for g in images])
        legend.append(f"client {client} ({look}; {real.class_names[lacked[0]]})")
    if not rows:
        path.unlink(missing_ok=True)
        return ["no looks.png: no client shown lacks a class."]
    from regl.generate.evaluate import image_rows_png

    write_if_changed(path, image_rows_png(rows))
    columns = ", ".join(f"the {LOOK_ARMS[arm]}'s (arm {arm})" for arm in cells)
    return [
        f"looks.png: seed {seeds[0]}, one row per client — {'; '.join(legend)}: its real training images, then "
        f"images of a class it lacks, with the same image seeds: {columns}."
    ]


def accuracy_plot_png(curves: dict[str, list[list[dict]]], title: str) -> bytes:
    """PNG of each arm's global accuracy by round (its runs' rounds.json): the mean over seeds, min–max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, runs in curves.items():
        rounds = sorted(set.intersection(*({r["round"] for r in run} for run in runs)))
        accuracy = np.array([[100 * {r["round"]: r["accuracy"] for r in run}[n] for n in rounds] for run in runs])
        label = f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        (line,) = ax.plot(rounds, accuracy.mean(axis=0), marker="o", ms=3, label=label)
        if len(runs) >= 2:
            ax.fill_between(rounds, accuracy.min(axis=0), accuracy.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("global test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def stored_shards(settings: ExperimentSettings, fill_summary: dict) -> list[dict[str, ImageDataset]] | None:
    """Each client's synthetic store shards after a run, by client id; None when a client's store is missing.

    Each store is found by its key, rebuilt from the run's settings and the fill target its
    summary recorded, exactly as the client looked it up. Under partial participation a client
    the run never sampled made no fill: its shards are empty. The partitioner's warnings were the
    run's own, and are in its log.
    """
    import warnings

    from regl.fill.settings import client_plan
    from regl.fill.store import SyntheticStore
    from regl.fl.experiment import client_data, client_fill

    target = None if fill_summary["target"] == "uniform" else np.asarray(fill_summary["target"])
    filled = {client["client"] for client in fill_summary.get("clients", [])}
    stored = []
    for client_id in range(settings.partition.num_clients):
        if settings.clients_per_round and client_id not in filled:
            stored.append({})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = client_data(settings, client_id)
        fill = client_fill(settings, client_id, fill_summary.get("adapter_digest", ""))
        key = fill.store_key(client_plan(settings.fill, data.class_counts(), target))
        shards = SyntheticStore(fill.store_folder(key)).load_shards(key)
        if shards is None:
            return None
        stored.append(shards)
    return stored


def stored_diffusion_images(settings: ExperimentSettings, fill_summary: dict) -> ImageDataset | None:
    """The diffusion images a run's clients keep in their synthetic stores; None when a client's store is missing."""
    from regl.data.datasets import ImageDataset

    stored = stored_shards(settings, fill_summary)
    diffused = [shards["diffusion"] for shards in stored or [] if "diffusion" in shards]
    if not diffused:
        return None
    return ImageDataset(
        np.concatenate([d.x for d in diffused]), np.concatenate([d.y for d in diffused]), diffused[0].class_names
    )


def save_class_grid(real: ImageDataset, generated: ImageDataset, path: Path) -> list[str]:
    """The class grid (`save_grid`) over the classes that have generated images; returns the names of the others.

    A row holds as many images as the class with the fewest generated ones has, up to GRID_PER_ROW.
    """
    from regl.data.datasets import ImageDataset
    from regl.generate.evaluate import class_grid_png

    counts = generated.class_counts()
    shown = np.flatnonzero(counts)
    names = tuple(real.class_names[c] for c in shown)

    def shown_only(data: ImageDataset) -> ImageDataset:
        keep = np.isin(data.y, shown)
        return ImageDataset(data.x[keep], np.searchsorted(shown, data.y[keep]), names)

    per_row = int(min(GRID_PER_ROW, counts[shown].min(), real.class_counts()[shown].min()))
    write_if_changed(path, class_grid_png(shown_only(real), shown_only(generated), per_row))
    return [real.class_names[c] for c in np.flatnonzero(counts == 0)]
