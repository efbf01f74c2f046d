"""Tiny end-to-end fill runs: 2 clients, 1 round, the shipped base, real Ray in the sandbox.

The server's traffic log holds every reply it received — everything that left a client —
so these tests read it to check what crossed in each fill mode.
"""

import json

import numpy as np
import pytest

from regl.cli import main
from regl.errors import ReglError
from regl.fill.settings import FillSettings
from regl.fl.experiment import ExperimentSettings, new_model


def _run_fill(tmp_path, monkeypatch, capfd, fill: list[str]) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fl",
            "--dataset",
            "mnist-10k",
            "--partition",
            "classes",
            "-k",
            "5",
            "--clients",
            "2",
            "--rounds",
            "1",
            "--out-dir",
            str(out),
            "--fill-store",
            str(tmp_path / "store"),
            "--fill-supplement",
            "0.01",
            *fill,
        ]
    )
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    done = [line for line in terminal.out.splitlines() if line.startswith("fill: client ")]
    assert [line.split(" done ")[1][:5] for line in done] == ["(1/2)", "(2/2)"], terminal.out  # a line per client
    assert f"{sum(c['synthetic-images'] for c in summary['fill']['clients'])} images made" in done[-1]
    return summary, json.loads((out / "traffic.json").read_text())


@pytest.mark.e2e
def test_diffusion_and_noise_fill_sends_nothing_but_weights_and_metrics(tmp_path, monkeypatch, capfd):
    summary, traffic = _run_fill(
        tmp_path,
        monkeypatch,
        capfd,
        ["--fill", "diffusion+noise", "--fill-lora-steps", "2", "--fill-prior-per-class", "1", "--fill-steps", "2"],
    )
    fill = summary["fill"]["clients"]
    assert [c["client"] for c in fill] == [0, 1]
    for client in fill:
        assert client["planned-diffusion"] > 0 and client["planned-noise"] > 0
        assert client["synthetic-images"] == client["planned-diffusion"] + client["planned-noise"]
        assert client["real-images"] > 0 and client["finetune-seconds"] > 0
    state = new_model(ExperimentSettings(dataset="mnist-10k")).state_dict()
    assert {m["client"] for m in traffic} == {0, 1}
    assert {(m["action"], m["record"]) for m in traffic} == {
        ("fill", "metrics"),
        ("train", "arrays"),
        ("train", "metrics"),
    }
    for message in traffic:
        if message["record"] == "arrays":  # exactly the model's tensors, nothing image-shaped
            assert {a[0] for a in message["arrays"]} == set(state)
            for key, dtype, shape in message["arrays"]:
                assert shape == list(state[key].shape) and dtype == "float32"
        else:
            assert message["bytes"] < 2000  # scalar metrics only
    sent = summary["bytes_sent_per_client"]
    assert set(sent) == {"0", "1"}
    for kinds in sent.values():
        assert set(kinds) == {"model weights", "training and fill metrics"}
    split = summary["time_split"]
    assert split["fill_phase_wall_seconds"] > 0 and split["client_generate_seconds"] > 0
    assert len(list((tmp_path / "store").glob("client-*/manifest.json"))) == 2
    assert len(list((tmp_path / "store").glob("lora-client-*/pytorch_lora_weights.safetensors"))) == 2


@pytest.mark.e2e
def test_mixup_fill_routes_mixes_through_the_server_and_counts_them(tmp_path, monkeypatch, capfd):
    from regl.data.partitions import PartitionSpec
    from regl.fl.experiment import client_data

    summary, traffic = _run_fill(tmp_path, monkeypatch, capfd, ["--fill", "mixup"])
    fill = summary["fill"]
    settings = ExperimentSettings(
        dataset="mnist-10k", partition=PartitionSpec(kind="classes", num_clients=2, classes_per_client=5)
    )
    held = [set(np.flatnonzero(client_data(settings, c).class_counts())) for c in (0, 1)]
    nobody = {str(c) for c in range(10) if c not in held[0] | held[1]}
    for client in fill["clients"]:
        unserved = fill["unserved_mixup_requests"].get(str(client["client"]), {})
        assert set(unserved) == nobody  # a label no client holds cannot be mixed for anyone
        assert client["synthetic-images"] == client["planned-mixup"] - sum(unserved.values()) > 0
    mixes = [m for m in traffic if m["record"] == "mixed-images"]
    assert {m["client"] for m in mixes} == {0, 1}  # each holds what the other lacks
    for message in mixes:
        shapes = {key[0]: shape for key, _, shape in message["arrays"]}
        assert shapes["x"][1:] == [28, 28, 1]
        assert all(dtype == "uint8" for key, dtype, _ in message["arrays"] if key.startswith("x-"))
    for client, kinds in summary["bytes_sent_per_client"].items():
        assert set(kinds) == {"class counts", "mixed images (mixup)", "model weights", "training and fill metrics"}
        produced = next(c for c in fill["clients"] if str(c["client"]) != client)["synthetic-images"]
        assert kinds["mixed images (mixup)"] > produced * 28 * 28  # the other client's mixes came from here


def test_fill_settings_survive_the_flower_run_config():
    settings = ExperimentSettings(
        fill=FillSettings(mode="diffusion+noise", supplement=0.2, mix="3:1", lora="none", steps=7, target="global")
    )
    config = settings.to_config()
    assert config["fill"] == "diffusion+noise" and config["fill-lora"] == "none"
    assert ExperimentSettings.from_config(config) == settings
    assert ExperimentSettings.from_config({**config, "fill-lora": "true"}).fill.lora == "client"  # an older config
    assert settings.fill.source_mix() == {
        "diffusion": 3.0,
        "noise": 1.0,
        "mixup": 0.0,
        "public-equal": 0.0,
        "oracle": 0.0,
    }


@pytest.mark.parametrize("mode, mix", [("noise+sparkle", ""), ("diffusion+diffusion", ""), ("diffusion+noise", "1")])
def test_bad_fill_settings_name_the_problem(mode, mix):
    from regl.errors import ReglError

    with pytest.raises(ReglError, match="fill"):
        FillSettings(mode=mode, mix=mix).check()


def test_training_data_is_real_plus_the_store(tmp_path):
    from regl.data.partitions import PartitionSpec
    from regl.fl.experiment import client_data, prepare_fill, training_data

    settings = ExperimentSettings(
        dataset="mnist-10k",
        partition=PartitionSpec(kind="classes", num_clients=10, classes_per_client=1),
        fill=FillSettings(mode="noise", supplement=0.1, store=str(tmp_path)),
    )
    with pytest.raises(ReglError, match="no complete synthetic store"):
        training_data(settings, 3, None)
    first = prepare_fill(settings, 3, None, None)
    again = prepare_fill(settings, 3, None, None)
    assert first["reused"] == 0 and again["reused"] == 1
    real = client_data(settings, 3)
    data = training_data(settings, 3, None)
    counts = data.class_counts() - real.class_counts()
    assert counts.sum() == first["synthetic-images"] == round(0.1 * len(real))
    assert counts[real.y[0]] == 0 and np.count_nonzero(counts) == 9  # only the missing classes are filled


@pytest.mark.e2e
@pytest.mark.slow
def test_federated_generator_rounds_send_only_the_adapter_and_resume(tmp_path, monkeypatch, capfd):
    """Two rounds of the federation's adapter, then every client draws its fill with it; a rerun that asks for one
    round more trains only that round."""
    federated = ["--fill", "diffusion", "--fill-lora", "federated", "--fill-adapter-rounds", "2"]
    federated += ["--fill-adapter-steps", "2", "--fill-steps", "2", "--fill-lora-rank", "2"]
    summary, traffic = _run_fill(tmp_path, monkeypatch, capfd, federated)
    generator = summary["generator"]
    assert [r["round"] for r in generator["rounds"]] == [1, 2]
    assert all(r["clients"] == [0, 1] for r in generator["rounds"])
    assert summary["fill"]["adapter_digest"] == generator["adapter_digest"]
    adapters = [m for m in traffic if m["record"] == "adapter"]
    assert len(adapters) == 4 and {m["client"] for m in adapters} == {0, 1}  # 2 rounds × 2 clients
    for message in adapters:  # LoRA factors only, nothing image-shaped
        assert all(".lora_A." in name or ".lora_B." in name for name, _, _ in message["arrays"])
        assert message["bytes"] == generator["adapter_bytes"]
    sent = summary["bytes_sent_per_client"]["0"]
    assert sent["generator adapter (LoRA)"] == 2 * generator["adapter_bytes"]
    assert sent["digest of the client's images"] < 200  # with each round: what kept rounds are checked against
    assert len(list((tmp_path / "store").glob("federated-adapter-*/pytorch_lora_weights.safetensors"))) == 1
    assert not list((tmp_path / "store").glob("lora-client-*"))  # no client LoRA

    (tmp_path / "run" / "summary.json").unlink()
    more = [*federated[:5], "3", *federated[6:]]  # --fill-adapter-rounds 3
    again, _ = _run_fill(tmp_path, monkeypatch, capfd, more)
    assert [r["round"] for r in again["generator"]["rounds"]] == [1, 2, 3]
    assert again["generator"]["rounds"][:2] == generator["rounds"]  # rounds 1 and 2 read back, not retrained
    assert {m["action"] for m in json.loads((tmp_path / "run" / "traffic.json").read_text())} >= {"data_digest"}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_private_federated_generator_clips_every_update_and_composes_the_runs_epsilon(tmp_path, monkeypatch, capfd):
    """Client-level DP on the adapter (a clip below every update) and on the classifier: the summary's ε is the joint
    history's."""
    from regl.fl.privacy import client_level_epsilon, composed_epsilon

    federated = ["--fill", "diffusion", "--fill-lora", "federated", "--fill-adapter-rounds", "2"]
    federated += ["--fill-adapter-steps", "2", "--fill-steps", "2", "--fill-lora-rank", "2"]
    private = ["--fill-adapter-dp-noise", "1.5", "--fill-adapter-dp-clip", "0.001", "--dp-noise", "0.5"]
    summary, _ = _run_fill(tmp_path, monkeypatch, capfd, [*federated, *private])
    generator = summary["generator"]
    for record in generator["rounds"]:  # AdamW's first step alone moves each B weight by about lr = 1e-3
        assert len(record["update_norms"]) == 2 and min(record["update_norms"]) > 0.001 and record["clipped"] == 2
    assert generator["privacy"]["epsilon"] == pytest.approx(client_level_epsilon(1.5, 2))
    assert (generator["privacy"]["clip"], generator["privacy"]["clipping"]) == (0.001, "server")
    assert summary["privacy"]["epsilon"] == pytest.approx(composed_epsilon([(1.5, 2), (0.5, 1)]))
    assert summary["privacy"]["generator"] == generator["privacy"]
