"""A non-editable install works away from the source tree: the shipped base travels in the wheel."""

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_in_the_wheel_list():
    configured = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        p
        for p in find_namespace_packages(str(ROOT), include=["regl*", "clients*", "service*"])
        if (ROOT / p.replace(".", "/") / "__init__.py").exists()
    }
    assert found <= configured, f"packages missing from pyproject: {sorted(found - configured)}"


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_generates_from_an_unrelated_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("regl-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    # The fresh venv sees this environment's dependencies (torch, diffusers, ...) but not its
    # editable regl: a path listed in a .pth file is added without running the .pth files inside it.
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import regl; print(regl.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(env_dir), where
    done = subprocess.run(
        [
            str(env_dir / "bin" / "regl"),
            "generate",
            "--class",
            "sneaker",
            "--n",
            "2",
            "--steps",
            "2",
            "--threads",
            "1",
            "--out",
            "pngs",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((elsewhere / "pngs").glob("*.png"))) == 2
