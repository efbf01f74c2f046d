import pytest

from regl.fl.bench import arm_options, check_arms, format_table
from regl.errors import ReglError


def test_arm_options():
    assert arm_options("iid", "75:25") == ["--partition", "iid", "--fill", "none"]
    assert arm_options("diffusion-base", "") == ["--fill", "diffusion", "--fill-no-lora"]
    assert arm_options("diffusion+noise", "75:25") == ["--fill", "diffusion+noise", "--fill-mix", "75:25"]
    assert arm_options("diffusion", "75:25") == ["--fill", "diffusion"]  # one source: the mix does not apply
    with pytest.raises(ReglError, match="unknown fill 'sparkle'"):
        check_arms(["none", "sparkle"])


def test_table_is_mean_and_std_over_seeds():
    rows = [
        {"arm": "none", "seed": 0, "accuracy": 0.1, "minority_accuracy": None, "auc": 0.7,
         "personalized_accuracy": 1.0, "fill_seconds": 0.0, "wall_seconds": 10.0},
        {"arm": "none", "seed": 1, "accuracy": 0.3, "minority_accuracy": None, "auc": 0.9,
         "personalized_accuracy": 1.0, "fill_seconds": 0.0, "wall_seconds": 30.0},
        {"arm": "noise", "seed": 0, "error": "exit code 1", "wall_seconds": 1.0},
    ]
    table = format_table(rows, ["none", "noise", "mixup"]).splitlines()
    assert table[2] == "| none | 20.00 ± 10.00 | — | 80.00 ± 10.00 | 100.00 ± 0.00 | 0 | 20 | 0,1 |"
    assert table[3].startswith("| noise | failed: exit code 1 |")
    assert table[4].startswith("| mixup | not run yet |")
