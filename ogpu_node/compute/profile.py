"""Numeric profiles: the thread count and instruction-set paths that make CPU training bitwise
reproducible across runs and machines (DESIGN.md §6).

torch reads `ATEN_CPU_CAPABILITY`, `MKL_CBWR` and `ONEDNN_MAX_CPU_ISA` once, when it loads, so a
profile cannot be applied to a process that already imported torch. Training under a profile runs
in a worker process (multiprocessing "spawn", worker.py), whose environment is the profile's from
the moment it execs; the worker checks the environment and the CPU capability torch reports before
it trains. Results come back as bytes and JSON, never pickled tensors.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ogpu_node.compute.errors import ProfileUnavailable, UnknownProfile

if TYPE_CHECKING:
    from ogpu_node.compute.trainer import SegmentResult, TrainSpec


@dataclass(frozen=True)
class NumericProfile:
    name: str
    threads: int
    cpu_capability: str  # what torch.backends.cpu.get_cpu_capability() must report
    env: tuple[tuple[str, str], ...]


PROFILES: dict[str, NumericProfile] = {
    "cpu-avx2-1t": NumericProfile(
        name="cpu-avx2-1t",
        threads=1,
        cpu_capability="AVX2",
        env=(
            ("ATEN_CPU_CAPABILITY", "avx2"),
            ("MKL_CBWR", "AVX2"),
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("OMP_NUM_THREADS", "1"),
            ("MKL_NUM_THREADS", "1"),
        ),
    ),
}


def get_profile(name: str) -> NumericProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(
            f"unknown numeric profile {name!r} (known: {', '.join(sorted(PROFILES))})"
        ) from None


def profile_env(name: str) -> dict[str, str]:
    """Environment variables to set before torch is imported."""
    return dict(get_profile(name).env)


def apply_profile(name: str) -> None:
    """Inside a worker started with `profile_env(name)`: pin threads, check torch honours it."""
    profile = get_profile(name)
    wrong = sorted(k for k, v in profile.env if os.environ.get(k) != v)
    if wrong:
        raise ProfileUnavailable(f"{name}: {wrong[0]} not set before torch was imported")
    import torch

    torch.set_num_threads(profile.threads)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != profile.cpu_capability:
        raise ProfileUnavailable(
            f"{name}: torch runs with CPU capability {capability}, not {profile.cpu_capability}"
        )


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_segment_in_profile(
    profile: str,
    spec: TrainSpec,
    start: bytes | None,
    steps: int,
    hash_steps: Iterable[int] = (),
    timeout: float | None = None,
) -> SegmentResult:
    """`train_segment` in a fresh spawned process under `profile`; blocks until it finishes.
    (A provider keeps a `worker.Worker` instead, to pay the process start once.)"""
    from ogpu_node.compute.trainer import SegmentResult
    from ogpu_node.compute.worker import Worker

    with Worker(profile) as worker:
        run = worker.train(spec, start, steps, hash_steps, timeout=timeout)
    return SegmentResult(run.checkpoint, run.losses, run.state_hashes)
