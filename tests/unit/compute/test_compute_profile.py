from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import pytest
from unit.compute.compute_tasks import mlp_spec

from ogpu_node.compute import (
    PROFILES,
    ProfileUnavailable,
    UnknownProfile,
    Worker,
    WorkerFailed,
    profile_env,
    train_segment_in_profile,
)
from ogpu_node.compute.profile import NUMERIC_VARS, apply_profile, worker_env
from ogpu_node.types.protocol import DEFAULT_PROFILE


class ReadOnlyEnviron(Mapping[str, str]):
    """Stands in for os.environ and refuses every write: another thread may be iterating the real
    one (HTTP clients read it for proxies), so starting a worker must only read it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.writes: list[str] = []  # kept even if a caller swallows the error

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def copy(self) -> dict[str, str]:
        return dict(self._values)

    def _refuse(self, *args: object, **kwargs: object) -> None:
        self.writes.append(repr(args))
        raise AssertionError(f"os.environ written: {args!r}")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = putenv = unsetenv = _refuse


def test_cpu_avx2_1t_profile_env():
    assert DEFAULT_PROFILE == "cpu-avx2-1t" and DEFAULT_PROFILE in PROFILES
    assert profile_env("cpu-avx2-1t") == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def test_worker_env_is_the_base_with_the_profile_or_the_thread_count():
    base = {"PATH": "/bin", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "7"}
    assert worker_env("cpu-avx2-1t", base=base) == {"PATH": "/bin", **profile_env("cpu-avx2-1t")}
    assert worker_env(None, 3, base=base) == {**base, "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert base == {"PATH": "/bin", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "7"}


def test_unknown_profile_is_rejected():
    with pytest.raises(UnknownProfile, match="gpu-fast"):
        profile_env("gpu-fast")
    with pytest.raises(UnknownProfile):
        train_segment_in_profile("gpu-fast", mlp_spec(), None, 1)


def test_a_profile_cannot_be_applied_once_torch_is_loaded():
    with pytest.raises(ProfileUnavailable, match="torch was imported before"):
        apply_profile("cpu-avx2-1t")  # this test process has torch


def test_a_profiled_worker_starts_without_writing_os_environ(monkeypatch):
    """The defect of issue 9: the profile was set by mutating the parent's os.environ around the
    spawn, and a thread iterating it died with KeyError. Now every write fails this test, and the
    worker still reports the profile's environment and torch's CPU capability under it."""
    parent = ReadOnlyEnviron({**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "7"})
    with monkeypatch.context() as patch:  # undone before pytest itself writes PYTEST_CURRENT_TEST
        patch.setattr(os, "environ", parent)
        with Worker("cpu-avx2-1t") as worker:
            worker.start()
            info = worker.describe()
            run = worker.train(mlp_spec(), None, 2, timeout=120)
    assert parent.writes == []
    assert parent["ATEN_CPU_CAPABILITY"] == "default" and parent["OMP_NUM_THREADS"] == "7"
    assert set(NUMERIC_VARS) == set(profile_env("cpu-avx2-1t"))
    assert info.env == profile_env("cpu-avx2-1t")
    assert info.cpu_capability == "AVX2" and info.threads == 1
    assert len(run.losses) == 2


def test_worker_under_cpu_avx2_1t_gives_identical_bytes_twice():
    spec = mlp_spec()
    a = train_segment_in_profile("cpu-avx2-1t", spec, None, 6, hash_steps=[3], timeout=120)
    b = train_segment_in_profile("cpu-avx2-1t", spec, None, 6, hash_steps=[3], timeout=120)
    assert a.checkpoint == b.checkpoint
    assert a.losses == b.losses and len(a.losses) == 6
    assert a.state_hashes == b.state_hashes and set(a.state_hashes) == {3}


def test_worker_errors_come_back_as_one_line():
    with pytest.raises(WorkerFailed, match="outside this segment"):
        train_segment_in_profile("cpu-avx2-1t", mlp_spec(), None, 2, hash_steps=[9], timeout=120)


def test_profile_env_is_not_left_in_the_parent():
    before = {k: os.environ.get(k) for k in profile_env("cpu-avx2-1t")}
    train_segment_in_profile("cpu-avx2-1t", mlp_spec(), None, 1, timeout=120)
    assert {k: os.environ.get(k) for k in before} == before
