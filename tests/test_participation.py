"""Partial participation (`--clients-per-round`): the seeded draw, and a real run that samples 2 of 4 clients."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regl.cli import main
from regl.errors import ReglError
from regl.fl.bench_report import stored_shards
from regl.fl.participation import sample_clients
from regl.fl.settings import ExperimentSettings


@given(st.integers(0, 2**32), st.integers(1, 30), st.integers(0, 30), st.integers(1, 200))
@settings(max_examples=50, deadline=None)
def test_the_draw_is_seeded_and_takes_per_round_of_the_available(seed, num_clients, per_round, server_round):
    available = list(range(0, 2 * num_clients, 2))  # client ids need not be contiguous
    drawn = sample_clients(seed, "classifier", server_round, available, per_round)
    assert drawn == sample_clients(seed, "classifier", server_round, list(reversed(available)), per_round)
    assert drawn == sorted(set(drawn)) and set(drawn) <= set(available)
    assert len(drawn) == (len(available) if per_round == 0 else min(per_round, len(available)))


def test_rounds_and_phases_draw_apart_and_reach_every_client():
    clients = list(range(100))
    rounds = [sample_clients(0, "classifier", r, clients, 20) for r in range(1, 101)]
    assert len({tuple(r) for r in rounds}) == 100
    assert set().union(*rounds) == set(clients)  # P(some client is left out of 100 rounds of 20) ≈ 100 · 0.8¹⁰⁰
    generator = [sample_clients(0, "generator", r, clients, 20) for r in range(1, 101)]
    assert generator != rounds
    assert sample_clients(1, "classifier", 1, clients, 20) != rounds[0]


def test_more_clients_per_round_than_clients_is_refused():
    settings = ExperimentSettings(clients_per_round=11)
    with pytest.raises(ReglError, match="--clients-per-round 11 is more than the federation's 10 clients"):
        settings.check()


@pytest.mark.e2e
def test_a_round_trains_its_sample_and_a_client_fills_the_first_time_it_is_sampled(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "fl",
            "--partition",
            "classes",
            "-k",
            "5",
            "--clients",
            "4",
            "--clients-per-round",
            "2",
            "--rounds",
            "3",
            "--fill",
            "mixup",
            "--fill-supplement",
            "0.05",
            "--fill-store",
            str(tmp_path / "store"),
            "--out-dir",
            str(out),
        ]
    )
    terminal = capfd.readouterr()
    assert code == 0, terminal.out[-3000:] + terminal.err[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())[1:]
    expected = [sample_clients(0, "classifier", r, [0, 1, 2, 3], 2) for r in (1, 2, 3)]
    assert expected == [[1, 2], [1, 2], [0, 2]]  # seed 0: client 3 is never sampled, client 0 first in round 3
    assert [r["participants"] for r in rounds] == expected
    assert [[c["client"] for c in r["clients"]] for r in rounds] == expected
    assert [r.get("filled_clients") for r in rounds] == [[1, 2], None, [0]]
    assert all(r["missing_clients"] == [] for r in rounds)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["client"] for c in summary["fill"]["clients"]] == [0, 1, 2]
    assert all(c["synthetic-images"] > 0 for c in summary["fill"]["clients"])
    stored = stored_shards(ExperimentSettings.from_config(summary["config"]), summary["fill"])
    assert [sorted(shards) for shards in stored] == [["mixup"]] * 3 + [[]]  # the bench's audits: client 3 made none
    traffic = json.loads((out / "traffic.json").read_text())
    never = {(m["action"], m["record"]) for m in traffic if m["client"] == 3}
    assert ("fill", "metrics") not in never and ("train", "arrays") not in never
    assert ("class_counts", "class-counts") in never  # it still told the server its counts, for the bounty
    assert "round 3: 1 of its 2 clients are sampled for the first time" in terminal.out
