"""The wheel lives beside other code: it works away from the source tree, installs nothing under a
generic top-level name, and takes whatever torch (and the rest) its ranges admit."""

import os
import subprocess
import sys
import sysconfig
import time
import tomllib
import venv
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """constraints.txt's exact versions by package name."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.split()[0]
    return pins


def test_every_package_is_in_the_wheel_list():
    configured = set(PYPROJECT["tool"]["setuptools"]["packages"])
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    found = {
        p
        for p in find_namespace_packages(str(ROOT), include=["regl*"])
        if (ROOT / p.replace(".", "/") / "__init__.py").exists()
    }
    found |= {
        f"{name}.{sub}" if sub else name
        for name, folder in package_dir.items()
        for sub in [""] + find_namespace_packages(str(ROOT / folder))
        if (ROOT / folder / sub.replace(".", "/") / "__init__.py").exists()
    }
    assert found <= configured, f"packages missing from pyproject: {sorted(found - configured)}"
    assert all(name.startswith("regl") for name in configured), "a package outside regl would land top-level"


def test_dependencies_are_ranges_that_admit_the_pins_and_later_releases():
    pins = _pins()
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        assert not any(spec.operator in ("==", "===") for spec in requirement.specifier), text
        pinned = pins.get(requirement.name.lower())
        if pinned:
            assert requirement.specifier.contains(pinned), f"{text} refuses constraints.txt's {pinned}"
    torch = next(Requirement(t) for t in PYPROJECT["project"]["dependencies"] if t.startswith("torch"))
    assert torch.specifier.contains("2.14.1") and not torch.specifier.contains("3.0.0")


def test_flower_components_load_from_the_package():
    components = PYPROJECT["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "regl.clients.server_app:app", "clientapp": "regl.clients.client_app:app"}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding the built wheel, seeing this environment's dependencies but not its editable regl.

    The venv's own site-packages also claims a torch 2.14.1 (its metadata only): the wheel's
    requirements are resolved against it.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("regl-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    # a path listed in a .pth file is added without running the .pth files inside it: no editable regl
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return wheel, env_dir, site


@pytest.mark.slow
def test_wheel_installs_beside_another_torch_and_lands_under_regl_only(wheel_venv):
    wheel, env_dir, site = wheel_venv
    other_torch = site / "torch-2.14.1.dist-info"
    other_torch.mkdir()
    (other_torch / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.14.1\n")
    try:
        resolved = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--dry-run"]
            + ["--no-index", "--report", "-", "-q", str(wheel)],
            capture_output=True,
            text=True,
        )
    finally:
        (other_torch / "METADATA").unlink()
        other_torch.rmdir()
    assert resolved.returncode == 0, resolved.stderr
    assert '"name": "torch"' not in resolved.stdout  # satisfied by the torch already there, not replaced
    top_level = {Path(name).parts[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert top_level == {"regl", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top_level


@pytest.mark.slow
@pytest.mark.e2e
def test_installed_wheel_serves_and_generates_beside_a_user_service_module(wheel_venv, tmp_path):
    wheel, env_dir, _ = wheel_venv
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("service", "clients"):
        (elsewhere / f"{name}.py").write_text(f"WHOSE = 'the user\\'s {name}'\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(elsewhere)}
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import regl, regl.service.app, regl.clients.client_app, service, clients; "
            "print(regl.__file__); print(service.WHOSE); print(clients.WHOSE)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert Path(where[0]).is_relative_to(env_dir), where
    assert where[1:] == ["the user's service", "the user's clients"]

    done = subprocess.run(
        [str(env_dir / "bin" / "regl"), "generate", "--class", "7", "-n", "2", "--steps", "2"]
        + ["--threads", "1", "--out", "pngs"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(list((elsewhere / "pngs").glob("*.png"))) == 2

    from regl.service.threaded_server import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(env_dir / "bin" / "regl"), "serve", "--port", str(port), "--threads", "1", "--store", "store"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "regl serve did not come up"
                time.sleep(0.3)
        assert model.status_code == 200 and model.json()["classes"] == [str(d) for d in range(10)]
    finally:
        server.terminate()
        server.wait(timeout=30)
