"""The fault matrix end to end in-process: real training (trainer), the council's re-run and comparison
(verifier) and the Task contract on real blocks (contracts), for every dishonest executor of issue 5.

Each case: the executor commits a checkpoint made by `compute.faults.train_faulty`; the three members
re-run the segment honestly from the chain's seed (with the state hash at the drawn step under
`exact`, comparing with `allclose` otherwise) and vote; the council rejects, the executor's collateral
is slashed, the task goes to the replacement bidder, which trains honestly and is accepted and never
slashed. The cast and the in-process chain are test_task_faults.py's.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_task_faults
from eth_hash.auto import keccak
from safetensors.numpy import save
from test_task_checkpoints import PROVIDER_STAKE, one
from test_task_faults import PRICE_E, PRICE_Y, assert_never_slashed, start

from ogpu_node.compute import Fault, equivalence, spec_from_prescription, train_faulty, train_segment
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, drawn_step, segment_bounds, training_seed
from ogpu_node.types.protocol import Equivalence

RTOL, ATOL = 1e-4, 1e-5
cast, s = test_task_faults.cast, test_task_faults.s  # that file's fixtures: the cast and its chain


def prescription(equivalence_kind: str) -> Prescription:
    e = {"kind": "exact"} if equivalence_kind == "exact" else {"kind": "allclose", "rtol": RTOL, "atol": ATOL}
    return Prescription.from_json({
        "kind": "batch", "D": {"blob": "0x" + "11" * 32, "format": "tensors"},
        "M": {"family": "mlp", "hparams": {"in_dim": 6, "out_dim": 3, "hidden": [16]}},
        "I": {"steps": 24, "checkpoints": 2, "segment_window_s": 100, "batch_size": 8,
              "optimizer": {"name": "adam", "lr": 0.01}, "hardware": {"min_memory_mib": 1, "devices": ["cpu"]},
              "numeric_profile": "cpu-avx2-1t", "max_payment": "1", "council_size": 3, "confirm_window_s": 500},
        "f": {"kind": "per-checkpoint", "council_share_bps": 1000}, "e": e, "H": {"bid_window_s": 10, "min_bids": 1},
    })


def dataset() -> bytes:
    rng = np.random.default_rng(3)
    return save({"features": rng.standard_normal((64, 6)).astype(np.float32),
                 "labels": rng.integers(0, 3, 64).astype(np.int64)})


CASES = [
    ("exact", Fault("perturb", magnitude=1e-6)),
    ("exact", Fault("skip-steps")),
    ("exact", Fault("reorder-data")),
    ("exact", Fault("copy-weights")),  # other_seed: another task's assignment seed, filled in below
    ("allclose", Fault("perturb", magnitude=1e-2)),
]


@pytest.mark.parametrize("kind, fault", CASES, ids=[f"{k}-{f.kind}" for k, f in CASES])
def test_council_rejects_the_fault_slashes_and_the_honest_replacement_is_paid(s, cast, kind, fault):
    p = prescription(kind)
    data = dataset()
    task = start(s, cast, checkpoints=2, equivalence=Equivalence.EXACT if kind == "exact" else Equivalence.ALLCLOSE)
    seed = training_seed(p, s.task(task)["seed"])
    spec = spec_from_prescription(p, data, seed)
    first, last = segment_bounds(p, 1)
    if fault.kind == "copy-weights":
        # Weights from an earlier task with the same prescription: another assignment seed.
        earlier = training_seed(p, keccak(b"an earlier task's mix hash"))
        fault = Fault("copy-weights", other_seed=earlier)
    cheat = train_faulty(spec, None, last - first, fault).checkpoint
    cheat_hash = merkle_root(cheat)

    e, y, members = cast.executor, cast.replacement, cast.members
    s.commit(task, 1, e, cheat_hash)
    drawn = s.draw(task, 1)
    at = drawn_step(p, 1, drawn["stepIndex"])
    honest = train_segment(spec, None, last - first, hash_steps=[at])  # each member's re-run (deterministic)
    mine, state = merkle_root(honest.checkpoint), honest.state_hashes[at]
    assert mine != cheat_hash

    if kind == "exact":
        votes = {m: (mine, state) for m in members}
        s.commit_exact(task, 1, votes)
        s.reveal_checkpoint(task, 1, e, cheat_hash)
        block = s.reveal_exact(task, 1, votes)
    else:
        s.reveal_checkpoint(task, 1, e, cheat_hash)
        verdict = equivalence.allclose(honest.checkpoint, cheat, RTOL, ATOL)
        assert verdict is False
        allclose_votes = {m: (verdict, mine) for m in members}
        s.commit_allclose(task, 1, allclose_votes)
        block = s.reveal_allclose(task, 1, allclose_votes)

    events = block.txs[-1].events
    assert one(events, "CheckpointRejected")["executor"] == e.address
    assert one(events, "ExecutorReplaced")["executor"] == y.address
    assert s.stake(e)["staked"] == PROVIDER_STAKE - PRICE_E

    # The replacement resumes from the start with the same seed, honestly: accepted twice, never slashed.
    state_k = None
    for k in (1, 2):
        first, last = segment_bounds(p, k)
        result = train_segment(spec, state_k, last - first)
        digest = merkle_root(result.checkpoint)
        s.commit(task, k, y, digest)
        drawn = s.draw(task, k)
        at = drawn_step(p, k, drawn["stepIndex"])
        check = train_segment(spec, state_k, last - first, hash_steps=[at])
        assert check.checkpoint == result.checkpoint
        if kind == "exact":
            votes = {m: (merkle_root(check.checkpoint), check.state_hashes[at]) for m in members}
            s.commit_exact(task, k, votes)
            s.reveal_checkpoint(task, k, y, digest)
            block = s.reveal_exact(task, k, votes)
        else:
            s.reveal_checkpoint(task, k, y, digest)
            assert equivalence.allclose(check.checkpoint, result.checkpoint, RTOL, ATOL)
            allclose_votes = {m: (True, merkle_root(check.checkpoint)) for m in members}
            s.commit_allclose(task, k, allclose_votes)
            block = s.reveal_allclose(task, k, allclose_votes)
        assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == k
        state_k = result.checkpoint
    assert_never_slashed(s, y)
    assert s.task(task)["price"] == PRICE_Y


def test_a_perturbation_within_allclose_tolerance_is_accepted_and_not_slashed(s, cast):
    """allclose accepts what it should: a 1e-7 change is inside rtol/atol; the executor is paid, not slashed."""
    p = prescription("allclose")
    task = start(s, cast, checkpoints=2, equivalence=Equivalence.ALLCLOSE)
    spec = spec_from_prescription(p, dataset(), training_seed(p, s.task(task)["seed"]))
    first, last = segment_bounds(p, 1)
    near = train_faulty(spec, None, last - first, Fault("perturb", magnitude=1e-7)).checkpoint
    honest = train_segment(spec, None, last - first).checkpoint
    assert merkle_root(near) != merkle_root(honest) and equivalence.allclose(honest, near, RTOL, ATOL)
    s.commit(task, 1, cast.executor, merkle_root(near))
    s.draw(task, 1)
    s.reveal_checkpoint(task, 1, cast.executor, merkle_root(near))
    votes = {m: (True, merkle_root(honest)) for m in cast.members}
    s.commit_allclose(task, 1, votes)
    block = s.reveal_allclose(task, 1, votes)
    assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == 1
    assert_never_slashed(s, cast.executor)
