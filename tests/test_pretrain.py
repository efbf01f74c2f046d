"""`regl pretrain-base` at the test size: a loadable base, resume, and a longer run from a finished base."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from regl.cli import main
from regl.generate.generator import load_pipeline


def regl(capsys, *args) -> tuple[int, str]:
    code = main([*args, "--threads", "1"])
    return code, capsys.readouterr().err


def pretrain(capsys, out: Path, *extra: str) -> tuple[int, str]:
    sizes = ("--size", "test", "--vae-steps", "2", "--batch-size", "4", "--checkpoint-every", "1")
    return regl(capsys, "pretrain-base", "--out", str(out), *sizes, *extra)


def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(next((folder / part).glob("*.safetensors")))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "base"
    assert main(["pretrain-base", "--out", str(out), "--size", "test", "--vae-steps", "2", "--unet-steps", "2",
                 "--batch-size", "4", "--threads", "1"]) == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_pretrain_writes_a_loadable_base_and_its_checkpoint(base):
    pipe = load_pipeline(base)
    assert pipe.vae.config.scaling_factor != 1.0
    state = torch.load(base.with_name("base.pretrain") / "checkpoint" / "state.pt", weights_only=False)
    assert (state["stage"], state["step"]) == ("unet", 2)


@pytest.mark.slow
def test_a_checkpoint_is_not_overwritten_without_resume(capsys, base):
    before = weights(base, "unet")
    code, err = pretrain(capsys, base, "--unet-steps", "2")
    assert code != 0 and "--resume" in err
    assert same(weights(base, "unet"), before)


@pytest.mark.slow
def test_resume_extends_a_finished_run(capsys, tmp_path):
    out = tmp_path / "base"
    assert pretrain(capsys, out, "--unet-steps", "2")[0] == 0
    vae, unet = weights(out, "vae"), weights(out, "unet")
    code, err = pretrain(capsys, out, "--unet-steps", "4", "--resume")
    assert code == 0, err
    state = torch.load(tmp_path / "base.pretrain" / "checkpoint" / "state.pt", weights_only=False)
    assert (state["stage"], state["step"]) == ("unet", 4)
    assert same(weights(out, "vae"), vae) and not same(weights(out, "unet"), unet)


@pytest.mark.slow
def test_continue_from_trains_the_unet_of_a_finished_base(capsys, tmp_path, base):
    out = tmp_path / "longer"
    code, err = pretrain(capsys, out, "--unet-steps", "3", "--continue-from", str(base))
    assert code == 0, err
    state = torch.load(tmp_path / "longer.pretrain" / "checkpoint" / "state.pt", weights_only=False)
    assert (state["stage"], state["step"]) == ("unet", 3)
    for part in ("vae", "text_encoder"):
        assert same(weights(out, part), weights(base, part))
    assert not same(weights(out, "unet"), weights(base, "unet"))
    assert load_pipeline(out).tokenizer.get_vocab() == load_pipeline(base).tokenizer.get_vocab()


def test_continue_from_a_folder_that_is_no_base_is_refused(capsys, tmp_path):
    code, err = pretrain(capsys, tmp_path / "out", "--continue-from", str(tmp_path / "missing"))
    assert code != 0 and "missing does not exist" in err
    assert not (tmp_path / "out").exists()
