from __future__ import annotations

import os
import signal
import threading

import pytest
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import (
    Fault,
    UnknownProfile,
    Worker,
    WorkerFailed,
    checkpoint_hash,
    train_segment_in_profile,
)
from ogpu_node.compute.checkpoint import read_metadata
from ogpu_node.compute.trainer import decode_spec, encode_spec


@pytest.fixture(scope="module")
def worker():
    with Worker(None) as w:
        yield w


def _spy(worker, monkeypatch) -> list[dict]:
    """Record the headers the parent sends."""
    headers: list[dict] = []
    call = worker._call

    def recording(header, payloads, timeout):
        headers.append(header)
        return call(header, payloads, timeout)

    monkeypatch.setattr(worker, "_call", recording)
    return headers


def test_many_jobs_run_in_one_process_and_resume_bit_for_bit(worker):
    spec = mlp_spec()
    straight = worker.train(spec, None, 8, hash_steps=[3, 8])
    pid = worker.pid
    first = worker.train(spec, None, 3)
    second = worker.train(spec, first.checkpoint, 5)
    assert worker.pid == pid
    assert second.checkpoint == straight.checkpoint
    assert first.losses + second.losses == straight.losses
    assert straight.state_hashes == {3: checkpoint_hash(first.checkpoint), 8: checkpoint_hash(straight.checkpoint)}
    assert straight.cpu_s >= 0 and straight.wall_s >= 0


def test_a_spec_is_sent_once_and_evicted_after_four_others(worker, monkeypatch):
    headers = _spy(worker, monkeypatch)
    spec = mlp_spec(seed=101)
    worker.train(spec, None, 1)
    worker.train(spec, None, 1)
    worker.train(decode_spec(encode_spec(spec)), None, 1)  # same content, another object
    assert [h["has_spec"] for h in headers] == [True, False, False]
    for seed in range(102, 106):
        worker.train(mlp_spec(seed=seed), None, 1)
    headers.clear()
    worker.train(spec, None, 1)
    assert headers[0]["has_spec"] and headers[0]["payloads"] == 1


def test_job_errors_come_back_as_one_line_and_the_worker_lives_on(worker):
    worker.start()  # idempotent
    pid = worker.pid
    with pytest.raises(WorkerFailed, match="outside this segment") as info:
        worker.train(mlp_spec(), None, 2, hash_steps=[9])
    assert info.value.error_type == "InvalidTrainSpec"
    with pytest.raises(WorkerFailed) as info:
        worker.train(mlp_spec(), b"not a checkpoint", 2)
    assert info.value.error_type == "InvalidCheckpoint"
    assert worker.pid == pid and len(worker.train(mlp_spec(), None, 2).losses) == 2


def test_a_fault_runs_in_the_worker(worker):
    spec = mlp_spec()
    honest = worker.train(spec, None, 4)
    faulty = worker.train(spec, None, 4, fault=Fault("skip-steps"))
    assert faulty.checkpoint != honest.checkpoint and faulty.state_hashes == {}
    assert read_metadata(faulty.checkpoint)["step"] == 4 and len(faulty.losses) == 3


def test_measure_throughput_is_positive(worker):
    assert worker.measure_throughput(0.2) > 0


def test_a_worker_without_profile_runs_with_its_thread_count(worker):
    info = worker.describe()
    assert info.threads == 1
    assert info.env["OMP_NUM_THREADS"] == "1" and info.env["MKL_NUM_THREADS"] == "1"
    assert info.cpu_capability  # whatever this machine offers


def test_an_unknown_op_is_an_error_and_the_worker_lives_on(worker):
    pid = worker.pid
    with worker._lock, pytest.raises(WorkerFailed, match="unknown op"):
        worker._call({"op": "dance", "payloads": 0}, [], 30)
    assert worker.pid == pid and worker.describe().threads == 1


def test_concurrent_callers_take_turns(worker):
    spec = mlp_spec()
    expected = worker.train(spec, None, 5).checkpoint
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(worker.train(spec, None, 5).checkpoint))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_a_dead_worker_fails_one_call_then_restarts():
    with Worker(None) as worker:
        worker.start()
        pid = worker.pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerFailed, match="died"):
            worker.train(mlp_spec(), None, 1)
        assert len(worker.train(mlp_spec(), None, 1).losses) == 1
        assert worker.pid != pid


def test_a_timeout_ends_the_job_and_the_next_call_restarts():
    with Worker(None) as worker:
        with pytest.raises(WorkerFailed, match="timed out"):
            worker.train(text_spec(), None, 5000, timeout=0.05)
        assert worker.pid is None
        assert len(worker.train(mlp_spec(), None, 1).losses) == 1


def test_close_aborts_a_job_in_flight():
    worker = Worker(None)
    worker.start()
    errors: list[BaseException] = []

    def long_job():
        try:
            worker.train(text_spec(), None, 100_000)
        except WorkerFailed as e:
            errors.append(e)

    thread = threading.Thread(target=long_job)
    thread.start()
    while not worker._lock.locked():
        thread.join(0.01)
    worker.close()
    thread.join()
    assert len(errors) == 1 and worker.pid is None


def test_profile_worker_matches_train_segment_in_profile():
    spec = mlp_spec()
    with Worker("cpu-avx2-1t") as worker:
        run = worker.train(spec, None, 6, hash_steps=[3], timeout=120)
    once = train_segment_in_profile("cpu-avx2-1t", spec, None, 6, hash_steps=[3], timeout=120)
    assert (run.checkpoint, run.losses, run.state_hashes) == (once.checkpoint, once.losses, once.state_hashes)


def test_bad_arguments_are_refused_up_front():
    with pytest.raises(UnknownProfile):
        Worker("gpu-fast")
    with pytest.raises(ValueError, match="threads"):
        Worker(None, threads=0)
