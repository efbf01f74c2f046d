"""The `regl` command: error paths, option defaults, and every declared option through argparse, a run-config
file (what a bench's child runs read) and back."""

import os
import random
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from regl.atomic import write_json_atomically
from regl.cli import ConfigFile, build_parser, command_parser, main
from regl.cli.options import experiment_options, experiment_settings
from regl.fill.settings import FillSettings
from regl.fl.bench import RUN_CONFIG, arm_argv, arm_settings
from regl.fl.settings import ExperimentSettings
from regl.generate.generator import DEFAULT_BASE
from regl.train.settings import TrainSettings

PROJECT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]):
    """The options `regl ARGV` runs with, read as `main` reads them (a --config file first): argv[0] is the command."""
    config, _ = ConfigFile().parse_known_args(argv)
    return build_parser(argv[0], config.config).parse_args(argv)


def parse(argv: list[str]) -> ExperimentSettings:
    return experiment_settings(parse_args(argv))


def settings_argv(settings: ExperimentSettings, command: str = "fl") -> list[str]:
    """A command line for `settings`, built from the declarations alone: the flag of every option off its default."""
    config, default = settings.to_config(), ExperimentSettings().to_config()
    argv = [command]
    for option in experiment_options():
        value = config[option.key]
        if value != default[option.key]:
            assert option.flag is not None, f"{option.key} has no flag"
            argv += [option.flag] if option.kind is bool else [f"{option.flag}={value}"]
    return argv


CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine takes these")


@pytest.mark.parametrize(
    "args, message",
    [
        (["partition", "--dataset", "cifar-77"], "unknown dataset 'cifar-77'"),
        (["partition", "--partition", "classes", "-k", "11"], "classes per client must be between 1 and 10"),
        (["partition", "--partition", "dirichlet", "--beta", "0"], "Dirichlet beta must be > 0"),
        (["partition", "--clients", "7000"], "7000 clients but only 6000 samples"),
        (["partition", "--dataset", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["partition", "--partition", "shards"], "invalid choice: 'shards'"),
        (["fl", "--dataset", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["fl", "--rounds", "0"], "--rounds must be ≥ 1, got 0"),
        (["fl", "--clients", "1"], "--clients must be ≥ 2, got 1"),
        (["fl", "--fill", "noise", "--fill-steps", "500"], "--fill-steps must be ≤ 200, got 500"),
        (["fl", "--fill-lora-style-token", "two words"], "the style token must be one word"),
        (["fl", "--config", "/no/such.json"], "--config /no/such.json"),
        (["fl", "--rounds", "two"], "argument --rounds: invalid int value: 'two'"),
        (["centralized", "--partition", "dirichlet", "--beta", "-2"], "--beta must be > 0, got -2.0"),
        (["fl", "--fill", "diffusion+sparkle"], "unknown fill 'diffusion+sparkle'"),
        (["fl", "--fill", "diffusion+noise", "--fill-mix", "3:1:1"], "gives 3 weights for the 2 sources"),
        (["fl", "--fill", "noise", "--fill-supplement", "-1"], "--fill-supplement must be ≥ 0"),
        (["fl", "--fill", "diffusion", "--fill-base", "/no/such/model"], "/no/such/model"),
        (["bench", "--arms", "none,sparkle"], "unknown fill 'sparkle'"),
        (["fl", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
        (["fl", "--dp-clip", "0"], "--dp-clip must be > 0, got 0.0"),
        (["fl", "--dp-noise", "1", "--aggregate-weight", "class-balanced"], "averages the clients' updates uniformly"),
        (["fl", "--dp-noise", "1", "--loss", "ratio"], "--loss ratio and --dp-noise cannot be combined"),
        (["fl", "--dp-noise", "1", "--fill", "diffusion", "--fill-lora", "federated"], "not the federated generator's"),
        (["fl", "--config", "/dev/null"], "--config /dev/null"),
        (["fl", "--init-freeze"], "--init-freeze keeps the warm start's feature extractor"),
        (["fl", "--dp-noise", "1", "--strategy", "fedadam"], "Flower adds the DP noise after fedadam's server step"),
        (["fl", "--loss", "ratio", "--strategy", "fedavgm"], "which fedavgm's server step changes"),
        (["fl", "--dp-noise", "1", "--model", "resnet18"], "BatchNorm statistics would be clipped"),
        (["bench", "--arms", "ratio+dp1"], "arm ratio+dp1: the Ratio Loss's monitor"),
        (["bench", "--arms", "dp0"], "the DP noise multiplier must be > 0"),
        (["bench", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["serve", "--threads", "0"], "threads: Input should be greater than or equal to 1"),
        (["serve", "--classes", "cat,dog"], "give the node's --data too"),
        (["deploy", "--data-dirs", "/no/a,/no/b"], "--data-dirs: /no/a does not exist"),
        (["deploy", "--data-dirs", "/tmp"], "--data-dirs needs a folder for each of at least two nodes"),
        (["deploy", "--classes", "cat,dog"], "give the server's --test-data too"),
        (["deploy", "--test-data", "/no/such/test"], "data folder /no/such/test does not exist"),
        pytest.param(["serve", "--dtype", "float16"], "float16 needs a CUDA device", marks=CPU_ONLY),
        pytest.param(["fl", "--fill", "diffusion", "--fill-device", "cuda"], "sees no CUDA device", marks=CPU_ONLY),
        (["generate", "--class", "bag", "--out", "x", "--dtype", "half"], "argument --dtype: invalid choice"),
        (["bench-sampler", "--out-dir", "x", "--steps", "4,a"], "--steps takes comma-separated numbers"),
        (["bench-sampler", "--out-dir", "x", "--schedulers", "heun"], "unknown sampler heun"),
        (["sparkle"], "invalid choice: 'sparkle'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("regl: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_partition_prints_table_and_saves_heatmap(capsys, tmp_path):
    out = tmp_path / "heat.png"
    assert main(["partition", "--partition", "classes", "-k", "1", "--clients", "10", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["client", "0", "1"]
    client_rows = [line.split() for line in lines[1:11]]
    assert all(row[-2] == "inf" for row in client_rows)  # one class each: γ_j infinite
    assert "unassigned samples: 0" in stdout
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_help_shows_the_settings_defaults(capsys):
    assert main(["fl", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    fill = FillSettings()
    assert (
        f"--fill-lora-steps FILL_LORA_STEPS each client's LoRA fine-tuning steps, at most (default: {fill.lora_steps})"
        in help_text
    )
    assert f"(default: {ExperimentSettings().num_rounds})" in help_text
    assert f"SGD learning rate (default: {TrainSettings().lr})" in help_text


def test_help_imports_nothing_heavy():
    """A fresh interpreter: `regl --help` and `regl partition --help` load neither torch, Flower nor FastAPI."""
    code = (
        "import sys\nfrom regl.cli import main\n"
        "assert main(['--help']) == 0 and main(['partition', '--help']) == 0\n"
        "print(sorted({'torch', 'flwr', 'fastapi', 'ray'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_serve_options_default_to_the_environment_unless_given(monkeypatch):
    from regl.cli.serving import service_settings

    monkeypatch.setenv("REGL_MAX_BATCH", "8")
    parser = command_parser("serve")
    assert service_settings(parser.parse_args(["--port", "9000"])).max_batch == 8
    assert service_settings(parser.parse_args(["--max-batch", "16"])).max_batch == 16
    monkeypatch.delenv("REGL_MAX_BATCH")
    assert service_settings(parser.parse_args([])).max_batch == 64


def _option_values() -> dict[str, list]:
    """Per `regl fl` option (by config key), values to try; the first is the default."""
    default = ExperimentSettings().to_config()
    values = {
        "dataset": ["fashion-mnist", "/data/my images"],
        "partition-kind": ["iid", "dirichlet", "imbalance"],
        "partition-num-clients": [2, 37],
        "partition-classes-per-client": [1, 5],
        "partition-beta": [0.05, 1e-3],
        "partition-imbalance-ratio": [1.0, 2.5],
        "partition-domain": ["rotate", "style", "noise"],
        "partition-look": ["negative", "outline"],
        "seed": [3, -7],
        "num-rounds": [1, 60],
        "clients-per-round": [1, 2],
        "train-epochs": [2, 10],
        "train-batch-size": [8, 256],
        "train-lr": [0.1, 1e-4],
        "model": ["cnn", "resnet18"],
        "out-dir": ["runs/x", "/tmp/a dir/run"],
        "fill": ["public", "noise", "diffusion", "mixup+noise", "diffusion+noise+mixup", "public-equal"],
        "fill-supplement": [0.2, 0.0],
        "fill-mix": ["weighted"],  # weights for as many sources as the fill has, below
        "fill-target": ["global"],
        "fill-lora": ["none", "federated", "federated+local"],
        "fill-lora-steps": [2, 1000],
        "fill-prior-per-class": [0, 8],
        "fill-lora-style-token": ["sks", "client-3_look"],
        "fill-lora-rank": [2, 16],
        "fill-lora-targets": ["all"],
        "fill-lora-lr": [5e-3, 1e-4],
        "fill-lora-early-stop": [0.0, 0.02],
        "fill-lora-cfg-dropout": [0.1, 0.5],
        "fill-adapter-rounds": [1, 30],
        "fill-adapter-steps": [1, 50],
        "fill-adapter-rule": ["fedavg", "product"],
        "fill-adapter-dp-noise": [1.0, 0.3],
        "fill-adapter-dp-clip": [0.1, 2.0],
        "fill-steps": [3, 50],
        "fill-guidance": [0.0, 7.5],
        "fill-sampler": ["lcm"],
        "fill-base": [str(DEFAULT_BASE.resolve())],
        "fill-store": ["/tmp/store", "/tmp/other store"],
        "fill-device": ["cpu"],  # cuda and the half dtypes are refused up front where the run cannot take them
        "fill-dtype": ["float32"],
        "warm-start-per-class": [100, 2000],
        "warm-start-epochs": [1, 5],
        "init": ["public"],
        "init-freeze": [True],
        "loss": ["focal", "class-balanced", "balanced-softmax", "fedlc", "fedrs", "ratio"],
        "augment": [True],
        "strategy": ["fedprox", "fedavgm", "fedadam"],
        "fedprox-mu": [0.1, 1.0],
        "aggregate-weight": ["class-balanced"],
        "dp-noise": [0.5, 2.0],
        "dp-clip": [0.1, 5.0],
        "dp-clipping": ["server"],
    }
    assert set(values) | DEPLOY_ONLY == {option.key for option in experiment_options() if option.flag}
    return {key: [default[key], *choices] for key, choices in values.items()}


DEPLOY_ONLY = {"classes", "test-data"}  # node-local data: options of regl deploy, not of regl fl


def _normal(config: dict) -> ExperimentSettings:
    """Settings as the parser makes them: a mix that fits the fill, an out dir, an absolute store."""
    sources = config["fill"].split("+") if config["fill"] not in ("none", "public") else []
    weighted = bool(config["fill-mix"]) and len(sources) > 1
    config["fill-mix"] = ":".join(str(3 + i) for i in range(len(sources))) if weighted else ""
    config["out-dir"] = config["out-dir"] or "runs/x"
    config["fill-store"] = str(Path(config["fill-store"]).resolve())
    if config["init-freeze"]:  # a frozen feature extractor needs a warm start
        config["warm-start-per-class"] = config["warm-start-per-class"] or 100
    if config["dp-noise"]:  # DP averages uniformly, noises every weight, and keeps the monitor out
        config["aggregate-weight"] = "examples"
        config["loss"] = "ce" if config["loss"] == "ratio" else config["loss"]
        config["init-freeze"] = False
    if config["fill-adapter-dp-noise"] and config["fill-adapter-rule"] == "product":  # DP covers the mean update
        config["fill-adapter-rule"] = "ffa"
    if config["dp-noise"] and config["fill-lora"].startswith("federated") and not config["fill-adapter-dp-noise"]:
        config["fill-lora"] = "client"  # the classifier's DP alone does not cover the adapter
    if config["dp-noise"] or config["loss"] == "ratio":  # both need the plain average of the updates
        config["strategy"] = "fedavg" if config["strategy"] in ("fedavgm", "fedadam") else config["strategy"]
    return ExperimentSettings.from_config(config)


def _cases() -> list[ExperimentSettings]:
    """Every option at each of its values, then 100 random combinations."""
    values = _option_values()
    default = {key: options[0] for key, options in values.items()}
    cases = [_normal({**default, key: value}) for key, options in values.items() for value in options[1:]]
    rng = random.Random(0)
    return cases + [_normal({key: rng.choice(options) for key, options in values.items()}) for _ in range(100)]


def test_every_fl_option_survives_its_flag_and_a_run_config_file(tmp_path):
    config = tmp_path / "run-config.json"
    for settings in _cases():
        argv = settings_argv(settings)
        assert parse(argv) == settings, argv
        write_json_atomically(config, settings.to_config())
        assert parse(["fl", "--config", str(config)]) == settings


def test_options_given_beside_a_config_file_win_and_flagless_keys_travel(tmp_path):
    config = tmp_path / "run-config.toml"
    config.write_text('num-rounds = 7\ntrain-momentum = 0.5\nfill-service = "http://127.0.0.1:8100"\nseed = 4\n')
    settings = parse(["fl", "--config", str(config), "--rounds", "3"])
    assert (settings.num_rounds, settings.seed, settings.partition.seed) == (3, 4, 4)
    assert (settings.train.momentum, settings.fill.service) == (0.5, "http://127.0.0.1:8100")


def test_a_config_file_with_unknown_keys_or_options_the_command_lacks_is_refused(tmp_path, capsys):
    config = tmp_path / "run-config.json"
    config.write_text('{"num-rounds": 2, "sparkle": 1}')
    assert main(["fl", "--config", str(config)]) == 2
    assert "unknown keys sparkle" in capsys.readouterr().err
    config.write_text('{"classes": "cat,dog", "test-data": "/data/t"}')  # node-local data: regl deploy's
    assert main(["fl", "--config", str(config)]) == 2
    assert "regl fl has no option for classes, test-data" in capsys.readouterr().err


def test_node_local_data_options_are_deploys():
    settings = _normal({**ExperimentSettings().to_config(), "classes": "cat,dog,owl", "test-data": "/data/server test"})
    argv = settings_argv(settings, "deploy")
    assert argv[:3] == ["deploy", "--classes=cat,dog,owl", "--test-data=/data/server test"]
    assert parse(argv) == settings


def test_service_requests_carry_every_declared_request_option():
    """A client's fill settings through the service's request body and back: what the node's service fills with."""
    from regl.options import request_options
    from regl.service.schemas import FillRequest, FinetuneRequest

    for settings in _cases():
        fill = settings.fill
        body = {name: getattr(fill, name) for name in request_options(FillSettings)}
        request = FillRequest.model_validate({**body, "mode": "noise"})
        assert {name: getattr(request, name) for name in body} == body
    assert set(request_options(FillSettings)) <= set(FillRequest.model_fields)
    from regl.generate.settings import LoraSettings

    assert set(request_options(LoraSettings)) <= set(FinetuneRequest.model_fields)


def test_every_bench_option_reaches_its_childrens_runs(tmp_path):
    """`regl bench` parsed, each arm's child command line parsed again: the arm's settings exactly."""
    bench = [
        "bench",
        "--dataset",
        "fashion-mnist",
        "--partition",
        "dirichlet",
        "--clients",
        "4",
        "-k",
        "3",
        "--beta",
        "0.1",
        "--imbalance-ratio",
        "4",
        "--seed",
        "5",
        "--rounds",
        "3",
        "--local-epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--model",
        "resnet18",
        "--out-dir",
        "runs/b",
        "--fill-supplement",
        "0.2",
        "--fill-mix",
        "3:1",
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
        "--fill-base",
        str(DEFAULT_BASE),
        "--fill-store",
        "/tmp/bench-store",
        "--loss",
        "focal",
        "--augment",
        "--fedprox-mu",
        "0.1",
        "--dp-clip",
        "0.5",
        "--cpus",
        "3",
        "--verbose",
    ]
    args = command_parser("bench").parse_args(bench[1:])
    mix, args.fill_mix = args.fill_mix, ""  # as cmd_bench keeps the mix for the arms
    settings = experiment_settings(args)
    for arm in (
        "none",
        "noise",
        "mixup",
        "diffusion",
        "diffusion-base",
        "diffusion+noise",
        "public",
        "iid",
        "centralized",
        "fedprox",
        "diffusion+ratio",
        "dp0.5",
        "init-public",
    ):
        child = replace(arm_settings(settings, arm, mix), out_dir=str(tmp_path / arm))
        argv = arm_argv(child, arm, cpus=args.cpus, verbose=args.verbose)
        write_json_atomically(tmp_path / arm / RUN_CONFIG, child.to_config())  # as run_cell does
        child_args = parse_args(argv)
        parsed = experiment_settings(child_args)
        assert (parsed.model, parsed.train, parsed.num_rounds, parsed.partition.seed) == (
            "resnet18",
            settings.train,
            3,
            5,
        )
        if arm == "centralized":
            assert argv[0] == "centralized" and parsed.fill.mode == "none"
            assert replace(parsed, fill=child.fill) == child
            continue
        assert parsed == child
        assert (parsed.augment, parsed.fedprox_mu, parsed.dp_clip) == (True, 0.1, 0.5)
        assert parsed.loss == ("ratio" if arm == "diffusion+ratio" else "focal")
        assert (child_args.cpus, child_args.verbose) == (3, True)
        assert parsed.fill.lora == "none"  # --fill-lora none reaches every arm
        assert parsed.fill.mix == ("3:1" if arm == "diffusion+noise" else "")
        assert parsed.partition.kind == ("iid" if arm == "iid" else "dirichlet")


def test_main_reruns_its_own_argv_in_the_sandbox(monkeypatch):
    import regl.cli.federated as federated

    seen = []
    monkeypatch.setattr(sys, "argv", ["regl", "--something-else"])
    monkeypatch.setattr(federated, "in_sandbox", lambda: False)
    monkeypatch.setattr(federated, "rerun_self_isolated", lambda argv, state_dir: seen.append(argv) or 0)
    argv = ["fl", "--clients", "2", "--rounds", "1", "--no-tracking"]
    assert main(argv) == 0
    assert seen == [argv]


def test_flower_run_config_matches_settings_defaults():
    """`flwr run .` and `regl fl` run the same experiment: Flower needs every key in pyproject, with its value."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = ExperimentSettings().to_config()
    assert set(config) == set(defaults)
    assert config == defaults


def test_the_sandbox_finds_flwr_beside_its_interpreter(tmp_path):
    """`regl sandbox flwr run .` from a virtual environment nobody activated: flwr is found beside regl."""
    bare = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "regl.cli", "sandbox", "sh", "-c", "command -v flwr"],
        env=bare,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == Path(sys.executable).parent / "flwr"
