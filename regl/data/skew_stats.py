"""How skewed a partition is: per-client histograms, local and global imbalance, similarity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SkewStats:
    histogram: np.ndarray  # clients × classes sample counts
    local_imbalance: np.ndarray  # γ_j = max/min class count of client j (inf if a class is missing)
    global_imbalance: float  # Γ = max/min class count over the union of clients
    cosine_similarity: np.ndarray  # CS_j between client j's and the global class composition
    unassigned: int  # samples of the pool that no client holds


def imbalance_ratio(counts: np.ndarray) -> float:
    """max/min of the counts; infinite when some class has none."""
    counts = np.asarray(counts, dtype=np.float64)
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


def skew_stats(client_indices: list[np.ndarray], labels: np.ndarray, num_classes: int) -> SkewStats:
    histogram = np.stack([np.bincount(labels[idx], minlength=num_classes) for idx in client_indices])
    total = histogram.sum(axis=0)
    norms = np.linalg.norm(histogram, axis=1) * np.linalg.norm(total)
    cosine = np.divide(histogram @ total, norms, out=np.zeros(len(histogram)), where=norms > 0)
    return SkewStats(
        histogram=histogram,
        local_imbalance=np.array([imbalance_ratio(h) for h in histogram]),
        global_imbalance=imbalance_ratio(total),
        cosine_similarity=cosine,
        unassigned=int(len(labels) - histogram.sum()),
    )


def format_table(stats: SkewStats, class_names: tuple[str, ...]) -> str:
    """A fixed-width table: one row per client, then the global row."""
    width = max(6, *(len(name) for name in class_names))
    header = ["client".rjust(6)] + [name[:width].rjust(width) for name in class_names]
    header += ["total".rjust(7), "γ_j".rjust(7), "CS_j".rjust(6)]
    lines = [" ".join(header)]
    for j, row in enumerate(stats.histogram):
        cells = [str(j).rjust(6)] + [str(c).rjust(width) for c in row]
        cells += [str(row.sum()).rjust(7), f"{stats.local_imbalance[j]:7.1f}", f"{stats.cosine_similarity[j]:6.3f}"]
        lines.append(" ".join(cells))
    total = stats.histogram.sum(axis=0)
    cells = ["all".rjust(6)] + [str(c).rjust(width) for c in total]
    cells += [str(total.sum()).rjust(7), f"{stats.global_imbalance:7.1f}", "1.000".rjust(6)]
    lines.append(" ".join(cells))
    lines.append(f"global imbalance Γ = {stats.global_imbalance:.1f}; unassigned samples: {stats.unassigned}")
    return "\n".join(lines)


def save_heatmap(stats: SkewStats, class_names: tuple[str, ...], path: Path, title: str) -> None:
    """Clients × classes sample counts as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = stats.histogram
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(class_names), 1 + 0.4 * len(counts)))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(counts)), [str(j) for j in range(len(counts))])
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="samples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
