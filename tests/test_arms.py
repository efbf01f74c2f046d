from dataclasses import replace

import pytest

from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.fl.bench import arm_settings, check_arms
from regl.fl.bench_report import format_table
from regl.fl.settings import ExperimentSettings


def test_arm_settings():
    base = ExperimentSettings(fill=FillSettings(supplement=0.2))
    iid = arm_settings(base, "iid", "75:25")
    assert (iid.partition.kind, iid.fill.mode) == ("iid", "none")
    no_lora = arm_settings(base, "diffusion-base", "")
    assert (no_lora.fill.mode, no_lora.fill.lora, no_lora.fill.supplement) == ("diffusion", "none", 0.2)
    mixed = arm_settings(base, "diffusion+noise", "75:25")
    assert (mixed.fill.mode, mixed.fill.mix, mixed.fill.lora) == ("diffusion+noise", "75:25", "client")
    assert arm_settings(base, "diffusion", "75:25").fill.mix == ""  # one source: the mix does not apply
    with pytest.raises(ReglError, match="unknown fill 'sparkle'"):
        check_arms(["none", "sparkle"])


def test_method_arms_alone_and_with_a_fill():
    base = ExperimentSettings(fill=FillSettings(supplement=0.2))
    federated = arm_settings(base, "diffusion-federated", "")
    assert (federated.fill.mode, federated.fill.lora) == ("diffusion", "federated")
    assert arm_settings(base, "diffusion-federated-local+noise", "").fill.lora == "federated+local"
    with pytest.raises(ReglError, match="one diffusion part at most"):
        check_arms(["diffusion-base+diffusion-federated"])
    focal = arm_settings(base, "focal", "")
    assert (focal.loss, focal.fill.mode, focal.strategy) == ("focal", "none", "fedavg")
    combined = arm_settings(base, "diffusion-base+ratio+fedprox+augment", "")
    assert (combined.fill.mode, combined.fill.lora, combined.loss) == ("diffusion", "none", "ratio")
    assert (combined.strategy, combined.augment) == ("fedprox", True)
    assert arm_settings(base, "balanced-aggregation", "").aggregate_weight == "class-balanced"
    public = arm_settings(base, "init-public", "")
    assert (public.init, public.warm_start_per_class) == ("public", 1000)
    assert arm_settings(replace(base, warm_start_per_class=50), "init-synthetic", "").warm_start_per_class == 50
    assert arm_settings(base, "dp0.5", "").dp_noise == 0.5
    centralized = arm_settings(replace(base, loss="focal", augment=True), "centralized", "")
    assert (centralized.loss, centralized.augment, centralized.fill) == ("ce", False, FillSettings())
    check_arms(["fedadam", "diffusion+noise+fedlc", "dp2"])
    with pytest.raises(ReglError, match="unknown fill 'fedsgd'"):
        check_arms(["fedsgd"])


def test_setting_parts_sweep_a_run_setting_within_one_bench():
    base = ExperimentSettings(fill=FillSettings(supplement=0.2))
    wide = arm_settings(base, "diffusion-federated+fill-lora-rank=16+fill-lora-targets=all+focal", "")
    assert (wide.fill.lora, wide.fill.lora_rank, wide.fill.lora_targets, wide.loss) == ("federated", 16, "all", "focal")
    assert arm_settings(base, "diffusion-federated+fill-adapter-rule=product", "").fill.adapter_rule == "product"
    assert arm_settings(base, "none+train-lr=0.05", "").train.lr == 0.05
    check_arms(["diffusion-federated+fill-lora-lr=0.005"], base)
    with pytest.raises(ReglError, match="'fill-lora-size' is not a run setting an arm can set"):
        check_arms(["diffusion+fill-lora-size=3"], base)
    with pytest.raises(ReglError, match="share one federation's data; give partition-look to the bench"):
        check_arms(["none+partition-look=negative"], base)
    with pytest.raises(ReglError, match="'out-dir' is not a run setting"):
        check_arms(["none+out-dir=/tmp/x"], base)
    with pytest.raises(ReglError, match="fill-lora-rank: 'big' is not a int"):
        check_arms(["diffusion+fill-lora-rank=big"], base)
    with pytest.raises(ReglError, match="--fill-lora-targets"):  # a value outside the declared choices
        check_arms(["diffusion+fill-lora-targets=convs"], base)


def test_table_is_mean_and_std_over_seeds():
    rows = [
        {
            "arm": "none",
            "seed": 0,
            "accuracy": 0.1,
            "minority_accuracy": None,
            "auc": 0.7,
            "personalized_accuracy": 1.0,
            "fill_seconds": 0.0,
            "rounds_seconds": 8.0,
            "wall_seconds": 10.0,
        },
        {
            "arm": "none",
            "seed": 1,
            "accuracy": 0.3,
            "minority_accuracy": None,
            "auc": 0.9,
            "personalized_accuracy": 1.0,
            "fill_seconds": 0.0,
            "rounds_seconds": 26.0,
            "wall_seconds": 30.0,
        },
        {"arm": "noise", "seed": 0, "error": "exit code 1", "wall_seconds": 1.0},
    ]
    table = format_table(rows, ["none", "noise", "mixup"]).splitlines()
    assert table[0].endswith("| fill s | rounds s | wall s | seeds |")  # the wall time split: fill, rounds
    assert table[2] == "| none | 20.00 ± 10.00 | — | 80.00 ± 10.00 | 100.00 ± 0.00 | 0 | 17 | 20 | 0,1 |"
    assert table[3].startswith("| noise | failed: exit code 1 |")
    assert table[4].startswith("| mixup | not run yet |")


def test_table_adds_the_monitors_cosine_and_the_runs_epsilon():
    row = {"minority_accuracy": 0.5, "auc": 0.9, "personalized_accuracy": 0.9, "fill_seconds": 0.0, "rounds_seconds": 1}
    rows = [
        {**row, "arm": "ratio", "seed": 0, "accuracy": 0.8, "monitor_cosine": 0.99, "wall_seconds": 1.0},
        {**row, "arm": "ratio", "seed": 1, "accuracy": 0.8, "monitor_cosine": 0.97, "wall_seconds": 1.0},
        {**row, "arm": "dp2", "seed": 0, "accuracy": 0.6, "epsilon": 8.0794, "wall_seconds": 1.0},
    ]
    table = format_table(rows, ["ratio", "dp2"]).splitlines()
    assert table[0].endswith("| monitor cosine | ε (δ = 10⁻⁵) | fill s | rounds s | wall s | seeds |")
    assert "| 0.9800 ± 0.0100 | — |" in table[2]
    assert "| — | 8.08 |" in table[3]


@pytest.mark.e2e
def test_bench_children_run_with_every_option_given(tmp_path, monkeypatch, capfd):
    """A real bench of two arms: each child's config.json holds every option given to `regl bench`."""
    import json
    from dataclasses import replace

    from regl.cli import command_parser, main
    from regl.cli.options import experiment_settings

    out = tmp_path / "bench"
    argv = [
        "bench",
        "--dataset",
        "mnist-10k",
        "--partition",
        "classes",
        "-k",
        "5",
        "--clients",
        "2",
        "--beta",
        "0.3",
        "--imbalance-ratio",
        "4",
        "--rounds",
        "1",
        "--local-epochs",
        "1",
        "--batch-size",
        "32",
        "--lr",
        "0.02",
        "--model",
        "cnn",
        "--arms",
        "none,noise",
        "--seeds",
        "3",
        "--fill-supplement",
        "0.01",
        "--fill-target",
        "global",
        "--fill-lora",
        "none",
        "--fill-lora-steps",
        "7",
        "--fill-prior-per-class",
        "3",
        "--fill-steps",
        "4",
        "--fill-guidance",
        "2.5",
        "--fill-store",
        str(tmp_path / "store"),
        "--out-dir",
        str(out),
    ]
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    settings = experiment_settings(command_parser("bench").parse_args(argv[1:]))
    for arm in ("none", "noise"):
        seeded = replace(
            settings, seed=3, partition=replace(settings.partition, seed=3), out_dir=str(out / f"{arm}-s3")
        )
        expected = arm_settings(seeded, arm, "").to_config()
        config = json.loads((out / f"{arm}-s3" / "config.json").read_text())
        assert {key: config[key] for key in expected} == expected
        assert (config["model"], config["fill-lora"], config["train-lr"]) == ("cnn", "none", 0.02)
    lines = terminal.out.splitlines()
    assert (
        lines[1]
        == f"[1/2] arm none, seed 3: running (new): regl fl --config {out / 'none-s3' / 'run-config.json'} --cpus 2"
    )
    assert sum(line.startswith("round 1/1: accuracy ") for line in lines) == 2
    assert any(line.startswith("fill: client 1 done") for line in lines)
    assert [line.split(" | ")[0] for line in lines if line.startswith("| n")] == ["| none", "| noise"]
    assert "INFO" not in terminal.out + terminal.err
