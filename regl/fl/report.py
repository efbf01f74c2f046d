"""What a training run leaves on disk: per-round JSON, a summary and an accuracy plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from regl import environment
from regl.atomic import write_bytes_atomically, write_json_atomically


class RunReport:
    """Collects one record per round and rewrites rounds.json after each."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.rounds: list[dict[str, Any]] = []
        (self.out_dir / "summary.json").unlink(missing_ok=True)  # a summary only ever describes a finished run
        write_json_atomically(self.out_dir / "config.json", {**config, "environment": environment.describe()})

    def add_round(self, record: dict[str, Any]) -> None:
        self.rounds.append(record)
        write_json_atomically(self.out_dir / "rounds.json", self.rounds)

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and accuracy.png; returns the summary."""
        final = self.rounds[-1] if self.rounds else {}
        summary = {
            "config": self.config,
            "rounds": len([r for r in self.rounds if r["round"] > 0]),
            "final_accuracy": final.get("accuracy"),
            "best_accuracy": max((r["accuracy"] for r in self.rounds), default=None),
            "final_auc": final.get("auc"),
            "final_minority_accuracy": final.get("minority_accuracy"),
            "final_per_class_accuracy": final.get("per_class_accuracy"),
            "final_personalized_accuracy": final.get("personalized_accuracy"),
            **({"final_in_domain_accuracy": final["in_domain_accuracy"]} if "in_domain_accuracy" in final else {}),
            **extra,
        }
        write_json_atomically(self.out_dir / "summary.json", summary)
        save_accuracy_plot(self.rounds, self.out_dir / "accuracy.png", self.config.get("name", ""))
        return summary


def save_accuracy_plot(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [100 * r["accuracy"] for r in rounds], marker="o", ms=3, label="global test accuracy")
    personal = [(r["round"], r["personalized_accuracy"]) for r in rounds if r.get("personalized_accuracy") is not None]
    if personal:
        ax.plot(
            [p[0] for p in personal],
            [100 * p[1] for p in personal],
            marker="s",
            ms=3,
            label="mean personalized accuracy",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomically(path, buffer.getvalue())
