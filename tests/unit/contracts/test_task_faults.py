"""The fault matrix of the batch checkpoint protocol (DESIGN.md §6 step 4, step 5, "Missed deadlines").

In-process, as test_task_checkpoints.py (whose `Scenario` this reuses): after every block Task's balance =
Σ escrow + deposit and Stake's balance = Σ staked + Σ unbonding; after settlement or cancellation no
stake stays locked. The cast is fixed so that every council is deterministic: the executor, the
replacement bidder and a spare provider register 1000 MiB, below the tasks' minMemoryMiB of 4000, so
they can bid and execute but never sit on a council; `members` (8000 MiB) are exactly councilSize, so
each council is all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import OGPU, STAKE_ABI, TASK_ABI
from test_task_checkpoints import (
    DEPOSIT,
    MAX_INCONCLUSIVE_ROUNDS,
    MAX_PAYMENT,
    MISSED_VOTE_PENALTY,
    PROVIDER_STAKE,
    REPORTER_SHARE_BPS,
    REVEAL_WINDOW,
    SEAT,
    WINDOW,
    Scenario,
    ckpt,
    named,
    one,
    part,
    shares,
    step,
    terms,
)

from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.commitments import checkpoint_commitment
from ogpu_node.types.protocol import BPS, CancelReason, Equivalence, Outcome, Penalty, Phase, TaskState

MIN_MEMORY = 4_000
PRICE_E = 7 * 10**17 + 1  # the executor's bid (lowest)
PRICE_X = 8 * 10**17  # a council member's bid: never re-assigned to it
PRICE_Y = 9 * 10**17 + 7  # the replacement's bid
SHARE_BPS = 1_000
WRONG = keccak(b"a different result")


@dataclass
class Cast:
    client: Any
    executor: Any
    members: list[Any]
    fourth: Any
    replacement: Any
    spare: Any


@pytest.fixture
def cast(dev_accounts) -> Cast:
    a = dev_accounts
    return Cast(client=a[0], executor=a[1], members=list(a[2:5]), fourth=a[5], replacement=a[6], spare=a[7])


@pytest.fixture
def s(chain, dev_accounts, cast) -> Scenario:
    scenario = Scenario(chain, dev_accounts)
    scenario.providers([cast.executor, cast.replacement, cast.spare], memory_mib=1_000)
    scenario.providers(cast.members, memory_mib=8_000)
    return scenario


def start(s: Scenario, cast: Cast, bids: list[tuple[Any, int]] | None = None, **overrides: int) -> int:
    """Submit, bid, assign to the executor (the lowest bid)."""
    if bids is None:
        bids = [(cast.executor, PRICE_E), (cast.members[0], PRICE_X), (cast.replacement, PRICE_Y)]
    task = s.submit(cast.client, minMemoryMiB=MIN_MEMORY, firstN=len(bids), **overrides)
    event = s.assign(task, bids)
    price = min(p for _, p in bids)
    assert (event["executor"], event["price"]) == (cast.executor.address, price)
    t = terms(minMemoryMiB=MIN_MEMORY, **overrides)
    floor = max(MAX_PAYMENT // 4, t["councilSize"] * fee(t["checkpoints"]), OGPU // 10)  # dev genesis
    assert s.stake(cast.executor)["locked"] == max(price, floor)  # collateralBps 10000
    return task


def honest_checkpoint(s: Scenario, task: int, k: int, executor: Any, members: list[Any]) -> Any:
    s.commit(task, k, executor, ckpt(k))
    return s.verify_exact(task, k, executor, members, ckpt(k))


def assert_never_slashed(s: Scenario, account: Any) -> None:
    assert [e for e in s.penalties() if e["offender"] == account.address] == []
    assert s.stake(account)["staked"] == PROVIDER_STAKE


def slash_reward(amount: int) -> int:
    return amount * REPORTER_SHARE_BPS // BPS


def fee(checkpoints: int) -> int:
    """S, the verification fee of the tasks here: the council share of ⌊maxPayment / K⌋."""
    return MAX_PAYMENT // checkpoints * SHARE_BPS // BPS


def payout(taken: int, workers: int, checkpoints: int, harmed: bool = False) -> tuple[int, int, int]:
    """docs/protocol.md, "Who is paid from a cheater's collateral": (each worker's pay, the harmed
    party's or client's reporter share, what burns) from `taken`."""
    each = min(fee(checkpoints), taken // workers) if workers else 0
    rest = taken - each * workers
    reward = slash_reward(rest)
    if harmed or not workers:
        return each, reward, rest - reward
    return each + reward // workers, 0, rest - reward // workers * workers


# -- the council rejects --


def test_council_rejects_executor_slashed_and_lowest_non_council_bidder_resumes(s, cast):
    """K = 3: checkpoint 1 accepted at the executor's price; 2 (and 3, committed ahead) rejected by all
    three members; the executor's collateral is slashed through Slashing.penalize, the reporter share split
    among the rejecting members (dust burned), its later commitments void, and the task goes to the lowest
    remaining bidder that never sat on its council (not the member who bid lower), which resumes from
    checkpoint 1 and is paid parts 2 and 3 at its own price."""
    e, y, members = cast.executor, cast.replacement, cast.members
    task = start(s, cast, checkpoints=3)
    seed = s.task(task)["seed"]
    honest_checkpoint(s, task, 1, e, members)
    s.commit(task, 2, e, ckpt(2))
    s.draw(task, 2)
    s.commit(task, 3, e, ckpt(3))  # ahead of the verdict on 2
    votes = {m: (WRONG, step(2)) for m in members}
    s.commit_exact(task, 2, votes)
    s.reveal_checkpoint(task, 2, e, ckpt(2))
    received_before = [s.received(m) for m in members]
    block = s.reveal_exact(task, 2, votes)
    rejected_at = s.h.now
    events = block.txs[-1].events
    each, _, burned = payout(PRICE_E, 3, checkpoints=3)
    assert one(events, "ComputationPenalty").args == {
        "offender": e.address, "taskId": task, "kind": Penalty.REJECTED, "penalty": PRICE_E, "beneficiary": TASK}
    assert one(events, "StakeSlashed").args == {  # all of it to Task, which shares it out
        "account": e.address, "amount": PRICE_E, "burned": 0, "rewarded": PRICE_E, "beneficiary": TASK}
    assert one(events, "CheckpointRejected").args == {"taskId": task, "k": 2, "executor": e.address, "penalty": PRICE_E}
    assert one(events, "ExecutorReplaced").args == {
        "taskId": task, "previous": e.address, "executor": y.address, "price": PRICE_Y, "resumeFrom": 1}
    assert [s.received(m) - before for m, before in zip(members, received_before, strict=True)] == [each] * 3
    assert each == fee(3) + slash_reward(PRICE_E - 3 * fee(3)) // 3 > fee(3)
    assert one(events, "FundsBurned").args == {"taskId": task, "amount": burned}
    assert s.stake(e) == {**s.stake(e), "staked": PROVIDER_STAKE - PRICE_E, "locked": 0}
    assert s.stake(y)["locked"] == PRICE_Y
    assert s.stake(cast.members[0])["locked"] == 0
    # later commitments are void; the replacement resumes after checkpoint 1
    for k in (2, 3):
        record = s.checkpoint(task, k)
        assert (record["phase"], record["round"], record["council"]) == (Phase.NONE, 1, [])
    progress = s.progress(task)
    assert (progress["accepted"], progress["committed"], progress["runStart"], progress["runBase"],
            progress["generation"]) == (1, 1, rejected_at, 1, 1)
    record = s.task(task)
    assert (record["executor"], record["price"], record["state"], record["seed"]) == (y.address, PRICE_Y, TaskState.RUNNING, seed)
    late = s.h.send(e, TASK_ABI, "commitCheckpoint", task, 2, checkpoint_commitment(task, 2, e.address, ckpt(2)))
    assert late.reason == "Task: caller is not the executor"
    skip = s.h.send(y, TASK_ABI, "commitCheckpoint", task, 3, checkpoint_commitment(task, 3, y.address, ckpt(3)))
    assert skip.reason == "Task: expected checkpoint 2"
    for k in (2, 3):
        block = honest_checkpoint(s, task, k, y, members)
        each, rest = shares(part(PRICE_Y, k, 3), SHARE_BPS, 3)
        assert one(block.txs[-1].events, "CheckpointAccepted").args == {
            "taskId": task, "k": k, "executorPaid": rest, "councilPaid": 3 * each, "discount": 0}
    paid = part(PRICE_E, 1, 3) + part(PRICE_Y, 2, 3) + part(PRICE_Y, 3, 3)
    assert paid == part(PRICE_E, 1, 3) + PRICE_Y - PRICE_Y // 3
    settled = one(s.h.ok(cast.client, TASK_ABI, "confirm", task).events, "TaskSettled")
    assert settled.args == {"taskId": task, "outcome": 1, "refund": MAX_PAYMENT - paid + DEPOSIT, "paid": paid}
    assert s.received(cast.client) == MAX_PAYMENT - paid + DEPOSIT
    assert s.received(e) == shares(part(PRICE_E, 1, 3), SHARE_BPS, 3)[1]
    assert s.received(y) == sum(shares(part(PRICE_Y, k, 3), SHARE_BPS, 3)[1] for k in (2, 3))
    s.assert_no_locked_stake()
    assert [p["offender"] for p in s.penalties()] == [e.address]
    assert_never_slashed(s, y)


def test_council_rejects_with_no_eligible_bidder_left_cancels_with_refund(s, cast):
    """The only other bidder sat on the task's council: no replacement, the task is cancelled and the
    client refunded escrow and deposit in full; the executor's collateral is slashed."""
    e, members = cast.executor, cast.members
    task = start(s, cast, bids=[(e, PRICE_E), (members[0], PRICE_X)], checkpoints=2)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    votes = {m: (WRONG, step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    events = s.reveal_exact(task, 1, votes).txs[-1].events
    assert one(events, "CheckpointRejected")["penalty"] == PRICE_E
    assert named(events, "ExecutorReplaced") == []
    assert one(events, "TaskCancelled").args == {
        "taskId": task, "reason": CancelReason.NO_REPLACEMENT, "refund": MAX_PAYMENT + DEPOSIT}
    record = s.task(task)
    assert (record["state"], record["escrow"], record["deposit"]) == (TaskState.CANCELLED, 0, 0)
    assert s.received(cast.client) == MAX_PAYMENT + DEPOSIT
    assert [s.received(m) for m in members] == [payout(PRICE_E, 3, checkpoints=2)[0]] * 3
    assert s.stake(e)["staked"] == PROVIDER_STAKE - PRICE_E
    s.assert_no_locked_stake()


# -- missed deadlines --


def test_missed_checkpoint_is_slashed_and_replaced_by_the_system_call(s, cast):
    """No commit of checkpoint 2 by its due time + segmentWindow: the first block at that time, with no
    transaction, slashes the executor (reward to the client) and re-assigns; the replacement completes."""
    e, y, members = cast.executor, cast.replacement, cast.members
    task = start(s, cast, checkpoints=2)
    assigned_at = s.task(task)["assignedAt"]
    honest_checkpoint(s, task, 1, e, members)
    expiry = assigned_at + 2 * WINDOW + WINDOW  # due(2) + grace
    quiet = s.h.block(at=expiry - 1)
    assert named(quiet.system_events, "CheckpointMissed") == []
    block = s.h.block(at=expiry)
    assert block.txs == []
    events = block.system_events
    _, reward, _ = payout(PRICE_E, 0, checkpoints=2)  # no council did any work: the client's share
    assert reward == slash_reward(PRICE_E)
    assert one(events, "CheckpointMissed").args == {"taskId": task, "k": 2, "executor": e.address, "penalty": PRICE_E}
    assert one(events, "ComputationPenalty").args == {
        "offender": e.address, "taskId": task, "kind": Penalty.MISSED_CHECKPOINT, "penalty": PRICE_E,
        "beneficiary": TASK}
    assert one(events, "ExecutorReplaced").args == {
        "taskId": task, "previous": e.address, "executor": y.address, "price": PRICE_Y, "resumeFrom": 1}
    assert s.received(cast.client) == reward
    assert s.stake(e)["staked"] == PROVIDER_STAKE - PRICE_E
    progress = s.progress(task)
    assert (progress["runStart"], progress["runBase"], progress["generation"]) == (expiry, 1, 1)
    block = honest_checkpoint(s, task, 2, y, members)
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION
    paid = part(PRICE_E, 1, 2) + part(PRICE_Y, 2, 2)
    settled = one(s.h.ok(cast.client, TASK_ABI, "confirm", task).events, "TaskSettled")
    assert (settled["refund"], settled["paid"]) == (MAX_PAYMENT - paid + DEPOSIT, paid)
    assert s.received(cast.client) == reward + MAX_PAYMENT - paid + DEPOSIT
    s.assert_no_locked_stake()
    for m in members:
        assert_never_slashed(s, m)


def test_executor_that_never_reveals_is_treated_as_missed(s, cast):
    e, y, members = cast.executor, cast.replacement, cast.members
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    s.commit_exact(task, 1, {m: (ckpt(1), step(1)) for m in members})
    ends = s.checkpoint(task, 1)["phaseEnds"]
    assert ends == s.h.now + REVEAL_WINDOW
    assert named(s.h.block(at=ends - 1).system_events, "CheckpointMissed") == []
    events = s.h.block(at=ends).system_events
    assert one(events, "CheckpointMissed").args == {"taskId": task, "k": 1, "executor": e.address, "penalty": PRICE_E}
    penalty = [p for p in named(events, "ComputationPenalty") if p["offender"] == e.address]
    assert [(p["kind"], p["penalty"], p["beneficiary"]) for p in penalty] == [
        (Penalty.MISSED_CHECKPOINT, PRICE_E, TASK)]
    # The members committed (re-ran the segment) before the executor withheld its reveal: they are paid.
    assert [s.received(m) for m in members] == [payout(PRICE_E, 3, checkpoints=1)[0]] * 3
    assert one(events, "ExecutorReplaced")["executor"] == y.address
    assert [s.stake(m)["locked"] for m in members] == [0] * 3  # seats released
    assert s.checkpoint(task, 1)["round"] == 1
    honest_checkpoint(s, task, 1, y, members)
    s.h.ok(cast.client, TASK_ABI, "confirm", task)
    s.assert_no_locked_stake()


@pytest.mark.parametrize("equivalence", [Equivalence.EXACT, Equivalence.ALLCLOSE], ids=["exact", "allclose"])
def test_members_are_not_penalized_when_the_executor_never_reveals(s, cast, equivalence):
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1, equivalence=equivalence)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    s.commit_exact(task, 1, {m: (ckpt(1), step(1)) for m in members})  # both equivalences commit first
    while not named(s.events, "CheckpointMissed"):
        s.h.block(at=s.checkpoint(task, 1)["phaseEnds"])
    assert [p["offender"] for p in s.penalties()] == [e.address]
    for m in members:
        assert_never_slashed(s, m)


def test_allclose_reveal_before_the_members_commit_is_refused(s, cast):
    """allclose: the executor cannot reveal while the council commits (members bind their own result
    first); a council that never commits misses its votes and the executor, unable to reveal, is not
    penalized for it: the round is inconclusive."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1, equivalence=Equivalence.ALLCLOSE)
    s.commit(task, 1, e, ckpt(1))
    drawn = s.draw(task, 1)
    early = s.h.send(e, TASK_ABI, "revealCheckpoint", task, 1, ckpt(1))
    assert early.reason == "Task: checkpoint is not open for the executor's reveal"
    s.h.block(at=drawn["commitDeadline"])
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    events = s.h.block(at=s.checkpoint(task, 1)["phaseEnds"]).system_events
    assert one(events, "CheckpointInconclusive")["round"] == 0
    assert sorted(p["offender"] for p in named(events, "ComputationPenalty")) == sorted(m.address for m in members)
    assert [s.stake(m)["locked"] for m in members] == [0] * 3


@pytest.mark.parametrize("fault", ["no_commit", "no_reveal"])
def test_member_that_does_not_vote_is_penalized_and_earns_nothing(s, cast, fault):
    e, members = cast.executor, cast.members
    voters, absent = members[:2], members[2]
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    drawn = s.draw(task, 1)
    votes = {m: (ckpt(1), step(1)) for m in members}
    if fault == "no_commit":
        s.commit_exact(task, 1, {m: votes[m] for m in voters})
        opened = s.h.block(at=drawn["commitDeadline"])  # the commit window closes on time
        assert one(opened.system_events, "RevealPhase")["revealDeadline"] == drawn["commitDeadline"] + REVEAL_WINDOW
    else:
        s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    s.reveal_exact(task, 1, {m: votes[m] for m in voters})
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL  # still open for `absent`
    events = s.h.block(at=s.checkpoint(task, 1)["phaseEnds"]).system_events
    assert one(events, "ComputationPenalty").args == {
        "offender": absent.address, "taskId": task, "kind": Penalty.MISSED_VOTE, "penalty": MISSED_VOTE_PENALTY,
        "beneficiary": cast.client.address}
    each, rest = shares(PRICE_E, SHARE_BPS, 2)
    assert one(events, "CheckpointAccepted").args == {
        "taskId": task, "k": 1, "executorPaid": rest, "councilPaid": 2 * each, "discount": 0}
    assert [s.received(m) for m in voters] == [each, each]
    assert s.received(absent) == 0
    assert s.stake(absent)["staked"] == PROVIDER_STAKE - MISSED_VOTE_PENALTY
    assert s.received(e) == rest
    settled = one(s.h.ok(cast.client, TASK_ABI, "confirm", task).events, "TaskSettled")
    assert settled["refund"] == MAX_PAYMENT - PRICE_E + DEPOSIT
    assert s.received(cast.client) == slash_reward(MISSED_VOTE_PENALTY) + MAX_PAYMENT - PRICE_E + DEPOSIT
    s.assert_no_locked_stake()
    assert_never_slashed(s, e)


@pytest.mark.parametrize("lazy", ["copied_result", "blind_yes"])
def test_vote_without_the_majority_step_hash_is_not_counted(s, cast, lazy):
    """exact: a member that copies the result hash (or claims a blind yes) without the state hash at the
    drawn step is not counted and earns nothing; the two that computed are the majority and are paid."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    honest, copier = members[:2], members[2]
    votes = {m: (ckpt(1), step(1)) for m in honest}
    votes[copier] = (ckpt(1), keccak(b"guessed state")) if lazy == "copied_result" else (WRONG, keccak(b"no work"))
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    block = s.reveal_exact(task, 1, votes)  # all three revealed: tallied at once
    revealed = {ev["member"]: ev["verdict"] for r in block.txs for ev in named(r.events, "ResultRevealed")}
    assert revealed[copier.address] is (lazy == "copied_result")
    each, rest = shares(PRICE_E, SHARE_BPS, 2)
    assert one(block.txs[-1].events, "CheckpointAccepted").args == {
        "taskId": task, "k": 1, "executorPaid": rest, "councilPaid": 2 * each, "discount": 0}
    assert [s.received(m) for m in honest] == [each, each]
    assert s.received(copier) == 0
    assert s.penalties() == []  # not counted is not penalized: it revealed in time
    assert s.stake(copier) == {**s.stake(copier), "staked": PROVIDER_STAKE, "locked": 0}


def test_copied_hashes_cannot_carry_a_vote(s, cast):
    """c = 4, two members compute (same step hash) and two copy the executor's hash with their own
    guesses of the step hash: only the two are counted, 3·2 < 2·4, so the checkpoint is inconclusive
    rather than accepted with four yes votes."""
    e = cast.executor
    members = [*cast.members, cast.fourth]
    s.providers([cast.fourth], memory_mib=8_000)
    task = start(s, cast, checkpoints=1, councilSize=4)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    votes = {m: (ckpt(1), step(1)) for m in members[:2]}
    votes |= {m: (ckpt(1), keccak(b"guess" + m.address)) for m in members[2:]}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    block = s.reveal_exact(task, 1, votes)
    events = block.txs[-1].events
    assert one(events, "CheckpointInconclusive").args == {"taskId": task, "k": 1, "round": 0}
    assert named(events, "CheckpointAccepted") == []
    assert sum(s.received(m) for m in members) == 0
    assert s.penalties() == []
    drawn = s.draw(task, 1)
    assert drawn["round"] == 1


def test_yes_votes_without_two_thirds_attesting_the_blob_are_inconclusive(s, cast):
    """All three agree, but only one attests it fetched the executor's checkpoint blob: not accepted
    (2/3 must attest), not rejected, inconclusive; nobody is paid or penalized."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    votes = {m: (ckpt(1), step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    s.reveal_exact(task, 1, {members[0]: votes[members[0]]})
    block = s.reveal_exact(task, 1, {m: votes[m] for m in members[1:]}, fetched=False)
    events = block.txs[-1].events
    assert one(events, "CheckpointInconclusive").args == {"taskId": task, "k": 1, "round": 0}
    assert named(events, "CheckpointAccepted") == []
    assert [s.received(m) for m in members] == [0, 0, 0]
    assert s.penalties() == []
    assert s.draw(task, 1)["round"] == 1


# -- inconclusive rounds, too few candidates --


def test_inconclusive_rounds_redraw_then_cancel_with_refund(s, cast):
    """c = 3 with one yes, one no (same step hash) and one absent: inconclusive, the absent member is
    penalized, a fresh council (round + 1) is drawn; after maxInconclusiveRounds the task is cancelled,
    the client refunded the unpaid escrow and the deposit, the executor not slashed."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=2)
    honest_checkpoint(s, task, 1, e, members)
    s.commit(task, 2, e, ckpt(2))
    yes, no, absent = members
    client_before = s.received(cast.client)
    for round_ in range(MAX_INCONCLUSIVE_ROUNDS):
        drawn = s.draw(task, 2)
        assert drawn["round"] == round_
        assert [s.stake(m)["locked"] for m in members] == [SEAT] * 3
        votes = {yes: (ckpt(2), step(2)), no: (WRONG, step(2))}
        s.commit_exact(task, 2, votes)
        s.h.block(at=drawn["commitDeadline"])  # reveal phase opens on time
        if round_ == 0:
            s.reveal_checkpoint(task, 2, e, ckpt(2))
        else:  # the executor's reveal stands for the fresh councils
            assert s.h.send(e, TASK_ABI, "revealCheckpoint", task, 2, ckpt(2)).reason == "Task: checkpoint already revealed"
        block = s.reveal_exact(task, 2, votes)
        assert [ev["verdict"] for r in block.txs for ev in named(r.events, "ResultRevealed")] == [True, False]
        events = s.h.block(at=s.checkpoint(task, 2)["phaseEnds"]).system_events
        assert one(events, "CheckpointInconclusive").args == {"taskId": task, "k": 2, "round": round_}
        penalty = one(events, "ComputationPenalty")
        assert (penalty["offender"], penalty["kind"], penalty["penalty"]) == (absent.address, Penalty.MISSED_VOTE, OGPU)
        assert [s.stake(m)["locked"] for m in members] == [0] * 3
        if round_ < MAX_INCONCLUSIVE_ROUNDS - 1:
            assert named(events, "TaskCancelled") == []
            record = s.checkpoint(task, 2)
            assert (record["phase"], record["round"]) == (Phase.COMMITTED, round_ + 1)
    refund = MAX_PAYMENT - part(PRICE_E, 1, 2) + DEPOSIT
    assert one(events, "TaskCancelled").args == {"taskId": task, "reason": CancelReason.INCONCLUSIVE, "refund": refund}
    assert s.task(task)["state"] == TaskState.CANCELLED
    assert s.received(cast.client) - client_before == refund + MAX_INCONCLUSIVE_ROUNDS * slash_reward(OGPU)
    assert s.stake(absent)["staked"] == PROVIDER_STAKE - MAX_INCONCLUSIVE_ROUNDS * OGPU
    assert s.received(yes) == s.received(no) == s.received(absent) == shares(part(PRICE_E, 1, 2), SHARE_BPS, 3)[0]
    assert named(s.h.block().system_events, "CouncilDrawn") == []
    s.assert_no_locked_stake()
    assert_never_slashed(s, e)


def inconclusive_round(s: Scenario, task: int, k: int, executor: Any, members: list[Any], round_: int,
                       reveal: bool) -> list[Any]:
    """One yes, one no (same step hash), one absent: the system-call events of the block that tallies.
    The executor reveals in the first round of its commitment only; its reveal stands for later rounds."""
    yes, no, _ = members
    drawn = s.draw(task, k)
    assert drawn["round"] == round_
    votes = {yes: (ckpt(k), step(k)), no: (WRONG, step(k))}
    s.commit_exact(task, k, votes)
    s.h.block(at=drawn["commitDeadline"])
    if reveal:
        s.reveal_checkpoint(task, k, executor, ckpt(k))
    s.reveal_exact(task, k, votes)
    events = s.h.block(at=s.checkpoint(task, k)["phaseEnds"]).system_events
    assert one(events, "CheckpointInconclusive").args == {"taskId": task, "k": k, "round": round_}
    return events


def test_replacement_gets_its_own_inconclusive_rounds(s, cast):
    e, y, members = cast.executor, cast.replacement, cast.members
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    for round_ in range(MAX_INCONCLUSIVE_ROUNDS - 1):
        inconclusive_round(s, task, 1, e, members, round_, reveal=round_ == 0)
    s.draw(task, 1)
    votes = {m: (WRONG, step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    events = s.reveal_exact(task, 1, votes).txs[-1].events  # the executor's reveal of round 0 stands
    assert one(events, "ExecutorReplaced")["executor"] == y.address
    s.commit(task, 1, y, ckpt(1))
    events = inconclusive_round(s, task, 1, y, members, MAX_INCONCLUSIVE_ROUNDS, reveal=True)
    assert named(events, "TaskCancelled") == []
    assert s.draw(task, 1)["round"] == MAX_INCONCLUSIVE_ROUNDS + 1


@pytest.mark.parametrize("majority", ["accepts", "rejects"])
def test_minority_member_of_a_decided_checkpoint_earns_nothing(s, cast, majority):
    """c = 3, two against one (same step hash): the minority is counted, not penalized, and paid nothing;
    on accept the council share goes to the two yes votes, on reject the reporter share to the two no."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1)
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    agree, minority = (ckpt(1), WRONG) if majority == "accepts" else (WRONG, ckpt(1))
    votes = {members[0]: (agree, step(1)), members[1]: (agree, step(1)), members[2]: (minority, step(1))}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    events = s.reveal_exact(task, 1, votes).txs[-1].events
    if majority == "accepts":
        each, rest = shares(PRICE_E, SHARE_BPS, 2)
        assert one(events, "CheckpointAccepted").args == {
            "taskId": task, "k": 1, "executorPaid": rest, "councilPaid": 2 * each, "discount": 0}
        assert s.penalties() == []
    else:
        assert one(events, "CheckpointRejected")["penalty"] == PRICE_E
        each = payout(PRICE_E, 2, checkpoints=1)[0]
        assert [p["offender"] for p in s.penalties()] == [e.address]
    assert [s.received(m) for m in members] == [each, each, 0]
    assert s.stake(members[2]) == {**s.stake(members[2]), "staked": PROVIDER_STAKE, "locked": 0}


@pytest.mark.parametrize("cause", ["memory", "device", "role_cleared"])
def test_too_few_qualifying_candidates_cancels(s, cast, dev_accounts, cause):
    """Fewer than c providers qualify at the draw: cancelled (reason 2); accepted parts stay paid, the rest
    of the escrow and the deposit are refunded, the executor's collateral unlocked, nobody slashed."""
    e, members = cast.executor, cast.members
    if cause == "memory":  # c = 4: the fourth provider is below minMemoryMiB
        s.providers([cast.fourth], memory_mib=MIN_MEMORY - 1)
        task = start(s, cast, checkpoints=1, councilSize=4)
        paid = 0
    elif cause == "device":  # c = 4: the fourth provider's device kind is not in deviceMask
        s.providers([cast.fourth], memory_mib=8_000, device_kind=1)
        task = start(s, cast, checkpoints=1, councilSize=4, deviceMask=0b001)
        paid = 0
    else:  # c = 3: after checkpoint 1 a member gives up the provider role
        task = start(s, cast, checkpoints=2)
        honest_checkpoint(s, task, 1, e, members)
        s.h.ok(members[2], STAKE_ABI, "setRoles", 0)
        paid = part(PRICE_E, 1, 2)
    k = 1 if cause != "role_cleared" else 2
    s.commit(task, k, e, ckpt(k))
    events = s.h.block().system_events
    assert named(events, "CouncilDrawn") == []
    refund = MAX_PAYMENT - paid + DEPOSIT
    assert one(events, "TaskCancelled").args == {"taskId": task, "reason": CancelReason.TOO_FEW_CANDIDATES, "refund": refund}
    assert s.received(cast.client) == refund
    assert s.task(task)["state"] == TaskState.CANCELLED
    s.assert_no_locked_stake()
    assert s.penalties() == []
    assert_never_slashed(s, e)


# -- disputes --


def finished(s: Scenario, cast: Cast) -> int:
    task = start(s, cast, checkpoints=1)
    honest_checkpoint(s, task, 1, cast.executor, cast.members)
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION
    return task


def test_dispute_where_the_council_rejects_slashes_the_executor(s, cast):
    e, members = cast.executor, cast.members
    task = finished(s, cast)
    disputed = s.h.ok(cast.client, TASK_ABI, "dispute", task)
    assert one(disputed.events, "TaskDisputed").args == {"taskId": task}
    assert s.task(task)["state"] == TaskState.DISPUTED
    drawn = s.draw(task, 1)
    assert drawn["round"] == 1
    paid_before = [s.received(m) for m in members]
    votes = {m: (WRONG, step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    block = s.reveal_exact(task, 1, votes)  # the executor's reveal of checkpoint 1 stands
    events = block.txs[-1].events
    each, reward, _ = payout(PRICE_E, 3, checkpoints=1, harmed=True)
    assert one(events, "ComputationPenalty").args == {
        "offender": e.address, "taskId": task, "kind": Penalty.REJECTED, "penalty": PRICE_E, "beneficiary": TASK}
    refund = MAX_PAYMENT - PRICE_E + DEPOSIT
    assert one(events, "TaskSettled").args == {
        "taskId": task, "outcome": Outcome.EXECUTOR_LOST, "refund": refund, "paid": PRICE_E}
    assert s.received(cast.client) == refund + reward
    assert each == fee(1)  # the dispute council's fee; the reporter share of the rest to the client
    assert [s.received(m) - before for m, before in zip(members, paid_before, strict=True)] == [each] * 3
    assert s.stake(e)["staked"] == PROVIDER_STAKE - PRICE_E
    record = s.task(task)
    assert (record["state"], record["escrow"], record["deposit"]) == (TaskState.SETTLED, 0, 0)
    assert named(s.h.block(at=s.progress(task)["confirmDeadline"]).system_events, "TaskSettled") == []
    s.assert_no_locked_stake()


def test_dispute_where_the_council_accepts_pays_the_council_from_the_deposit_and_burns_the_rest(s, cast):
    e, members = cast.executor, cast.members
    task = finished(s, cast)
    s.h.ok(cast.client, TASK_ABI, "dispute", task)
    s.draw(task, 1)
    paid_before = [s.received(m) for m in members]
    executor_before = s.received(e)
    votes = {m: (ckpt(1), step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    block = s.reveal_exact(task, 1, votes)
    each, _, _ = payout(DEPOSIT, 3, checkpoints=1)  # the deposit pays the council as a collateral would
    assert DEPOSIT // 3 < fee(1) and each == DEPOSIT // 3  # this deposit is below 3 × S: split whole
    refund = MAX_PAYMENT - PRICE_E
    assert one(block.txs[-1].events, "TaskSettled").args == {
        "taskId": task, "outcome": Outcome.CLIENT_LOST, "refund": refund, "paid": PRICE_E}
    assert [s.received(m) - before for m, before in zip(members, paid_before, strict=True)] == [each] * 3
    assert s.received(cast.client) == refund  # the deposit is forfeited: fee to the council, the rest burned
    assert s.received(e) == executor_before
    record = s.task(task)
    assert (record["state"], record["escrow"], record["deposit"]) == (TaskState.SETTLED, 0, 0)
    assert s.h.balance(TASK) == 0
    s.assert_no_locked_stake()
    assert s.penalties() == []
    assert_never_slashed(s, e)


# -- lazy members under allclose --


def allclose_round(s: Scenario, task: int, k: int, executor: Any) -> tuple[list[Any], dict[Any, tuple[bytes, bytes]]]:
    """The executor commits, the council is drawn, every member commits its own result and state, the
    executor reveals, every member reveals yes: the council (in its on-chain order) and what each committed."""
    s.commit(task, k, executor, ckpt(k))
    s.draw(task, k)
    council = s.council(task, k)
    own = {m: (keccak(b"result" + m.address), keccak(b"state" + m.address)) for m in council}
    s.commit_exact(task, k, own)
    s.reveal_checkpoint(task, k, executor, ckpt(k))
    s.reveal_allclose(task, k, {m: (True, *own[m]) for m in council})
    return council, own


def test_a_lazy_member_loses_its_seat_stake_to_the_members_that_did_the_work(s, cast):
    """allclose, c = 3: the two members that computed mark the third's published result not allclose
    (2 ≥ ⅔ of the 2 others): it loses councilSeatStake, split between the two, and its vote is not
    counted; the two yes votes (3·2 ≥ 2·3) accept; the honest members and the executor are whole."""
    e, members = cast.executor, cast.members
    task = start(s, cast, checkpoints=1, equivalence=Equivalence.ALLCLOSE)
    council, _ = allclose_round(s, task, 1, e)
    lazy = council[2]
    workers = [m for m in council if m != lazy]
    before = {m: s.received(m) for m in council}
    block = s.judge(task, 1, council, lazy=(lazy,))
    events = block.txs[-1].events
    assert one(events, "MemberFoundLazy").args == {
        "taskId": task, "k": 1, "member": lazy.address, "round": 0, "penalty": SEAT}
    assert one(events, "ComputationPenalty").args == {
        "offender": lazy.address, "taskId": task, "kind": Penalty.LAZY_MEMBER, "penalty": SEAT, "beneficiary": TASK}
    each, rest = shares(PRICE_E, SHARE_BPS, 2)
    assert one(events, "CheckpointAccepted").args == {
        "taskId": task, "k": 1, "executorPaid": rest, "councilPaid": 2 * each, "discount": 0}
    for m in workers:
        assert s.received(m) - before[m] == each + SEAT // 2
        assert_never_slashed(s, m)
    assert s.received(lazy) == before[lazy]
    assert s.stake(lazy)["staked"] == PROVIDER_STAKE - SEAT
    assert_never_slashed(s, e)
    s.h.ok(cast.client, TASK_ABI, "confirm", task)
    s.assert_no_locked_stake()
    assert sorted(m.address for m in council) == sorted(m.address for m in members)


@pytest.mark.parametrize("marks", [0, 1])
def test_fewer_than_two_thirds_of_the_others_mark_nobody_lazy(s, cast, marks):
    """One honest member alone cannot take another's stake: with one mark (of 2 others) nobody is lazy,
    every vote counts, nobody is penalized; with no marks the same."""
    e = cast.executor
    task = start(s, cast, checkpoints=1, equivalence=Equivalence.ALLCLOSE)
    council, _ = allclose_round(s, task, 1, e)
    target = council[2]
    verdicts = {m: [not (marks and m == council[0] and other == target) for other in council] for m in council}
    block = s.h.block(*(s.h.tx(m, TASK_ABI, "judgeResults", task, 1, verdicts[m]) for m in council))
    assert all(r.ok for r in block.txs)
    events = block.txs[-1].events
    assert named(events, "MemberFoundLazy") == []
    assert one(events, "CheckpointAccepted")["councilPaid"] == shares(PRICE_E, SHARE_BPS, 3)[0] * 3
    assert s.penalties() == []


def test_a_member_that_reveals_but_does_not_judge_misses_its_vote(s, cast):
    e = cast.executor
    task = start(s, cast, checkpoints=1, equivalence=Equivalence.ALLCLOSE)
    council, _ = allclose_round(s, task, 1, e)
    s.judge(task, 1, council[:2])
    events = s.h.block(at=s.checkpoint(task, 1)["phaseEnds"]).system_events
    assert one(events, "ComputationPenalty").args == {
        "offender": council[2].address, "taskId": task, "kind": Penalty.MISSED_VOTE, "penalty": MISSED_VOTE_PENALTY,
        "beneficiary": cast.client.address}
    assert one(events, "CheckpointAccepted")["councilPaid"] == shares(PRICE_E, SHARE_BPS, 2)[0] * 2
