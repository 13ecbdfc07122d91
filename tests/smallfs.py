"""A small real filesystem for full-disk tests: a tmpfs the test mounts (root only; CI runs as root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = "filler"


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (as mount's size=, e.g. "8m") at `path`; unmounted on exit.

    Skips the test where it cannot mount: not root, or no mount permission (a restricted container)."""
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)  # a straggler still has a file open


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(fs: Path, leave: int = 0) -> Path:
    """Write a filler file until at most `leave` bytes are free on `fs`; returns its path."""
    filler = fs / FILLER
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 4096):
            block = bytes(chunk)
            while free_bytes(fs) - chunk >= leave:
                try:
                    os.write(fd, block)
                except OSError:  # ENOSPC: the filesystem counts pages differently than statvfs says
                    break
    finally:
        os.close(fd)
    return filler
