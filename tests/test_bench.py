"""`regl bench` resumes from its cell folders and writes a results folder that can be redrawn from them."""

import json
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from regl.atomic import write_json_atomically
from regl.data.datasets import ImageDataset
from regl.fill.settings import FillSettings
from regl.fl.bench import (
    CELL_RECORD,
    NEAR_COPIES,
    add_near_copies,
    bench_cells,
    bench_record,
    finished_row,
    why_unfinished,
)
from regl.fl.bench_report import format_table, save_class_grid, write_figures
from regl.fl.report import RunReport
from regl.fl.settings import ExperimentSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def finished_run(folder: Path, settings: ExperimentSettings, accuracies: list[float], fill: dict | None = None) -> None:
    """What a finished child leaves, written by the run's own RunReport, plus bench's record of it."""
    report = RunReport(folder, {"name": settings.name, "mode": "federated", **settings.to_config()})
    for number, accuracy in enumerate(accuracies):
        report.add_round({"round": number, "accuracy": accuracy})
    report.finish({"wall_seconds": 5.0, "fill": fill})
    write_json_atomically(folder / CELL_RECORD, {"wall_seconds": 9.0, "command": "regl fl"})


def two_seeds(tmp_path: Path, arm: str = "none", fill_store: str = "") -> list:
    """The cells of one arm, seeds 0 and 1, 2 clients, 2 rounds."""
    settings = ExperimentSettings(num_rounds=2, partition=replace(ExperimentSettings().partition, num_clients=2))
    settings = replace(settings, fill=FillSettings(supplement=0.01, store=fill_store or FillSettings().store))
    return bench_cells(settings, [arm], [0, 1], "", tmp_path / "bench", cpus=2, verbose=False)


def test_a_cell_is_finished_only_with_a_summary_of_its_own_settings(tmp_path):
    cell = two_seeds(tmp_path)[0]
    assert (cell.arm, cell.seed, cell.folder) == ("none", 0, tmp_path / "bench" / "none-s0")
    assert why_unfinished(cell) == "new"
    finished_run(cell.folder, cell.settings, [0.1, 0.3])
    assert why_unfinished(cell) == ""
    elsewhere = replace(cell.settings, out_dir="/elsewhere", fill=replace(cell.settings.fill, store="/other/store"))
    finished_run(cell.folder, elsewhere, [0.1, 0.3])
    assert why_unfinished(cell) == ""  # a moved folder or fill store is the same run
    finished_run(cell.folder, replace(cell.settings, num_rounds=1), [0.1])
    assert why_unfinished(cell) == "its summary.json is for other settings: num-rounds 1 → 2"
    finished_run(cell.folder, cell.settings, [0.1, 0.3])
    (cell.folder / CELL_RECORD).unlink()
    assert why_unfinished(cell).startswith(f"no {CELL_RECORD}")
    (cell.folder / "summary.json").unlink()
    assert why_unfinished(cell) == "no summary.json: interrupted or failed"


@pytest.mark.parametrize(
    ("arm", "warm_start", "reruns"),
    [("mixup", 0, False), ("public-equal", 0, False), ("diffusion", 0, True), ("mixup", 100, True)],
)
def test_a_new_sampling_setting_reruns_only_the_cells_that_sample(tmp_path, arm, warm_start, reruns):
    cell = two_seeds(tmp_path, arm)[0]
    cell = replace(cell, settings=replace(cell.settings, warm_start_per_class=warm_start))
    sampled = replace(cell.settings.fill, guidance=cell.settings.fill.guidance + 1, steps=cell.settings.fill.steps + 5)
    finished_run(cell.folder, replace(cell.settings, fill=sampled), [0.1, 0.3])
    reason = why_unfinished(cell)
    if reruns:
        assert reason.startswith("its summary.json is for other settings: fill-steps")
    else:
        assert reason == ""
    finished_run(cell.folder, replace(cell.settings, fill=replace(sampled, supplement=0.5)), [0.1, 0.3])
    assert "fill-supplement 0.5 → 0.01" in why_unfinished(cell)  # what every fill reads still counts


def test_a_run_older_than_a_setting_counts_as_its_default(tmp_path):
    cell = two_seeds(tmp_path)[0]
    finished_run(cell.folder, cell.settings, [0.1, 0.3])
    config = json.loads((cell.folder / "config.json").read_text())
    del config["partition-domain"]  # written before --domain existed
    write_json_atomically(cell.folder / "config.json", config)
    assert why_unfinished(cell) == ""
    rotated = replace(
        cell, settings=replace(cell.settings, partition=replace(cell.settings.partition, domain="rotate"))
    )
    assert why_unfinished(rotated) == "its summary.json is for other settings: partition-domain 'none' → 'rotate'"


def test_warm_start_epochs_count_only_with_a_warm_start(tmp_path):
    cell = two_seeds(tmp_path)[0]
    finished_run(cell.folder, replace(cell.settings, warm_start_epochs=5), [0.1, 0.3])
    assert why_unfinished(cell) == ""
    warm = replace(cell, settings=replace(cell.settings, warm_start_per_class=10))
    finished_run(warm.folder, replace(warm.settings, warm_start_epochs=5), [0.1, 0.3])
    assert why_unfinished(warm) == "its summary.json is for other settings: warm-start-epochs 5 → 20"


def test_rows_come_from_the_cell_folders_and_name_their_environment(tmp_path):
    cells = two_seeds(tmp_path)
    for cell in cells:
        finished_run(cell.folder, cell.settings, [0.1, 0.3 + cell.seed / 10])
    traffic = [  # what the clients sent: an adapter round's adapter and a train reply's weights
        {"client": 0, "node": 1, "action": "adapter_round", "record": "adapter", "bytes": 2_000_000},
        {"client": 0, "node": 1, "action": "train", "record": "arrays", "bytes": 3_500_000},
    ]
    write_json_atomically(cells[1].folder / "traffic.json", traffic)
    rows = [finished_row(cell) for cell in cells]
    assert [(r["seed"], r["accuracy"], r["wall_seconds"]) for r in rows] == [(0, 0.3, 9.0), (1, 0.4, 9.0)]
    assert "sent_bytes" not in rows[0]  # a run older than traffic.json
    assert (rows[1]["sent_bytes"], rows[1]["generator_sent_bytes"]) == (5_500_000, 2_000_000)
    assert "| MB sent | of it the generator's MB |" in format_table(rows, ["none"])
    assert "| 5.5 | 2.0 |" in format_table(rows[1:], ["none"])
    other_machine = {**rows[1], "environment": {"cpu": "elsewhere"}}
    failed = {"arm": "none", "seed": 2, "error": "exit code 1", "wall_seconds": 1.0}
    record = bench_record([rows[0], rows[1], other_machine, failed])
    assert [r.get("environment") for r in record["runs"]] == [0, 0, 1, None]
    assert record["environment"][1] == {"cpu": "elsewhere"}
    assert record["environment"][0]["python"]


def test_figures_are_redrawn_only_when_they_change(tmp_path):
    cells = two_seeds(tmp_path)
    for cell in cells:
        finished_run(cell.folder, cell.settings, [0.1, 0.3 + cell.seed / 10, 0.5])
    out_root = cells[0].folder.parent
    notes = write_figures(out_root, cells, ["none"], "two seeds")
    plot = out_root / "accuracy.png"
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert notes == ["accuracy.png: global test accuracy by round, mean over seeds (band: the seeds' min–max)."]
    written = plot.stat().st_mtime_ns
    write_figures(out_root, cells, ["none"], "two seeds")
    assert plot.stat().st_mtime_ns == written
    assert write_figures(out_root, [], ["none", "diffusion"], "") == ["no grid.png: no diffusion arm finished."]
    assert not plot.exists()


def test_grid_leaves_out_classes_without_generated_images(tmp_path):
    names = ("a", "b", "c")
    rng = np.random.default_rng(0)
    real = ImageDataset(rng.integers(0, 255, (30, 6, 6, 1), dtype=np.uint8), np.arange(30) % 3, names)
    generated = ImageDataset(rng.integers(0, 255, (5, 6, 6, 1), dtype=np.uint8), np.array([0, 0, 2, 2, 2]), names)
    assert save_class_grid(real, generated, tmp_path / "grid.png") == ["b"]
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:  # 2 rows of 2 real + gap + 2 generated, drawn at 2×
        assert grid.size == (2 * (4 * 6 + 4), 2 * 2 * 6)


def store_diffusion_images(cell, pixel: int | None) -> None:
    """What the cell's clients' fill would keep: its planned diffusion images, every pixel `pixel`, or with
    None copies of the client's own first images."""
    from regl.fill.settings import client_plan
    from regl.fill.store import SyntheticStore
    from regl.fl.experiment import client_data, client_fill

    for client_id in range(cell.settings.partition.num_clients):
        data = client_data(cell.settings, client_id)
        plan = client_plan(cell.settings.fill, data.class_counts(), None)
        labels = np.repeat(np.arange(data.num_classes), plan.counts["diffusion"])
        copies = data.x[np.arange(len(labels)) % len(data)]
        x = copies if pixel is None else np.full((len(labels), 28, 28, 1), pixel, np.uint8)
        images = ImageDataset(x, labels, data.class_names)
        store = client_fill(cell.settings, client_id)
        key = store.store_key(plan)
        SyntheticStore(store.store_folder(key)).write(key, {"diffusion": images}, {"diffusion": 1}, data.class_names)


# two clients of two classes each leave classes unused, which the partitioner warns about
@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
def test_grid_reads_the_diffusion_images_from_the_clients_stores(tmp_path):
    cell = two_seeds(tmp_path, "diffusion", str(tmp_path / "store"))[0]
    finished_run(cell.folder, cell.settings, [0.1, 0.2], fill={"target": "uniform"})
    out_root = cell.folder.parent
    assert write_figures(out_root, [cell], ["diffusion"], "")[1].startswith("no grid.png: arm diffusion, seed 0")
    store_diffusion_images(cell, 0)
    notes = write_figures(out_root, [cell], ["diffusion"], "")
    assert notes[1].startswith("grid.png: real test images as the run tests on them (left) and the diffusion images")
    assert (out_root / "grid.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (out_root / "looks.png").exists()  # no client domains: nothing to compare


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
def test_looks_shows_real_then_base_then_lora_images_of_a_lacked_class(tmp_path):
    from PIL import Image

    settings = ExperimentSettings(
        num_rounds=2, partition=replace(ExperimentSettings().partition, num_clients=2, domain="rotate")
    )
    settings = replace(settings, fill=FillSettings(supplement=0.05, store=str(tmp_path / "store")))
    cells = bench_cells(settings, ["diffusion-base", "diffusion"], [0], "", tmp_path / "bench", cpus=2, verbose=False)
    for cell, pixel in zip(cells, (50, 200)):
        finished_run(cell.folder, cell.settings, [0.1, 0.2], fill={"target": "uniform"})
        store_diffusion_images(cell, pixel)
    notes = write_figures(tmp_path / "bench", cells, ["diffusion-base", "diffusion"], "")
    assert notes[1].startswith("looks.png: seed 0, one row per client — client 0 (rotated 0°; ")
    assert "client 1 (rotated 15°; " in notes[1]
    with Image.open(tmp_path / "bench" / "looks.png") as looks:  # 2 rows of 3 groups of 8, gaps of 4, at 2×
        assert looks.size == (2 * (24 * 28 + 2 * 4), 2 * 2 * 28)
        pixels = np.asarray(looks)
    group = 2 * (8 * 28 + 4)
    assert (pixels[:56, group : group + 2 * 8 * 28] == 50).all()  # base images of the lacked class
    assert (pixels[:56, 2 * group :] == 200).all()  # the LoRA's images of it


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
def test_near_copies_are_audited_against_the_generators_training_images(tmp_path):
    """The client LoRA's images (here copies of its client's own) against its client's images, the base's
    (blank ones) against every client's; once per cell, and into the row and the table."""
    settings = ExperimentSettings(num_rounds=2, partition=replace(ExperimentSettings().partition, num_clients=2))
    settings = replace(settings, fill=FillSettings(supplement=0.05, store=str(tmp_path / "store")))
    cells = bench_cells(settings, ["diffusion-base", "diffusion"], [0], "", tmp_path / "bench", cpus=2, verbose=False)
    for cell, pixel in zip(cells, (0, None)):
        finished_run(cell.folder, cell.settings, [0.1, 0.2], fill={"target": "uniform"})
        store_diffusion_images(cell, pixel)
    add_near_copies(cells)
    base, lora = (json.loads((cell.folder / NEAR_COPIES).read_text())["diffusion"] for cell in cells)
    assert (base["against"], lora["against"]) == ("every client's images", "each client's own images")
    assert base["generator"].startswith("the base") and lora["generator"] == "each client's LoRA"
    assert (base["flagged"], lora["flagged"]) == (0.0, 1.0)
    assert base["reference_flagged"] < 0.05 and lora["reference_flagged"] < 0.05
    rows = [finished_row(cell) for cell in cells]
    assert [row["near_copies"] for row in rows] == [0.0, 1.0]
    assert "| near-copies % | held-out near-copies % |" in format_table(rows, ["diffusion-base", "diffusion"])
    written = (cells[1].folder / NEAR_COPIES).stat().st_mtime_ns
    add_near_copies(cells)
    assert (cells[1].folder / NEAR_COPIES).stat().st_mtime_ns == written


@pytest.mark.e2e
def test_bench_resumes_and_leaves_a_results_folder(tmp_path, monkeypatch, capfd):
    """Run two cells; lose one's summary: the rerun skips the other; a third run changes no file."""
    from regl.cli import main

    out = tmp_path / "results" / "tiny"
    argv = ["bench", "--dataset", "mnist-10k", "--clients", "2", "--rounds", "1", "--arms", "none"]
    argv += ["--seeds", "0,1", "--out-dir", str(out)]
    monkeypatch.chdir(tmp_path)

    def bench() -> list[str]:
        code = main(argv)
        terminal = capfd.readouterr()
        assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
        return [line for line in terminal.out.splitlines() if line.startswith("[")]

    assert [line.split(": ")[1] for line in bench()] == ["running (new)", "running (new)"]
    assert (out / "command.txt").read_text() == "regl " + shlex.join(argv) + "\n"
    assert (out / "accuracy.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (out / "grid.png").exists()
    assert [r["seed"] for r in json.loads((out / "bench.json").read_text())["runs"]] == [0, 1]
    kept = (out / "none-s0" / "summary.json").stat().st_mtime_ns
    (out / "none-s1" / "summary.json").unlink()

    assert bench() == [
        f"[1/2] arm none, seed 0: skipped, finished in {out / 'none-s0'}",
        "[2/2] arm none, seed 1: running (no summary.json: interrupted or failed): regl fl --config "
        f"{out / 'none-s1' / 'run-config.json'} --cpus 2",
    ]
    config = json.loads((out / "none-s1" / "run-config.json").read_text())
    assert (config["seed"], config["num-rounds"], config["out-dir"]) == (1, 1, str(out / "none-s1"))
    assert (out / "none-s0" / "summary.json").stat().st_mtime_ns == kept
    assert (out / "none-s1" / "summary.json").is_file()

    written = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    skipped = [f"skipped, finished in {out / f'none-s{seed}'}" for seed in (0, 1)]
    assert [line.split(": ")[1] for line in bench()] == skipped
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == written
