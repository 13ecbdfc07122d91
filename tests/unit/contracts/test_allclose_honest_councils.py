"""issue 15: honest members are never found lazy under allclose, CPU against CPU, with and without the
numeric profile, over 20 tasks with their own chain seeds.

Each task runs on the in-process chain (test_task_faults.py's cast): the executor and the three members
each train segment 1 for real — under the `cpu-avx2-1t` profile (bit-identical results) for half the
tasks, and for the other half each in another numeric environment (a profile worker, a plain worker
with two threads, this process) so their results differ in the last bits. Every pairwise verdict is
computed with the prescription's allclose, exactly as a provider would, and sent with judgeResults:
every checkpoint is accepted with all three votes counted, nobody is marked, nobody penalized.
"""

from __future__ import annotations

import pytest
import test_task_faults
from harness import TASK_ABI
from test_fault_matrix_trained import ATOL, RTOL, dataset, prescription
from test_task_checkpoints import one
from test_task_faults import PRICE_E, assert_never_slashed, start

from ogpu_node.compute import Worker, equivalence, spec_from_prescription, train_segment
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import drawn_step, segment_bounds, training_seed
from ogpu_node.types.protocol import Equivalence

cast, s = test_task_faults.cast, test_task_faults.s
TASKS = 20


@pytest.fixture(scope="module")
def workers():
    with Worker("cpu-avx2-1t") as profiled, Worker(None, threads=2) as plain:
        yield profiled, plain


@pytest.mark.timeout(600)
def test_honest_allclose_councils_are_never_marked_over_twenty_seeds(s, cast, workers):
    profiled, plain = workers
    p = prescription("allclose")
    data = dataset()
    e, members = cast.executor, cast.members
    seeds = set()
    for n in range(TASKS):
        task = start(s, cast, bids=[(e, PRICE_E)], checkpoints=1, equivalence=Equivalence.ALLCLOSE)
        seed = training_seed(p, s.task(task)["seed"])
        seeds.add(seed)
        spec = spec_from_prescription(p, data, seed)
        first, last = segment_bounds(p, 1)
        with_profile = n % 2 == 0
        ran = profiled.train(spec, None, last - first) if with_profile else plain.train(spec, None, last - first)
        s.commit(task, 1, e, merkle_root(ran.checkpoint))
        at = drawn_step(p, 1, s.draw(task, 1)["stepIndex"])
        council = s.council(task, 1)
        results = {}
        for i, member in enumerate(council):
            if with_profile:
                run = profiled.train(spec, None, last - first, hash_steps=[at], keep_states=True)
                results[member] = (run.checkpoint, run.states[at])
            elif i == 0:
                run = profiled.train(spec, None, last - first, hash_steps=[at], keep_states=True)
                results[member] = (run.checkpoint, run.states[at])
            elif i == 1:
                run = plain.train(spec, None, last - first, hash_steps=[at], keep_states=True)
                results[member] = (run.checkpoint, run.states[at])
            else:
                local = train_segment(spec, None, last - first, hash_steps=[at], keep_states=True)
                results[member] = (local.checkpoint, local.states[at])
        hashes = {m: (merkle_root(r), merkle_root(st)) for m, (r, st) in results.items()}
        if with_profile:
            assert len(set(hashes.values())) == 1  # the profile makes honest results bit-identical
        s.commit_exact(task, 1, hashes)
        s.reveal_checkpoint(task, 1, e, merkle_root(ran.checkpoint))
        s.reveal_allclose(task, 1, {
            m: (equivalence.allclose(results[m][0], ran.checkpoint, RTOL, ATOL), *hashes[m]) for m in council})
        judged = s.h.block(*(
            s.h.tx(m, TASK_ABI, "judgeResults", task, 1, [
                all(equivalence.allclose(mine, theirs, RTOL, ATOL)
                    for mine, theirs in zip(results[m], results[other], strict=True))
                for other in council])
            for m in council))
        assert all(r.ok for r in judged.txs), [r.reason for r in judged.txs]
        verdicts = [list(ev["allclose"]) for r in judged.txs for ev in r.events if ev.name == "ResultsJudged"]
        assert verdicts == [[True] * 3] * 3, (n, with_profile)
        events = judged.txs[-1].events
        assert one(events, "CheckpointAccepted")["councilPaid"] > 0
        assert [ev for ev in events if ev.name == "MemberFoundLazy"] == []
        s.h.ok(cast.client, TASK_ABI, "confirm", task)  # settled: the executor's collateral is free again
    assert len(seeds) == TASKS
    assert s.penalties() == []
    for account in (e, *members):
        assert_never_slashed(s, account)
