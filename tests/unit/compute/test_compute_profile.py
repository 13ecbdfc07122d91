from __future__ import annotations

import os

import pytest
from unit.compute.compute_tasks import mlp_spec

from ogpu_node.compute import UnknownProfile, WorkerFailed, profile_env, train_segment_in_profile


def test_cpu_avx2_1t_profile_env():
    assert profile_env("cpu-avx2-1t") == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def test_unknown_profile_is_rejected():
    with pytest.raises(UnknownProfile, match="gpu-fast"):
        profile_env("gpu-fast")
    with pytest.raises(UnknownProfile):
        train_segment_in_profile("gpu-fast", mlp_spec(), None, 1)


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
