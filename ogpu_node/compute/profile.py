"""Numeric profiles: the thread count and instruction-set paths that make CPU training bitwise
reproducible across runs and machines (DESIGN.md §6).

torch reads `ATEN_CPU_CAPABILITY`, `MKL_CBWR` and `ONEDNN_MAX_CPU_ISA` once, when it loads, so a
profile cannot be applied to a process that already imported torch. Training under a profile runs
in a worker process (worker.py) started with `worker_env(...)` as its environment, given to the
process at exec: the parent's `os.environ` is only read, never changed, so threads reading it
meanwhile (HTTP clients iterate it for proxies) never see a profile half applied. The worker checks
the environment and the CPU capability torch reports before it trains.

A leaf module: it imports neither torch nor the trainer, so a worker can read it before torch loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ogpu_node.compute.errors import ProfileUnavailable, UnknownProfile
from ogpu_node.types.protocol import DEFAULT_PROFILE

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the thread pools torch sizes at load


@dataclass(frozen=True)
class NumericProfile:
    name: str
    threads: int
    cpu_capability: str  # what torch.backends.cpu.get_cpu_capability() must report
    env: tuple[tuple[str, str], ...]


PROFILES: dict[str, NumericProfile] = {
    DEFAULT_PROFILE: NumericProfile(
        name=DEFAULT_PROFILE,
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

# Every variable a profile sets: what a worker reports back about its environment.
NUMERIC_VARS = tuple(sorted({k for p in PROFILES.values() for k, _ in p.env} | set(THREAD_VARS)))


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


def worker_env(profile: str | None, threads: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a worker process: `base` (default: a copy of this process's
    environment, only read) with `profile`'s variables, or with `threads` threads when None."""
    env = dict(os.environ if base is None else base)
    if profile is not None:
        env.update(profile_env(profile))
    else:
        env.update({k: str(threads) for k in THREAD_VARS})
    return env


def apply_profile(name: str) -> None:
    """Inside a worker started with `worker_env(name)`: pin threads, check torch honours it."""
    profile = get_profile(name)
    if "torch" in sys.modules:  # it read its environment already: too late to set a profile
        raise ProfileUnavailable(f"{name}: torch was imported before the profile was applied")
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
