"""`regl partition`: a label-skew partition's statistics and heatmap."""

from __future__ import annotations

import argparse
from pathlib import Path

from regl.cli.options import Command, add_experiment_options, partition_spec


def add_partition_command_options(parser: argparse.ArgumentParser) -> None:
    add_experiment_options(parser, ("data",))
    parser.add_argument("--out", default="", help="heatmap PNG path; empty: runs/partition-<name>.png")


def cmd_partition(args: argparse.Namespace) -> int:
    from regl.data.datasets import load_split
    from regl.data.partitions import partition_labels
    from regl.data.skew_stats import format_table, save_heatmap, skew_stats

    spec = partition_spec(args)
    private = load_split(args.dataset).private
    partition = partition_labels(spec, private.y, private.num_classes)
    stats = skew_stats(partition.client_indices, private.y, private.num_classes)
    print(format_table(stats, private.class_names))
    name = f"{Path(args.dataset).name}-{spec.describe()}-s{spec.seed}"
    out = Path(args.out or f"runs/partition-{name}.png")
    save_heatmap(stats, private.class_names, out, name)
    print(f"heatmap: {out}")
    if spec.domain != "none":
        _save_domain_samples(args.dataset, spec, out.with_name(out.stem + "-domains.png"))
    return 0


def _save_domain_samples(dataset: str, spec, path: Path) -> None:
    """One row of sample images per client, in its look; the look of each printed beside it."""
    import io

    import numpy as np
    from PIL import Image

    from regl.atomic import write_bytes_atomically
    from regl.data.domains import sample_row
    from regl.fl.experiment import ExperimentSettings, client_data, client_domain

    settings = ExperimentSettings(dataset=dataset, partition=spec, seed=spec.seed)
    rows = []
    for client in range(spec.num_clients):
        rows.append(sample_row(client_data(settings, client), 10))
        print(f"client {client}: {client_domain(settings, client).describe()}")
    image = Image.fromarray(np.concatenate(rows, axis=0))
    buffer = io.BytesIO()
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(buffer, format="PNG")
    write_bytes_atomically(path, buffer.getvalue())
    print(f"one sample row per client: {path}")


COMMANDS = (
    Command(
        "partition",
        "show a label-skew partition's statistics and save its heatmap",
        "Partition a dataset's private pool across clients; print per-client class counts, local "
        "imbalance γ_j, cosine similarity CS_j and global Γ; save a clients × classes heatmap PNG.",
        add_partition_command_options,
        cmd_partition,
    ),
)
