"""The built wheel, installed as a user installs it, runs a dev node (issue 9: "an installable wheel").

The wheel is built from a copy of the sources (so the checkout gets no build/ folder), installed with
pip into a fresh venv made from the base interpreter (no system site-packages, no dev extras), and
started from a directory outside the repository, so nothing is imported from the checkout and the
ABIs and the dev genesis must come from the installed package data.

The install is the slow part (~45 s, torch's CPU wheel from this machine's package index): pip runs
with --no-compile, and the .venv's pip installs into the new venv (`pip --python`), so the venv needs
no pip of its own.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LISTEN = re.compile(r"^Listening on (http://127\.0\.0\.1:\d+)$", re.M)
INSTALL_S = 420  # bound on building and installing; the whole test is bounded by its timeout marker
PACKAGE_DATA = ("ogpu_node/contracts/abis/*.json", "ogpu_node/contracts/abis/*.sol", "ogpu_node/config/networks/*.json")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell: none of the test run's Python settings (PYTHONPATH, the
    .venv's VIRTUAL_ENV) leak into the installed program."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return env


def build_wheel(work: Path) -> Path:
    source = work / "src"
    shutil.copytree(ROOT / "ogpu_node", source / "ogpu_node", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    # The .venv's setuptools builds it (fast, offline); without one, pip fetches the build backend.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=INSTALL_S,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (work / "dist").glob("ogpu_node-*.whl")
    return wheel


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # ~1 GiB with torch: not kept with pytest's last runs


def test_wheel_installed_without_dev_extras_runs_a_dev_node(work):
    tmp_path = work
    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for pattern in PACKAGE_DATA:
        expected = {str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)}
        assert expected and expected <= names, f"{pattern} missing from the wheel: {sorted(expected - names)}"

    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-compile", "-q", str(wheel)],
        capture_output=True, text=True, timeout=INSTALL_S,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    install_s = time.monotonic() - started
    print(f"wheel built and installed in {install_s:.1f} s")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(elsewhere)
    # The installed package, not the checkout; and no dev extra came with it.
    probe = subprocess.run(
        [str(python), "-c",
         "import importlib.util, ogpu_node; print(ogpu_node.__file__); "
         "print(*(importlib.util.find_spec(m) is not None for m in ('pytest', 'vyper', 'hypothesis')))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    location, dev_extras = probe.stdout.splitlines()
    assert Path(location).is_relative_to(venv), location
    assert dev_extras == "False False False"

    ogpu_node = str(venv / "bin" / "ogpu-node")
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log_file:
        node = subprocess.Popen(
            [ogpu_node, "run", "--dev", "--datadir", "data", "--http.port", "0", "--ws.port", "0"],
            cwd=elsewhere, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        url = wait_for_rpc_url(node, log_path, timeout=90)
        status = subprocess.run(
            [ogpu_node, "task", "status", "1", "--rpc-url", url],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
        )
        output = status.stdout + status.stderr
        assert "Traceback" not in output, output
        assert status.returncode == 1, output
        assert status.stderr.splitlines() == ["Error: task 1 does not exist (tasks: 0)"], output
    finally:
        stop(node)
    assert "Traceback" not in log_path.read_text(errors="replace")


def wait_for_rpc_url(node: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = LISTEN.search(text)
        if match:
            return match.group(1)
        if node.poll() is not None:
            raise AssertionError(f"the installed node exited with {node.returncode}:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"no RPC URL within {timeout} s:\n{log_path.read_text(errors='replace')}")


def stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=30)
