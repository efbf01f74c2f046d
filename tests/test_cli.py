"""The `regl` command's error paths: one line on stderr, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def regl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "regl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["partition", "--dataset", "cifar-77"], "unknown dataset 'cifar-77'"),
        (["partition", "--partition", "classes", "-k", "11"], "classes per client must be between 1 and 10"),
        (["partition", "--partition", "dirichlet", "--beta", "0"], "Dirichlet beta must be > 0"),
        (["partition", "--clients", "7000"], "7000 clients but only 6000 samples"),
        (["partition", "--dataset", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["fl", "--dataset", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["fl", "--rounds", "0"], "--rounds must be at least 1"),
        (["fl", "--clients", "1"], "--clients must be at least 2"),
        (["centralized", "--partition", "dirichlet", "--beta", "-2"], "Dirichlet beta must be > 0"),
        (["fl", "--fill", "diffusion+sparkle"], "unknown fill 'diffusion+sparkle'"),
        (["fl", "--fill", "diffusion+noise", "--fill-mix", "3:1:1"], "gives 3 weights for the 2 sources"),
        (["fl", "--fill", "noise", "--fill-supplement", "-1"], "fill supplement must be ≥ 0"),
        (["fl", "--fill", "diffusion", "--fill-base", "/no/such/model"], "/no/such/model"),
        (["bench", "--arms", "none,sparkle"], "unknown fill 'sparkle'"),
        (["bench", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = regl(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("regl: error: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_partition_is_rejected_by_the_parser():
    done = regl("partition", "--partition", "shards")
    assert done.returncode == 2
    assert "invalid choice: 'shards'" in done.stderr
    assert "Traceback" not in done.stderr


def test_partition_prints_table_and_saves_heatmap(tmp_path):
    out = tmp_path / "heat.png"
    done = regl("partition", "--partition", "classes", "-k", "1", "--clients", "10", "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["client", "0", "1"]
    client_rows = [line.split() for line in lines[1:11]]
    assert all(row[-2] == "inf" for row in client_rows)  # one class each: γ_j infinite
    assert "unassigned samples: 0" in done.stdout
    assert out.read_bytes()[:4] == b"\x89PNG"
