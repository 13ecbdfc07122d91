"""Shared fixtures: dev accounts, an in-process chain, and a real `ogpu-node run --dev` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.db import LMDBStore

ROOT = Path(__file__).resolve().parents[1]
_LISTEN = re.compile(r"Listening on (http://\S+)")
_WS = re.compile(r"WebSocket on\s+(ws://\S+)")


@pytest.fixture(scope="session")
def dev_accounts():
    return derive_dev_accounts(10)


@pytest.fixture
def chain(tmp_path) -> Iterator[Chain]:
    store = LMDBStore(tmp_path / "chaindata")
    yield Chain(store, load_genesis(DEV_GENESIS))
    store.close()


@dataclass
class NodeProcess:
    process: subprocess.Popen
    datadir: Path
    http_url: str
    ws_url: str | None
    log_path: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_node(datadir: Path, *extra: str, timeout: float = 60.0) -> NodeProcess:
    """Start `ogpu-node run --dev` on ephemeral ports and wait for its banner."""
    log_path = datadir.parent / f"{datadir.name}-node.log"
    start_offset = log_path.stat().st_size if log_path.exists() else 0  # a restart appends
    cmd = [
        sys.executable, "-m", "ogpu_node.cli.main", "run", "--dev", "--datadir", str(datadir),
        "--http.port", "0", "--ws.port", "0", *extra,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, "rb") as log_file:
            log_file.seek(start_offset)
            text = log_file.read().decode(errors="replace")
        http = _LISTEN.search(text)
        if http:
            ws = _WS.search(text)
            return NodeProcess(process, datadir, http.group(1), ws.group(1) if ws else None, log_path)
        if process.poll() is not None:
            raise RuntimeError(f"node exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"node did not start within {timeout}s:\n{log_path.read_text()}")


@pytest.fixture
def node_factory(tmp_path):
    started: list[NodeProcess] = []

    def factory(*extra: str, datadir: Path | None = None) -> NodeProcess:
        node = start_node(datadir or tmp_path / f"node{len(started)}", *extra)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.kill(signal.SIGTERM)


@pytest.fixture
def dev_node(node_factory) -> NodeProcess:
    return node_factory()
