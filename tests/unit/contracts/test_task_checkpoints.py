"""The checkpoint protocol of a batch task, honest paths and every rejection (DESIGN.md §6, steps 1-5).

In-process: signed transactions in blocks sealed by the node's own `Chain.build_block` at timestamps the
test chooses (harness.py); time-triggered steps (council draw, closing a window, auto-confirm) are the
start-of-block system call of the first block whose timestamp reaches them. Every sender pays tip 0, so
its cost is gasUsed × baseFee of the block, and `Scenario.received(account)` is exactly what the
contracts paid it. After every block: Task's balance = Σ escrow + deposit (getTask) and Stake's balance =
Σ staked + Σ unbonding (stakeOf of every dev account).

`Scenario` and the helpers below are shared with test_task_faults.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, STAKE_ABI, TASK_ABI, Event, Harness, TxResult

from ogpu_node.contracts.commitments import checkpoint_commitment, exact_result_commitment
from ogpu_node.types.protocol import BPS, CancelReason, Equivalence, Outcome, Phase, TaskState

# ogpu_node/config/networks/dev.json config.ogpu
COLLATERAL_BPS = 10_000
CLIENT_DEPOSIT_BPS = 1_000
REPORTER_SHARE_BPS = 1_000
REVEAL_WINDOW = 30
SEAT = 10 * OGPU
MISSED_VOTE_PENALTY = OGPU
MAX_INCONCLUSIVE_ROUNDS = 3
MAX_DEADLINES_PER_BLOCK = 64


PRESCRIPTION = keccak(b"batch prescription")
PROVIDER_STAKE = 200 * OGPU
WINDOW = 100  # segmentWindow of the tasks below
MAX_PAYMENT = 2 * OGPU
DEPOSIT = MAX_PAYMENT * CLIENT_DEPOSIT_BPS // BPS
PRICE = OGPU + 1  # not divisible by 2 or 3: the parts differ by a wei

BASE_TERMS = {
    "maxPayment": MAX_PAYMENT, "councilSize": 3, "councilShareBps": 1_000, "checkpoints": 2,
    "segmentWindow": WINDOW, "bidWindow": 1_000, "firstN": 1, "minBids": 1, "latenessBpsPerSecond": 0,
    "confirmWindow": 500, "responseMethod": 0, "responseWeight": 0, "equivalence": Equivalence.EXACT,
    "minMemoryMiB": 0, "deviceMask": 0,
}


def terms(**overrides: int) -> dict[str, int]:
    unknown = set(overrides) - set(BASE_TERMS)
    assert not unknown, unknown
    return {**BASE_TERMS, **overrides}


def part(price: int, k: int, checkpoints: int) -> int:
    """DESIGN.md §6 step 4: ⌊P·k/K⌋ − ⌊P·(k−1)/K⌋."""
    return price * k // checkpoints - price * (k - 1) // checkpoints


def ckpt(k: int, tag: bytes = b"") -> bytes:
    return keccak(b"checkpoint" + bytes([k]) + tag)


def step(k: int, tag: bytes = b"") -> bytes:
    return keccak(b"state at the drawn step" + bytes([k]) + tag)


def salt(account: Any) -> bytes:
    return keccak(b"salt" + account.address)


def named(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if e.name == name]


def one(events: list[Event], name: str) -> Event:
    found = named(events, name)
    assert len(found) == 1, (name, [e.name for e in events])
    return found[0]


class Scenario:
    """A harness with a ledger of what each account spent (fees + value of successful txs) and invariant
    checks after every block."""

    def __init__(self, chain: Any, accounts: list[Any]) -> None:
        self.h = Harness(chain)
        self.accounts = list(accounts)
        self.by_address = {a.address: a for a in self.accounts}
        self.start = {a.address: self.h.balance(a.address) for a in self.accounts}
        self.spent: dict[bytes, int] = defaultdict(int)
        self.events: list[Event] = []
        self.h.after_block.append(self._after_block)

    # -- invariants --

    def _after_block(self, block: Any) -> None:
        for result in block.txs:
            self.spent[result.tx.sender] += result.fee + (result.tx.value if result.ok else 0)
            if result.ok:
                self.events += result.events
        self.events += block.system_events
        h = self.h
        assert h.balance(TASK_ABI.address) == h.task_liabilities(), f"Task balance, block {block.number}"
        assert h.balance(STAKE_ABI.address) == h.stake_liabilities(self.accounts), f"Stake balance, block {block.number}"
        assert h.balance(BID_ABI.address) == 0

    def received(self, account: Any) -> int:
        """What the contracts paid `account` since the start (its fees and sent value added back)."""
        return self.h.balance(account.address) - self.start[account.address] + self.spent[account.address]

    def assert_no_locked_stake(self) -> None:
        locked = {a.address.hex(): self.stake(a)["locked"] for a in self.accounts if self.stake(a)["locked"]}
        assert locked == {}

    def penalties(self) -> list[Event]:
        return named(self.events, "ComputationPenalty")

    # -- views --

    def stake(self, account: Any) -> dict[str, Any]:
        return self.h.view(STAKE_ABI, "stakeOf", account.address)

    def task(self, task_id: int) -> dict[str, Any]:
        return self.h.view(TASK_ABI, "getTask", task_id)

    def checkpoint(self, task_id: int, k: int) -> dict[str, Any]:
        return self.h.view(TASK_ABI, "getCheckpoint", task_id, k)

    def progress(self, task_id: int) -> dict[str, Any]:
        return self.h.view(TASK_ABI, "getProgress", task_id)

    def council(self, task_id: int, k: int) -> list[Any]:
        return [self.by_address[a] for a in self.checkpoint(task_id, k)["council"]]

    # -- set-up --

    def providers(self, accounts: list[Any], memory_mib: int = 8_000, device_kind: int = 0,
                  stake: int = PROVIDER_STAKE) -> None:
        self.h.make_providers(accounts, stake, memory_mib=memory_mib, device_kind=device_kind)

    def submit(self, client: Any, deposit: int | None = None, **overrides: int) -> int:
        t = terms(**overrides)
        deposit = t["maxPayment"] * CLIENT_DEPOSIT_BPS // BPS if deposit is None else deposit
        result = self.h.ok(client, TASK_ABI, "submitTask", PRESCRIPTION, 0, t, value=t["maxPayment"] + deposit)
        return TASK_ABI.decode_output("submitTask", result.output)

    def assign(self, task_id: int, bids: list[tuple[Any, int]]) -> Event:
        """Place the bids in one block; the task's firstN must equal len(bids) so the last one assigns."""
        block = self.h.block(*(self.h.tx(a, BID_ABI, "placeBid", task_id, price) for a, price in bids))
        assert all(r.ok for r in block.txs), [r.reason for r in block.txs]
        return one(block.txs[-1].events, "TaskAssigned")

    # -- steps (each in a block of its own unless noted) --

    def commit(self, task_id: int, k: int, executor: Any, checkpoint_hash: bytes, **options: Any) -> TxResult:
        commitment = checkpoint_commitment(task_id, k, executor.address, checkpoint_hash)
        return self.h.ok(executor, TASK_ABI, "commitCheckpoint", task_id, k, commitment, **options)

    def draw(self, task_id: int, k: int, **options: Any) -> Event:
        """An empty block whose system call draws checkpoint k's council."""
        block = self.h.block(**options)
        drawn = one(block.system_events, "CouncilDrawn")
        assert (drawn["taskId"], drawn["k"]) == (task_id, k)
        return drawn

    def reveal_checkpoint(self, task_id: int, k: int, executor: Any, checkpoint_hash: bytes, **options: Any) -> TxResult:
        return self.h.ok(executor, TASK_ABI, "revealCheckpoint", task_id, k, checkpoint_hash, **options)

    def exact_commitment(self, task_id: int, k: int, member: Any, result: bytes, state: bytes) -> bytes:
        return exact_result_commitment(task_id, k, member.address, result, state, salt(member))

    def commit_exact(self, task_id: int, k: int, votes: dict[Any, tuple[bytes, bytes]], **options: Any) -> Any:
        """Members' commitResult (exact) in one block; votes: member → (result hash, step hash)."""
        block = self.h.block(*(
            self.h.tx(m, TASK_ABI, "commitResult", task_id, k, self.exact_commitment(task_id, k, m, r, s))
            for m, (r, s) in votes.items()
        ), **options)
        assert all(r.ok for r in block.txs), [r.reason for r in block.txs]
        return block

    def reveal_exact(self, task_id: int, k: int, votes: dict[Any, tuple[bytes, bytes]], fetched: bool = True,
                     **options: Any) -> Any:
        block = self.h.block(*(
            self.h.tx(m, TASK_ABI, "revealResult", task_id, k, True, r, s, salt(m), fetched)
            for m, (r, s) in votes.items()
        ), **options)
        assert all(r.ok for r in block.txs), [r.reason for r in block.txs]
        return block

    def reveal_allclose(self, task_id: int, k: int, votes: dict[Any, tuple[bool, bytes, bytes]], **options: Any) -> Any:
        """Members' revealResult under allclose; votes: member → (verdict on the executor's checkpoint,
        own result hash, own state hash), committed with commit_exact."""
        block = self.h.block(*(
            self.h.tx(m, TASK_ABI, "revealResult", task_id, k, v, r, st, salt(m), True)
            for m, (v, r, st) in votes.items()
        ), **options)
        assert all(r.ok for r in block.txs), [r.reason for r in block.txs]
        return block

    def judge(self, task_id: int, k: int, members: list[Any], lazy: tuple[Any, ...] = (), **options: Any) -> Any:
        """Each of `members` judges the council's results: every result allclose to its own except the
        `lazy` members' (whose own judgements call everyone allclose, as a member that never computed)."""
        council = self.council(task_id, k)
        block = self.h.block(*(
            self.h.tx(m, TASK_ABI, "judgeResults", task_id, k,
                      [m in lazy or other not in lazy for other in council])
            for m in members
        ), **options)
        assert all(r.ok for r in block.txs), [r.reason for r in block.txs]
        return block

    def verify_exact(self, task_id: int, k: int, executor: Any, members: list[Any], checkpoint_hash: bytes) -> Any:
        """Draw, all members commit the executor's hash, the executor reveals, all reveal: the block
        whose last reveal accepts checkpoint k."""
        drawn = self.draw(task_id, k)
        assert sorted(drawn["members"]) == sorted(m.address for m in members)
        votes = {m: (checkpoint_hash, step(k)) for m in members}
        self.commit_exact(task_id, k, votes)
        self.reveal_checkpoint(task_id, k, executor, checkpoint_hash)
        return self.reveal_exact(task_id, k, votes)

    def verify_allclose(self, task_id: int, k: int, executor: Any, members: list[Any], checkpoint_hash: bytes) -> Any:
        """Draw, members commit their own results, the executor reveals, members reveal yes and judge
        each other allclose: the block whose last judgement accepts checkpoint k."""
        drawn = self.draw(task_id, k)
        assert sorted(drawn["members"]) == sorted(m.address for m in members)
        own = {m: (keccak(b"own result" + m.address), step(k)) for m in members}
        self.commit_exact(task_id, k, own)
        self.reveal_checkpoint(task_id, k, executor, checkpoint_hash)
        self.reveal_allclose(task_id, k, {m: (True, *own[m]) for m in members})
        return self.judge(task_id, k, members)

    def saturate_queue(self, filler: Any, due: int) -> None:
        """Queue MAX_DEADLINES_PER_BLOCK bid-closing deadlines due at `due` (filler tasks of 1 wei), so that
        the first block at or after `due` spends its whole system-call budget on them and a later-queued
        deadline due then has not run yet: a function's own deadline check is all that stands."""
        assert due > self.h.now + 2
        filler_terms = terms(maxPayment=1, councilSize=1, checkpoints=1, firstN=0)
        for batch in (32, 32):
            now = self.h.now + 1
            txs = [
                self.h.tx(filler, TASK_ABI, "submitTask", PRESCRIPTION, 0, dict(filler_terms, bidWindow=due - now), value=1)
                for _ in range(batch)
            ]
            block = self.h.block(*txs, at=now)
            assert all(r.ok for r in block.txs)


def shares(net: int, share_bps: int, agreeing: int) -> tuple[int, int]:
    """(each agreeing member's share, the executor's remainder) of a checkpoint's net payment."""
    each = net * share_bps // BPS // agreeing
    return each, net - each * agreeing


# -- fixtures --


@pytest.fixture
def s(chain, dev_accounts) -> Scenario:
    return Scenario(chain, dev_accounts)


@pytest.fixture
def client(dev_accounts):
    return dev_accounts[0]


@pytest.fixture
def executor(dev_accounts):
    return dev_accounts[1]


@pytest.fixture
def members(dev_accounts):
    return dev_accounts[2:5]


@pytest.fixture
def outsider(dev_accounts):
    return dev_accounts[8]


@pytest.fixture
def ready(s, executor, members):
    """The executor and exactly councilSize (3) other qualifying providers: every council is `members`."""
    s.providers([executor, *members])
    return s


def assigned(s: Scenario, client: Any, executor: Any, price: int = PRICE, **overrides: int) -> int:
    task_id = s.submit(client, **overrides)
    event = s.assign(task_id, [(executor, price)])
    assert (event["executor"], event["price"]) == (executor.address, price)
    return task_id


def test_the_dev_genesis_parameters_these_tests_assume(chain):
    p = chain.genesis.protocol
    assert (p.reporter_share_bps, p.collateral_bps, p.client_deposit_bps) == (
        REPORTER_SHARE_BPS, COLLATERAL_BPS, CLIENT_DEPOSIT_BPS)
    assert (p.reveal_window, p.council_seat_stake, p.missed_vote_penalty, p.max_inconclusive_rounds) == (
        REVEAL_WINDOW, SEAT, MISSED_VOTE_PENALTY, MAX_INCONCLUSIVE_ROUNDS)
    assert p.max_deadlines_per_block == MAX_DEADLINES_PER_BLOCK
    assert p.min_provider_stake <= PROVIDER_STAKE - 3 * OGPU  # members stay providers after penalties


# -- honest flows --


def test_exact_flow_pays_parts_summing_to_the_price_and_confirm_settles(ready, client, executor, members):
    """K = 3 and a price not divisible by 3: parts ⌊P·k/K⌋ − ⌊P·(k−1)/K⌋ sum exactly to P; each part's
    council share is split equally among the agreeing members, the remainder goes to the executor; seats
    lock councilSeatStake until the verdict; confirm refunds escrow − Σ paid + deposit and unlocks the
    executor's collateral (TaskSettled outcome 1)."""
    s = ready
    task = assigned(s, client, executor, checkpoints=3)
    assert s.stake(executor)["locked"] == PRICE * COLLATERAL_BPS // BPS
    parts = [part(PRICE, k, 3) for k in (1, 2, 3)]
    assert parts == [333_333_333_333_333_333, 333_333_333_333_333_334, 333_333_333_333_333_334]
    assert sum(parts) == PRICE
    paid_executor = paid_member = 0
    for k in (1, 2, 3):
        h = ckpt(k)
        commit = s.commit(task, k, executor, h)
        assert one(commit.events, "CheckpointCommitted").args == {
            "taskId": task, "k": k, "commitment": checkpoint_commitment(task, k, executor.address, h)}
        drawn = s.draw(task, k)
        assert drawn["round"] == 0 and drawn["commitDeadline"] == s.h.now + WINDOW
        assert sorted(drawn["members"]) == sorted(m.address for m in members)
        assert sorted(s.checkpoint(task, k)["council"]) == sorted(m.address for m in members)
        assert s.checkpoint(task, k)["phase"] == Phase.COUNCIL_COMMIT
        assert [s.stake(m)["locked"] for m in members] == [SEAT] * 3
        votes = {m: (h, step(k)) for m in members}
        s.commit_exact(task, k, votes)
        s.reveal_checkpoint(task, k, executor, h)
        block = s.reveal_exact(task, k, votes)
        each, rest = shares(parts[k - 1], 1_000, 3)
        accepted = one(block.txs[-1].events, "CheckpointAccepted")
        assert accepted.args == {"taskId": task, "k": k, "executorPaid": rest, "councilPaid": 3 * each, "discount": 0}
        assert [s.stake(m)["locked"] for m in members] == [0] * 3  # seats unlocked at the verdict
        paid_executor += rest
        paid_member += each
        assert s.received(executor) == paid_executor
        assert [s.received(m) for m in members] == [paid_member] * 3
        assert s.progress(task)["accepted"] == k
        assert s.progress(task)["paid"] == sum(parts[:k])
        assert s.task(task)["escrow"] == MAX_PAYMENT - sum(parts[:k])
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION
    assert s.stake(executor)["locked"] == PRICE  # collateral held until settlement
    settled = one(s.h.ok(client, TASK_ABI, "confirm", task).events, "TaskSettled")
    refund = MAX_PAYMENT - PRICE + DEPOSIT
    assert settled.args == {"taskId": task, "outcome": Outcome.CONFIRMED, "refund": refund, "paid": PRICE}
    assert s.received(client) == refund
    assert paid_executor + 3 * paid_member == PRICE
    record = s.task(task)
    assert (record["state"], record["escrow"], record["deposit"]) == (TaskState.SETTLED, 0, 0)
    assert s.stake(executor)["staked"] == PROVIDER_STAKE
    s.assert_no_locked_stake()
    assert s.penalties() == []


def test_allclose_flow_members_commit_first_reveal_judge_and_confirm_settles(ready, client, executor, members):
    """allclose: members commit to their own result and state before the executor can reveal; the
    executor reveals, members reveal their verdict and both hashes, then judge each other's results;
    the last judgement tallies; all parts paid, confirm settles."""
    s = ready
    task = assigned(s, client, executor, checkpoints=2, equivalence=Equivalence.ALLCLOSE)
    for k in (1, 2):
        h = ckpt(k)
        s.commit(task, k, executor, h)
        s.draw(task, k)
        early = s.h.send(executor, TASK_ABI, "revealCheckpoint", task, k, h)
        assert early.reason == "Task: checkpoint is not open for the executor's reveal"
        own = {m: (keccak(b"own result" + m.address), step(k)) for m in members}
        committed = s.commit_exact(task, k, own)
        assert one(committed.txs[-1].events, "RevealPhase")["revealDeadline"] == s.h.now + REVEAL_WINDOW
        revealed = s.reveal_checkpoint(task, k, executor, h)
        assert one(revealed.events, "CheckpointRevealed").args == {"taskId": task, "k": k, "checkpointHash": h}
        block = s.reveal_allclose(task, k, {m: (True, *own[m]) for m in members})
        assert [(e["member"], e["verdict"], e["resultHash"], e["stepHash"]) for r in block.txs
                for e in named(r.events, "ResultRevealed")] == [(m.address, True, *own[m]) for m in members]
        opened = one(block.txs[-1].events, "JudgingPhase")
        assert (opened["round"], opened["judgeDeadline"]) == (0, s.h.now + REVEAL_WINDOW)
        assert s.checkpoint(task, k)["phase"] == Phase.JUDGE
        block = s.judge(task, k, members)
        each, rest = shares(part(PRICE, k, 2), 1_000, 3)
        assert one(block.txs[-1].events, "CheckpointAccepted").args == {
            "taskId": task, "k": k, "executorPaid": rest, "councilPaid": 3 * each, "discount": 0}
    settled = one(s.h.ok(client, TASK_ABI, "confirm", task).events, "TaskSettled")
    assert settled.args == {
        "taskId": task, "outcome": Outcome.CONFIRMED, "refund": MAX_PAYMENT - PRICE + DEPOSIT, "paid": PRICE}
    assert s.received(client) == MAX_PAYMENT - PRICE + DEPOSIT
    assert s.received(executor) + sum(s.received(m) for m in members) == PRICE
    s.assert_no_locked_stake()
    assert s.penalties() == []


def test_auto_confirm_after_the_confirm_window_with_no_transaction(ready, client, executor, members):
    s = ready
    task = assigned(s, client, executor, checkpoints=1, confirmWindow=500)
    s.commit(task, 1, executor, ckpt(1))
    s.verify_exact(task, 1, executor, members, ckpt(1))
    deadline = s.h.now + 500
    assert s.progress(task)["confirmDeadline"] == deadline
    quiet = s.h.block(at=deadline - 1)
    assert named(quiet.system_events, "TaskSettled") == []
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION
    block = s.h.block(at=deadline)
    assert block.txs == []
    settled = one(block.system_events, "TaskSettled")
    assert settled.args == {
        "taskId": task, "outcome": Outcome.CONFIRMED, "refund": MAX_PAYMENT - PRICE + DEPOSIT, "paid": PRICE}
    assert s.task(task)["state"] == TaskState.SETTLED
    assert s.received(client) == MAX_PAYMENT - PRICE + DEPOSIT
    s.assert_no_locked_stake()


@pytest.mark.parametrize(
    ("bps_per_second", "late", "rate"),
    [(100, 7, 700), (1_000, 15, BPS)],  # the second is capped at 10000 bps: the whole part stays in escrow
    ids=["discounted", "capped"],
)
def test_lateness_discount_stays_in_escrow_and_is_refunded(ready, client, executor, members, bps_per_second, late, rate):
    """Commit after the due time assignedAt + k·segmentWindow, within the grace window: the part is paid
    less part × min(10000, late·bps)/10000, which stays in escrow and is refunded at settlement."""
    s = ready
    task = assigned(s, client, executor, checkpoints=2, latenessBpsPerSecond=bps_per_second)
    assigned_at = s.task(task)["assignedAt"]
    # k = 1 on time (at its due time exactly: no discount), k = 2 `late` seconds after its due time
    s.commit(task, 1, executor, ckpt(1), at=assigned_at + WINDOW)
    block = s.verify_exact(task, 1, executor, members, ckpt(1))
    assert one(block.txs[-1].events, "CheckpointAccepted")["discount"] == 0
    s.commit(task, 2, executor, ckpt(2), at=assigned_at + 2 * WINDOW + late)
    block = s.verify_exact(task, 2, executor, members, ckpt(2))
    p1, p2 = part(PRICE, 1, 2), part(PRICE, 2, 2)
    discount = p2 * rate // BPS
    net = p2 - discount
    each, rest = shares(net, 1_000, 3)
    assert one(block.txs[-1].events, "CheckpointAccepted").args == {
        "taskId": task, "k": 2, "executorPaid": rest, "councilPaid": 3 * each, "discount": discount}
    assert s.task(task)["escrow"] == MAX_PAYMENT - p1 - net
    settled = one(s.h.ok(client, TASK_ABI, "confirm", task).events, "TaskSettled")
    assert settled.args == {
        "taskId": task, "outcome": Outcome.CONFIRMED, "refund": MAX_PAYMENT - p1 - net + DEPOSIT, "paid": p1 + net}
    assert s.received(client) == MAX_PAYMENT - PRICE + discount + DEPOSIT
    assert s.received(executor) + sum(s.received(m) for m in members) == PRICE - discount


def test_commits_run_ahead_and_the_next_council_is_drawn_only_after_acceptance(ready, client, executor, members):
    s = ready
    task = assigned(s, client, executor, checkpoints=3)
    s.commit(task, 1, executor, ckpt(1))
    # k = 2 and 3 committed while k = 1 is still with its council
    block = s.h.block(s.h.tx(executor, TASK_ABI, "commitCheckpoint", task, 2,
                             checkpoint_commitment(task, 2, executor.address, ckpt(2))))
    assert [e["k"] for e in named(block.system_events, "CouncilDrawn")] == [1]
    assert block.txs[0].ok
    s.commit(task, 3, executor, ckpt(3))
    assert s.progress(task)["committed"] == 3
    for k in (2, 3):
        assert s.checkpoint(task, k)["phase"] == Phase.COMMITTED
        assert s.checkpoint(task, k)["council"] == []
    votes = {m: (ckpt(1), step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, executor, ckpt(1))
    quiet = s.h.block()
    assert named(quiet.system_events, "CouncilDrawn") == []  # k = 1 not yet accepted
    s.reveal_exact(task, 1, votes)
    for k in (2, 3):
        block = s.verify_exact(task, k, executor, members, ckpt(k))  # its draw is the next block after k − 1
        assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == k
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION
    assert s.progress(task)["paid"] == PRICE


def test_council_commit_window_closes_early_once_all_have_committed(ready, client, executor, members):
    s = ready
    task = assigned(s, client, executor)
    s.commit(task, 1, executor, ckpt(1))
    drawn = s.draw(task, 1)
    assert s.checkpoint(task, 1)["phaseEnds"] == drawn["commitDeadline"] == s.h.now + WINDOW
    votes = {m: (ckpt(1), step(1)) for m in members}
    first = s.commit_exact(task, 1, dict(list(votes.items())[:2]))
    assert named(first.txs[-1].events, "RevealPhase") == []
    assert s.checkpoint(task, 1)["phase"] == Phase.COUNCIL_COMMIT
    last = s.commit_exact(task, 1, dict(list(votes.items())[2:]))
    assert one(last.txs[0].events, "RevealPhase").args == {
        "taskId": task, "k": 1, "round": 0, "revealDeadline": s.h.now + REVEAL_WINDOW}
    record = s.checkpoint(task, 1)
    assert (record["phase"], record["phaseEnds"]) == (Phase.REVEAL, s.h.now + REVEAL_WINDOW)


def test_council_never_includes_the_client_or_the_executor(s, dev_accounts):
    """The client and the executor are staked providers with the resources, yet never drawn; with
    exactly three other candidates every council of c = 3 is those three."""
    client, executor, others = dev_accounts[0], dev_accounts[1], dev_accounts[2:5]
    s.providers([client, executor, *others])
    task = assigned(s, client, executor, checkpoints=2)
    for k in (1, 2):
        s.commit(task, k, executor, ckpt(k))
        s.verify_exact(task, k, executor, others, ckpt(k))
    drawn = named(s.events, "CouncilDrawn")
    assert len(drawn) == 2
    for event in drawn:
        assert client.address not in event["members"] and executor.address not in event["members"]


def test_council_respects_min_memory_and_device_mask(s, dev_accounts):
    client, executor = dev_accounts[0], dev_accounts[1]
    cpu_big, cuda_big, cuda_small, rocm_big, cuda_huge = dev_accounts[2:7]
    s.providers([executor, cpu_big], memory_mib=8_000, device_kind=0)
    s.providers([cuda_big], memory_mib=8_000, device_kind=1)
    s.providers([cuda_small], memory_mib=2_000, device_kind=1)  # below minMemoryMiB
    s.providers([rocm_big], memory_mib=8_000, device_kind=2)  # device not in the mask
    s.providers([cuda_huge], memory_mib=16_000, device_kind=1)
    task = assigned(s, client, executor, checkpoints=1, minMemoryMiB=4_000, deviceMask=0b011)
    s.commit(task, 1, executor, ckpt(1))
    s.verify_exact(task, 1, executor, [cpu_big, cuda_big, cuda_huge], ckpt(1))
    assert s.task(task)["state"] == TaskState.AWAITING_CONFIRMATION


# -- rejections --


def reason(s: Scenario, account: Any, function: str, *args: Any, **options: Any) -> str:
    result = s.h.send(account, TASK_ABI, function, *args, **options)
    assert not result.ok
    return result.reason


def test_commit_checkpoint_rejections(ready, client, executor, members, outsider):
    s = ready
    task = s.submit(client, checkpoints=2, firstN=2)
    c1 = checkpoint_commitment(task, 1, executor.address, ckpt(1))
    assert reason(s, executor, "commitCheckpoint", task, 1, c1) == "Task: task is not running"  # still bidding
    assert reason(s, executor, "commitCheckpoint", 99, 1, c1) == "Task: no task 99"
    s.assign(task, [(members[0], PRICE + 5), (executor, PRICE)])
    assert reason(s, outsider, "commitCheckpoint", task, 1, c1) == "Task: caller is not the executor"
    assert reason(s, members[0], "commitCheckpoint", task, 1, c1) == "Task: caller is not the executor"
    assert reason(s, client, "commitCheckpoint", task, 1, c1) == "Task: caller is not the executor"
    assert reason(s, executor, "commitCheckpoint", task, 2, c1) == "Task: expected checkpoint 1"
    assert reason(s, executor, "commitCheckpoint", task, 0, c1) == "Task: expected checkpoint 1"
    s.commit(task, 1, executor, ckpt(1))
    assert reason(s, executor, "commitCheckpoint", task, 1, c1) == "Task: expected checkpoint 2"
    s.commit(task, 2, executor, ckpt(2))
    assert reason(s, executor, "commitCheckpoint", task, 3, c1) == "Task: no such checkpoint"
    assert s.progress(task)["committed"] == 2
    assert s.penalties() == []


def test_commit_after_the_grace_window_is_past_its_deadline(ready, client, executor, members, dev_accounts):
    """With the system call's budget spent on earlier deadlines, the expiry of checkpoint 1 has not run:
    commitCheckpoint's own check rejects a commit after due + segmentWindow."""
    s = ready
    task = assigned(s, client, executor)
    expiry = s.task(task)["assignedAt"] + 2 * WINDOW
    s.saturate_queue(dev_accounts[9], due=expiry - 1)
    late = s.h.send(executor, TASK_ABI, "commitCheckpoint", task, 1,
                    checkpoint_commitment(task, 1, executor.address, ckpt(1)), at=expiry + 1)
    assert late.reason == "Task: checkpoint 1 is past its deadline"
    assert named(s.h.blocks[-1].system_events, "CheckpointMissed") == []
    # the next block runs the expiry: slashed, no other bidder, cancelled
    block = s.h.block()
    missed = one(block.system_events, "CheckpointMissed")
    assert (missed["k"], missed["executor"], missed["penalty"]) == (1, executor.address, PRICE)
    assert one(block.system_events, "TaskCancelled")["reason"] == CancelReason.NO_REPLACEMENT
    s.assert_no_locked_stake()


def test_commit_at_the_exact_expiry_time_is_rejected_whatever_the_queue_load(ready, client, executor, dev_accounts):
    s = ready
    task = assigned(s, client, executor)
    expiry = s.task(task)["assignedAt"] + 2 * WINDOW
    s.saturate_queue(dev_accounts[9], due=expiry - 1)
    result = s.h.send(executor, TASK_ABI, "commitCheckpoint", task, 1,
                      checkpoint_commitment(task, 1, executor.address, ckpt(1)), at=expiry)
    # Without the saturated queue, this block's system call expires the executor before the commit runs.
    assert result.reason == "Task: checkpoint 1 is past its deadline"


def test_reveal_checkpoint_rejections_under_exact(ready, client, executor, members, outsider):
    s = ready
    task = assigned(s, client, executor)
    h = ckpt(1)
    not_open = "Task: checkpoint is not open for the executor's reveal"
    assert reason(s, executor, "revealCheckpoint", task, 1, h) == not_open  # nothing committed
    block = s.h.block(  # committed, its council not drawn yet (that is the next block's system call)
        s.h.tx(executor, TASK_ABI, "commitCheckpoint", task, 1, checkpoint_commitment(task, 1, executor.address, h)),
        s.h.tx(executor, TASK_ABI, "revealCheckpoint", task, 1, h),
    )
    assert block.txs[0].ok and block.txs[1].reason == not_open
    s.draw(task, 1)
    assert reason(s, executor, "revealCheckpoint", task, 1, h) == not_open  # council commit phase (exact)
    votes = {m: (h, step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    assert reason(s, outsider, "revealCheckpoint", task, 1, h) == "Task: caller is not the executor"
    assert reason(s, members[0], "revealCheckpoint", task, 1, h) == "Task: caller is not the executor"
    assert reason(s, executor, "revealCheckpoint", task, 1, ckpt(1, b"other")) == "Task: reveal does not match the commitment"
    s.reveal_checkpoint(task, 1, executor, h)
    assert reason(s, executor, "revealCheckpoint", task, 1, h) == "Task: checkpoint already revealed"
    s.reveal_exact(task, 1, votes)
    assert reason(s, executor, "revealCheckpoint", task, 1, h) == not_open  # accepted
    assert s.progress(task)["accepted"] == 1


def test_commit_result_rejections_under_exact(ready, client, executor, members, outsider):
    s = ready
    task = assigned(s, client, executor, checkpoints=2)
    h = ckpt(1)
    not_member = "Task: caller is not on this checkpoint's council"
    c = s.exact_commitment(task, 1, members[0], h, step(1))
    block = s.h.block(  # in the commit's own block: no council drawn yet
        s.h.tx(executor, TASK_ABI, "commitCheckpoint", task, 1, checkpoint_commitment(task, 1, executor.address, h)),
        s.h.tx(members[0], TASK_ABI, "commitResult", task, 1, c),
    )
    assert block.txs[0].ok and block.txs[1].reason == not_member
    drawn = s.draw(task, 1)
    for account in (client, executor, outsider):
        assert reason(s, account, "commitResult", task, 1, c) == not_member
    s.h.ok(members[0], TASK_ABI, "commitResult", task, 1, c)
    assert reason(s, members[0], "commitResult", task, 1, c) == "Task: result already committed"
    # the window ends at draw + segmentWindow (the block at that time closes it)
    late = s.h.send(members[1], TASK_ABI, "commitResult", task, 1,
                    s.exact_commitment(task, 1, members[1], h, step(1)), at=drawn["commitDeadline"])
    assert late.reason == "Task: the council's commit window is closed"
    assert one(s.h.blocks[-1].system_events, "RevealPhase")["revealDeadline"] == drawn["commitDeadline"] + REVEAL_WINDOW
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL


def test_judge_results_rejections_under_allclose(ready, client, executor, members, outsider):
    """judgeResults: only in the judging window, only by a member that revealed, once, with one verdict
    per council member; a refused call changes nothing."""
    s = ready
    task = assigned(s, client, executor, equivalence=Equivalence.ALLCLOSE)
    h = ckpt(1)
    s.commit(task, 1, executor, h)
    s.draw(task, 1)
    council = s.council(task, 1)
    first, second, silent = council
    own = {m: (keccak(b"own" + m.address), step(1)) for m in council}
    s.commit_exact(task, 1, own)
    closed = "Task: the judging window is closed"
    assert reason(s, first, "judgeResults", task, 1, [True] * 3) == closed  # reveal phase
    s.reveal_checkpoint(task, 1, executor, h)
    s.reveal_allclose(task, 1, {m: (True, *own[m]) for m in (first, second)})
    ends = s.checkpoint(task, 1)["phaseEnds"]
    opened = one(s.h.block(at=ends).system_events, "JudgingPhase")  # `silent` never revealed
    assert s.checkpoint(task, 1)["phase"] == Phase.JUDGE
    assert reason(s, outsider, "judgeResults", task, 1, [True] * 3) == "Task: caller is not on this checkpoint's council"
    assert reason(s, silent, "judgeResults", task, 1, [True] * 3) == "Task: no result revealed"
    assert reason(s, first, "judgeResults", task, 1, [True] * 2) == "Task: expected 3 verdicts, one per council member"
    s.h.ok(first, TASK_ABI, "judgeResults", task, 1, [True] * 3)
    assert reason(s, first, "judgeResults", task, 1, [True] * 3) == "Task: results already judged"
    # at the deadline the block's system call tallies first: the round is over, its council gone
    late = s.h.send(second, TASK_ABI, "judgeResults", task, 1, [True] * 3, at=opened["judgeDeadline"])
    assert late.reason == "Task: caller is not on this checkpoint's council"
    events = s.h.blocks[-1].system_events
    # `silent` missed its reveal, `second` its judgement: each pays the missed-vote penalty; 1 of 3 counted
    assert sorted(p["offender"] for p in named(events, "ComputationPenalty")) == sorted(
        [silent.address, second.address])
    assert one(events, "CheckpointInconclusive")["round"] == 0


def test_reveal_result_rejections_under_exact(ready, client, executor, members, outsider):
    s = ready
    task = assigned(s, client, executor)
    h = ckpt(1)
    first, second, absent = members
    closed = "Task: the reveal window is closed"
    s.commit(task, 1, executor, h)
    drawn = s.draw(task, 1)
    votes = {first: (h, step(1)), second: (h, step(1))}
    s.commit_exact(task, 1, votes)
    assert reason(s, first, "revealResult", task, 1, True, h, step(1), salt(first), True) == closed  # commit phase
    s.h.block(at=drawn["commitDeadline"])  # `absent` never commits: the window closes on time
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL
    assert reason(s, first, "revealResult", task, 1, True, h, step(1), salt(first), True) == (
        "Task: the executor has not revealed this checkpoint yet")
    s.reveal_checkpoint(task, 1, executor, h)
    assert reason(s, outsider, "revealResult", task, 1, True, h, step(1), salt(outsider), True) == (
        "Task: caller is not on this checkpoint's council")
    assert reason(s, absent, "revealResult", task, 1, True, h, step(1), salt(absent), True) == "Task: no result committed"
    mismatch = "Task: reveal does not match the commitment"
    assert reason(s, first, "revealResult", task, 1, True, h, step(1), salt(second), True) == mismatch
    assert reason(s, first, "revealResult", task, 1, True, h, step(2), salt(first), True) == mismatch
    assert reason(s, first, "revealResult", task, 1, True, ckpt(2), step(1), salt(first), True) == mismatch
    s.h.ok(first, TASK_ABI, "revealResult", task, 1, True, h, step(1), salt(first), True)
    assert reason(s, first, "revealResult", task, 1, True, h, step(1), salt(first), True) == "Task: result already revealed"
    s.h.ok(second, TASK_ABI, "revealResult", task, 1, True, h, step(1), salt(second), True)
    ends = s.checkpoint(task, 1)["phaseEnds"]
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL  # `absent` could still be revealing: no early tally
    late = s.h.send(absent, TASK_ABI, "revealResult", task, 1, True, h, step(1), salt(absent), True, at=ends)
    assert late.reason == closed
    assert one(s.h.blocks[-1].system_events, "CheckpointAccepted")["k"] == 1


def test_confirm_and_dispute_rejections(ready, client, executor, members, outsider, dev_accounts):
    s = ready
    task = assigned(s, client, executor, checkpoints=1)
    not_awaiting = "Task: task is not awaiting confirmation"
    for function in ("confirm", "dispute"):
        assert reason(s, client, function, task) == not_awaiting  # running
        assert reason(s, client, function, 7) == "Task: no task 7"
    s.commit(task, 1, executor, ckpt(1))
    s.verify_exact(task, 1, executor, members, ckpt(1))
    deadline = s.progress(task)["confirmDeadline"]
    for function in ("confirm", "dispute"):
        for account in (executor, members[0], outsider):
            assert reason(s, account, function, task) == "Task: caller is not the client"
    # past the window while the auto-confirm has not run yet (the system call's budget is spent)
    s.saturate_queue(dev_accounts[9], due=deadline - 1)
    block = s.h.block(s.h.tx(client, TASK_ABI, "confirm", task), s.h.tx(client, TASK_ABI, "dispute", task), at=deadline)
    assert [r.reason for r in block.txs] == ["Task: the confirmation window has closed"] * 2
    assert named(block.system_events, "TaskSettled") == []
    settled = one(s.h.block().system_events, "TaskSettled")  # the auto-confirm
    assert settled["outcome"] == Outcome.CONFIRMED
    for function in ("confirm", "dispute"):
        assert reason(s, client, function, task) == not_awaiting  # settled
    assert s.received(client) == MAX_PAYMENT - PRICE + DEPOSIT
    assert s.received(dev_accounts[9]) == MAX_DEADLINES_PER_BLOCK  # the filler tasks, cancelled with refund


def test_a_late_executor_reveal_still_leaves_members_a_full_reveal_window(ready, client, executor, members):
    """Rule (exact): members can reveal only after the executor; an executor revealing in the last second
    of the reveal window extends it to a full window from its reveal, so honest members are neither
    penalized nor made inconclusive; the original deadline's step then waits for the new end."""
    s = ready
    task = assigned(s, client, executor)
    h = ckpt(1)
    s.commit(task, 1, executor, h)
    s.draw(task, 1)
    votes = {m: (h, step(1)) for m in members}
    committed = s.commit_exact(task, 1, votes)
    deadline = one(committed.txs[-1].events, "RevealPhase")["revealDeadline"]
    s.reveal_checkpoint(task, 1, executor, h, at=deadline - 1)
    assert s.checkpoint(task, 1)["phaseEnds"] == deadline - 1 + REVEAL_WINDOW
    s.h.block(at=deadline)  # the original close-reveals step runs, finds the window extended
    assert s.checkpoint(task, 1)["phase"] == Phase.REVEAL
    block = s.reveal_exact(task, 1, votes, at=deadline + REVEAL_WINDOW // 2)
    assert one(block.txs[-1].events, "CheckpointAccepted")["k"] == 1
    assert s.penalties() == []
