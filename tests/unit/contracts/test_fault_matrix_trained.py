"""The fault matrix end to end in-process: real training (trainer), the council's re-run and comparison
(verifier) and the Task contract on real blocks (contracts), for every dishonest executor of issue 5.

Each case: the executor bids 1 wei and commits a checkpoint made by `compute.faults.train_faulty`;
the three members re-run the segment honestly from the chain's seed, commit their result and the state
hash at the drawn step, vote (under `allclose` comparing with the revealed checkpoint, then judging
each other) and reject; the executor loses its collateral floor, which pays the members; the task
goes to the replacement bidder, which trains honestly and is accepted and never slashed. The cast and
the in-process chain are test_task_faults.py's.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_task_faults
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, TASK_ABI
from safetensors.numpy import save
from test_task_checkpoints import DEPOSIT, MAX_PAYMENT, PROVIDER_STAKE, one
from test_task_checkpoints import salt as salt_of
from test_task_faults import PRICE_Y, assert_never_slashed, fee, payout, start

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
    ("exact", Fault("perturb", magnitude=1e-3)),
    ("exact", Fault("skip-steps")),
    ("exact", Fault("reorder-data")),
    ("exact", Fault("copy-weights")),  # other_seed: another task's assignment seed, filled in below
    ("allclose", Fault("perturb", magnitude=1e-2)),
    ("allclose", Fault("perturb", magnitude=1.0)),
    ("allclose", Fault("skip-steps")),
    ("allclose", Fault("reorder-data")),
    ("allclose", Fault("copy-weights")),
]


def state_at(spec, start: bytes | None, steps: int, at: int) -> tuple[bytes, bytes]:
    """A member's honest re-run: (H(result), H(state at the drawn step))."""
    run = train_segment(spec, start, steps, hash_steps=[at])
    return merkle_root(run.checkpoint), run.state_hashes[at]


@pytest.mark.parametrize("kind, fault", CASES, ids=[f"{k}-{f.kind}-{f.magnitude:g}" for k, f in CASES])
def test_a_one_wei_cheater_loses_its_collateral_floor_and_the_council_is_paid(s, cast, kind, fault):
    """issue 15: a provider bids 1 wei, wins, and commits a dishonest checkpoint. The council re-runs
    the segment for real and rejects it: the cheater loses at least the collateral floor, each honest
    member ends with more than it had (its gas counted), the task goes to the honest replacement, which
    is paid its own price and never slashed, and the client pays exactly the replacement's price."""
    p = prescription(kind)
    data = dataset()
    e, y, members = cast.executor, cast.replacement, cast.members
    equivalence = Equivalence.EXACT if kind == "exact" else Equivalence.ALLCLOSE
    task = start(s, cast, bids=[(e, 1), (y, PRICE_Y)], checkpoints=2, equivalence=equivalence)
    floor = s.h.view(BID_ABI, "collateralFor", task, 1)
    assert floor == max(MAX_PAYMENT // 4, 3 * fee(2), OGPU // 10) and s.stake(e)["locked"] == floor
    seed = training_seed(p, s.task(task)["seed"])
    spec = spec_from_prescription(p, data, seed)
    first, last = segment_bounds(p, 1)
    if fault.kind == "copy-weights":
        # Weights from an earlier task with the same prescription: another assignment seed.
        fault = Fault("copy-weights", other_seed=training_seed(p, keccak(b"an earlier task's mix hash")))
    cheat = train_faulty(spec, None, last - first, fault).checkpoint
    cheat_hash = merkle_root(cheat)
    before = {m: s.h.balance(m.address) for m in members}

    s.commit(task, 1, e, cheat_hash)
    drawn = s.draw(task, 1)
    at = drawn_step(p, 1, drawn["stepIndex"])
    honest = train_segment(spec, None, last - first, hash_steps=[at])  # each member's re-run (deterministic)
    own = (merkle_root(honest.checkpoint), honest.state_hashes[at])
    assert own[0] != cheat_hash
    s.commit_exact(task, 1, {m: own for m in members})
    s.reveal_checkpoint(task, 1, e, cheat_hash)
    if kind == "exact":
        block = s.reveal_exact(task, 1, {m: own for m in members})
    else:
        verdict = equivalence_allclose(honest.checkpoint, cheat)
        assert verdict is False
        s.reveal_allclose(task, 1, {m: (verdict, *own) for m in members})
        block = s.judge(task, 1, members)  # every honest result is allclose to every other

    events = block.txs[-1].events
    assert one(events, "CheckpointRejected")["penalty"] == floor
    assert one(events, "ExecutorReplaced")["executor"] == y.address
    assert s.stake(e)["staked"] == PROVIDER_STAKE - floor  # at least the floor, for a 1-wei bid
    each, _, _ = payout(floor, 3, checkpoints=2)
    assert each > fee(2)
    for m in members:
        assert s.received(m) == each
        assert s.h.balance(m.address) > before[m]  # more than it had, after its gas

    # The replacement resumes from the start with the same seed, honestly: accepted twice, never slashed.
    state_k = None
    for k in (1, 2):
        first, last = segment_bounds(p, k)
        result = train_segment(spec, state_k, last - first)
        digest = merkle_root(result.checkpoint)
        s.commit(task, k, y, digest)
        drawn = s.draw(task, k)
        own = state_at(spec, state_k, last - first, drawn_step(p, k, drawn["stepIndex"]))
        s.commit_exact(task, k, {m: own for m in members})
        s.reveal_checkpoint(task, k, y, digest)
        if kind == "exact":
            block = s.reveal_exact(task, k, {m: own for m in members})
        else:
            s.reveal_allclose(task, k, {m: (True, *own) for m in members})
            block = s.judge(task, k, members)
        assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == k
        state_k = result.checkpoint
    assert_never_slashed(s, y)
    assert s.task(task)["price"] == PRICE_Y
    s.h.ok(cast.client, TASK_ABI, "confirm", task)
    assert s.received(cast.client) == MAX_PAYMENT + DEPOSIT - PRICE_Y  # served at the honest price
    s.assert_no_locked_stake()
    assert [p_["offender"] for p_ in s.penalties()] == [e.address]


def equivalence_allclose(a: bytes, b: bytes) -> bool:
    return equivalence.allclose(a, b, RTOL, ATOL)


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
    drawn = s.draw(task, 1)
    own = state_at(spec, None, last - first, drawn_step(p, 1, drawn["stepIndex"]))
    s.commit_exact(task, 1, {m: own for m in cast.members})
    s.reveal_checkpoint(task, 1, cast.executor, merkle_root(near))
    s.reveal_allclose(task, 1, {m: (True, *own) for m in cast.members})
    block = s.judge(task, 1, cast.members)
    assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == 1
    assert_never_slashed(s, cast.executor)


def test_results_published_in_one_round_do_not_pass_in_the_next(s, cast):
    """allclose: round 0 is inconclusive (no member attests the executor's blob); in round 1 a member
    commits round 0's published result and state instead of computing. The step is drawn afresh, so
    the two members that re-ran the segment hold their state at another step: they mark the copy not
    allclose, and the copier loses its seat stake."""
    p = prescription("allclose")
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=2, equivalence=Equivalence.ALLCLOSE)
    spec = spec_from_prescription(p, dataset(), training_seed(p, s.task(task)["seed"]))
    first, last = segment_bounds(p, 1)
    executor_run = train_segment(spec, None, last - first)
    s.commit(task, 1, e, merkle_root(executor_run.checkpoint))

    def computed(round_step: int) -> tuple[bytes, bytes]:
        run = train_segment(spec, None, last - first, hash_steps=[round_step], keep_states=True)
        return run.checkpoint, run.states[round_step]

    at0 = drawn_step(p, 1, s.draw(task, 1)["stepIndex"])
    published = computed(at0)  # round 0's results, as every member published them
    hashes0 = (merkle_root(published[0]), merkle_root(published[1]))
    s.commit_exact(task, 1, {m: hashes0 for m in members})
    s.reveal_checkpoint(task, 1, e, merkle_root(executor_run.checkpoint))
    s.h.block(*(s.h.tx(m, TASK_ABI, "revealResult", task, 1, True, *hashes0, salt_of(m), False) for m in members))
    judged = s.judge(task, 1, members)
    assert one(judged.txs[-1].events, "CheckpointInconclusive")["round"] == 0

    drawn = s.draw(task, 1)
    at1 = drawn_step(p, 1, drawn["stepIndex"])
    assert (drawn["round"], at1 != at0) == (1, True)
    council = s.council(task, 1)
    copier = council[0]
    honest = computed(at1)
    own = {m: (merkle_root(honest[0]), merkle_root(honest[1])) for m in council}
    own[copier] = hashes0
    s.commit_exact(task, 1, own)  # the executor's reveal of round 0 stands
    s.reveal_allclose(task, 1, {m: (True, *own[m]) for m in council})
    results = {m: honest for m in council} | {copier: published}

    def verdict(judge, other) -> bool:  # what a member that re-ran this round says of another's results
        return judge == copier or all(equivalence_allclose(a, b) for a, b in zip(results[judge], results[other], strict=True))

    block = s.h.block(*(s.h.tx(m, TASK_ABI, "judgeResults", task, 1, [verdict(m, o) for o in council]) for m in council))
    events = block.txs[-1].events
    assert one(events, "MemberFoundLazy")["member"] == copier.address
    assert one(events, "CheckpointAccepted")["k"] == 1  # the two that computed: 3·2 ≥ 2·3
