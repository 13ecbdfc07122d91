"""What a provider does with someone else's task documents (issue 10): every malformed one raises a
document error the service turns into one line ("task N: not bidding: …"), never anything that would
end the service; a job that fails frees its slot; the provider's own files are read within bounds.

Documents go through what `fetch_documents` does after the download (`validate` of the bytes), then
`build_context` and `job_of`, as `Provider._consider` runs them; the node, the download and the
service itself are in tests/integration/test_provider_hostile_tasks.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.context import DOCUMENT_ERRORS, build_context, job_of
from ogpu_node.apps.provider.core import ProviderCore
from ogpu_node.apps.provider.messages import Assessed, PlaceBid, StartExecutor, TrainingEnded
from ogpu_node.apps.provider.store import MAX_VOTE_BYTES, ProviderFiles, Vote
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources
from ogpu_node.compute.prescription import validate
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.protocol import DEFAULT_PROFILE
from tests.malformed_documents import (
    GOOD,
    bad_datasets,
    bad_prescriptions,
    bad_weights,
    edit,
    good_dataset,
    mutated_prescriptions,
)

DATASET = good_dataset()
WITH_DATA = edit(GOOD, "D.blob", "0x" + merkle_root(DATASET).hex())
BAD_PRESCRIPTIONS = bad_prescriptions(WITH_DATA)
NO_SEED = bytes(32)  # while bidding the chain has fixed no seed yet


def assess(prescription: bytes, dataset: bytes = DATASET, weights: bytes | None = None) -> Job:
    """A task's documents, as the provider reads them before it bids."""
    return job_of(build_context(7, (validate(prescription), dataset, weights), NO_SEED))


def test_the_good_task_is_assessed():
    assert assess(json.dumps(WITH_DATA).encode()).max_payment == int(GOOD["I"]["max_payment"])


@pytest.mark.parametrize("name", sorted(BAD_PRESCRIPTIONS))
def test_a_bad_prescription_is_a_document_error(name):
    with pytest.raises(DOCUMENT_ERRORS):
        assess(BAD_PRESCRIPTIONS[name])


@pytest.mark.parametrize("name", sorted(bad_datasets()))
def test_a_bad_dataset_is_a_document_error(name):
    with pytest.raises(DOCUMENT_ERRORS):
        assess(json.dumps(WITH_DATA).encode(), dataset=bad_datasets()[name])


@pytest.mark.parametrize("name", sorted(bad_weights()))
def test_bad_initial_weights_are_a_document_error_before_any_bid(name):
    doc = edit(WITH_DATA, "M.initial_weights", "0x" + "ab" * 32)
    with pytest.raises(DOCUMENT_ERRORS, match="initial_weights"):
        assess(json.dumps(doc).encode(), weights=bad_weights()[name])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_prescriptions(WITH_DATA))
def test_a_mutated_prescription_is_assessed_or_is_a_document_error(doc):
    try:
        text = json.dumps(doc).encode()
    except ValueError:  # NaN and friends are JSON to Python only; dumps writes them anyway
        return
    try:
        assess(text)
    except DOCUMENT_ERRORS:
        pass


# -- a failed job frees its slot --

RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=(DEFAULT_PROFILE,))
ME = "0x" + "1a" * 20


def small_job() -> Job:
    return Job(devices=("cpu",), numeric_profile=DEFAULT_PROFILE, memory_mib=1.0, total_flops=1e9,
               segment_flops=1e8, segment_window_s=60, max_payment=10**18)


def executing_one(error: str | None) -> ProviderCore:
    """A core with one job slot, its task 1 won and its training ended (with ``error``)."""
    core = ProviderCore(ME, BidStrategy(cost_per_second=10**15), RES, max_jobs=1)
    assert [type(a) for a in core.receive(Assessed(1, small_job()))] == [PlaceBid]
    won = Event("TaskAssigned", {"taskId": 1, "executor": ME, "price": 1, "seed": b"\x01" * 32}, 1, 0)
    assert core.receive(won) == [StartExecutor(1)]
    assert core.receive(Assessed(2, small_job())) == []  # busy: its one slot trains task 1
    assert core.receive(TrainingEnded(1, error)) == []
    return core


def test_a_job_that_failed_no_longer_holds_its_slot():
    core = executing_one("initial_weights: missing tensor 'net.0.bias' for mlp")
    assert [type(a) for a in core.receive(Assessed(2, small_job()))] == [PlaceBid]
    assert 1 in core.executing  # it still owes the reveals of what it committed


def test_a_job_that_trained_every_segment_keeps_its_slot_until_the_task_ends():
    assert executing_one(None).receive(Assessed(2, small_job())) == []


# -- the provider's own files --

def test_a_damaged_vote_file_reads_as_no_vote(tmp_path):
    files = ProviderFiles(tmp_path)
    vote = Vote(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    files.save_vote(1, 1, 0, vote)
    assert files.load_vote(1, 1, 0) == vote
    path = files.vote_path(1, 1, 0)
    for damaged in (b"[" * 100_000 + b"]" * 100_000, b" " * (MAX_VOTE_BYTES + 1) + b"{}", b"{", b"[]"):
        path.write_bytes(damaged)
        assert files.load_vote(1, 1, 0) is None
