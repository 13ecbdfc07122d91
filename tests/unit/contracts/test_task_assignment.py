"""Task submission, bidding and assignment on H (DESIGN.md §2, §6), on an in-process chain.

Every step is a signed transaction in a block sealed with `Chain.build_block` at a timestamp the test
chooses (see harness.py); time-triggered steps are the start-of-block system call of the first block
whose timestamp reaches the deadline, with no transaction touching the task. Revert reasons come
from the transactions themselves. After every block the money invariants of DESIGN.md §3 are
checked: Task's balance = Σ escrow + deposit of tasks not settled (a cancelled task holds none),
Stake's balance = Σ staked + Σ unbonding, totalStaked() = Σ staked, and Bid holds nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, STAKE_ABI, TASK_ABI, ZERO_ADDRESS, Event, Harness

from ogpu_node.chain import Chain
from ogpu_node.chain.chain import system_tx_hash
from ogpu_node.config import DEV_GENESIS, parse_genesis
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.types.protocol import BPS, MAX_WINDOW, CancelReason, Role, TaskKind, TaskState

PRESCRIPTION = keccak(b"prescription of a batch task")
MAX_PAYMENT = 10 * OGPU
BID_WINDOW = 30
PROVIDER_STAKE = 500 * OGPU
CLOSED = "Bid: bidding is closed for this task"

BASE_TERMS = {
    "maxPayment": MAX_PAYMENT, "councilSize": 3, "councilShareBps": 1_000, "checkpoints": 4,
    "segmentWindow": 3_600, "bidWindow": BID_WINDOW, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0,
    "confirmWindow": 600, "responseMethod": 0, "responseWeight": 0,
}


def terms(**overrides: int) -> dict[str, int]:
    return {**BASE_TERMS, **overrides}


# -- fixtures and helpers --


def money_invariants(h: Harness, accounts: list[Any]) -> Any:
    def check(_block: Any) -> None:
        count = h.view(TASK_ABI, "taskCount")
        held = 0
        for task_id in range(1, count + 1):
            task = h.view(TASK_ABI, "getTask", task_id)
            if task["state"] == TaskState.CANCELLED:
                assert task["escrow"] == task["deposit"] == 0, task_id
            held += task["escrow"] + task["deposit"]
        assert h.balance(TASK_ABI.address) == held
        staked = sum(h.view(STAKE_ABI, "stakeOf", a.address)["staked"] for a in accounts)
        assert h.balance(STAKE_ABI.address) == h.stake_liabilities(accounts)
        assert h.view(STAKE_ABI, "totalStaked") == staked
        assert h.balance(BID_ABI.address) == 0

    return check


def make_harness(chain: Chain, accounts: list[Any]) -> Harness:
    h = Harness(chain)
    h.after_block.append(money_invariants(h, accounts))
    return h


@pytest.fixture
def h(chain, dev_accounts) -> Harness:
    return make_harness(chain, dev_accounts)


@pytest.fixture
def params(chain):
    return chain.genesis.protocol


@pytest.fixture
def client(dev_accounts):
    return dev_accounts[0]


@pytest.fixture
def providers(h, dev_accounts):
    accounts = dev_accounts[1:5]
    h.make_providers(accounts, PROVIDER_STAKE)
    return accounts


@pytest.fixture
def outsider(dev_accounts):
    return dev_accounts[9]


def deposit_for(params: Any, max_payment: int) -> int:
    return max_payment * params.client_deposit_bps // BPS


def collateral(params: Any, price: int) -> int:
    """A bid's collateral on the tasks below, whose floor (a quarter of MAX_PAYMENT) stays under
    every price they bid; test_collateral_floor_* checks the floor itself."""
    assert price * params.collateral_bps // BPS >= MAX_PAYMENT * params.collateral_floor_bps // BPS
    return price * params.collateral_bps // BPS


def floor_of(params: Any, t: dict[str, int]) -> int:
    """docs/protocol.md, "Verification that cannot be gamed": F = max(maxPayment share, c × S, minimum)."""
    fee = t["maxPayment"] // t["checkpoints"] * t["councilShareBps"] // BPS
    return max(t["maxPayment"] * params.collateral_floor_bps // BPS, t["councilSize"] * fee, params.min_collateral)


def submit(h: Harness, params: Any, client: Any, value: int | None = None, kind: int = TaskKind.BATCH, **overrides: int):
    """Submit a task in a block of its own; returns (result, task id or None)."""
    t = terms(**overrides)
    if value is None:
        value = t["maxPayment"] + deposit_for(params, t["maxPayment"])
    result = h.send(client, TASK_ABI, "submitTask", PRESCRIPTION, kind, t, value=value)
    return result, (result.events[-1]["taskId"] if result.ok else None)


def submitted(h: Harness, params: Any, client: Any, **overrides: int) -> tuple[int, int]:
    """A submitted task: (task id, bid deadline)."""
    result, task_id = submit(h, params, client, **overrides)
    assert result.ok, result.reason
    return task_id, h.view(TASK_ABI, "getTask", task_id)["bidDeadline"]


def bid(h: Harness, provider: Any, task_id: int, price: int) -> Any:
    return h.tx(provider, BID_ABI, "placeBid", task_id, price)


def locked(h: Harness, account: Any) -> int:
    return h.view(STAKE_ABI, "stakeOf", account.address)["locked"]


def seed_of(mix_hash: bytes, task_id: int) -> bytes:
    return keccak(mix_hash + task_id.to_bytes(32, "big"))


def ev(contract: str, name: str, **args: Any) -> Event:
    return Event(contract, name, args)


# -- submitTask --


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"maxPayment": 0}, "Task: maxPayment is zero"),
        ({"councilSize": 0}, "Task: councilSize must be between 1 and 100"),
        ({"councilSize": 101}, "Task: councilSize must be between 1 and 100"),
        ({"councilShareBps": 10_001}, "Task: councilShareBps above 10000"),
        ({"checkpoints": 0}, "Task: checkpoints must be between 1 and 1000"),
        ({"checkpoints": 1_001}, "Task: checkpoints must be between 1 and 1000"),
        ({"segmentWindow": 0}, "Task: segmentWindow is zero"),
        ({"bidWindow": 0}, "Task: bidWindow is zero"),
        ({"minBids": 0}, "Task: minBids is zero"),
        ({"firstN": 2, "minBids": 3}, "Task: firstN is below minBids"),
        ({"confirmWindow": 0}, "Task: confirmWindow is zero"),
        ({"responseMethod": 3}, "Task: unknown responseMethod"),
        ({"responseWeight": 10_001}, "Task: responseWeight above 10000"),
    ],
    ids=[
        "max-payment-zero", "council-zero", "council-101", "council-share-above-bps", "checkpoints-zero",
        "checkpoints-1001", "segment-window-zero", "bid-window-zero", "min-bids-zero", "first-n-below-min-bids",
        "confirm-window-zero", "response-method-unknown", "response-weight-above-bps",
    ],
)
def test_submit_rejects_each_broken_term_and_keeps_nothing(h, params, client, overrides, reason):
    """Rule: Terms.validate names the broken term; the transaction reverts, no task is created and
    the value sent comes back (the client pays only gas)."""
    before = h.balance(client.address)
    result, _ = submit(h, params, client, value=20 * OGPU, **overrides)
    assert (result.ok, result.reason) == (False, reason)
    assert h.view(TASK_ABI, "taskCount") == 0
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 0, "nextDue": 0}
    assert h.balance(TASK_ABI.address) == 0
    assert h.balance(client.address) == before - result.fee
    assert result.events == []


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(TaskKind.STREAM, "Task: stream tasks are submitted with submitStream"), (2, "Task: unknown task kind"),
     (255, "Task: unknown task kind")],
    ids=["stream", "kind-2", "kind-255"],
)
def test_submit_rejects_stream_and_unknown_kinds(h, params, client, kind, reason):
    """Rule: submitTask takes batch tasks (kind 0); streams are pointed to submitStream, other kinds unknown."""
    result, _ = submit(h, params, client, kind=kind)
    assert (result.ok, result.reason) == (False, reason)
    assert h.view(TASK_ABI, "taskCount") == 0


def test_submit_requires_max_payment_plus_the_minimum_deposit(h, params, client):
    """Rule: msg.value must cover maxPayment + maxPayment·clientDepositBps/10000; one wei less
    reverts naming the minimum deposit, the exact amount is accepted."""
    minimum = deposit_for(params, MAX_PAYMENT)
    assert minimum == MAX_PAYMENT * params.client_deposit_bps // BPS > 0
    short, _ = submit(h, params, client, value=MAX_PAYMENT + minimum - 1)
    assert (short.ok, short.reason) == (
        False, f"Task: value must cover maxPayment plus a safety deposit of at least {minimum} wei"
    )
    none, _ = submit(h, params, client, value=0)
    assert none.reason == short.reason
    exact, task_id = submit(h, params, client, value=MAX_PAYMENT + minimum)
    assert exact.ok and task_id == 1
    task = h.view(TASK_ABI, "getTask", 1)
    assert (task["escrow"], task["deposit"]) == (MAX_PAYMENT, minimum)


def test_submit_accepts_every_term_at_its_limit(h, params, client):
    """Rule: the limits are inclusive: councilSize 1 and 100, shares of exactly 10000 bps,
    checkpoints 1 and 1000, responseMethod 2, firstN == minBids."""
    accepted = [
        terms(councilSize=1, checkpoints=1),
        terms(councilSize=100, councilShareBps=10_000, checkpoints=1_000, responseWeight=10_000),
        terms(responseMethod=2, firstN=3, minBids=3, bidWindow=1, segmentWindow=1, confirmWindow=1,
              numericProfile=b"\xff" * 32),
    ]
    value = MAX_PAYMENT + deposit_for(params, MAX_PAYMENT)
    block = h.block(*(h.tx(client, TASK_ABI, "submitTask", PRESCRIPTION, TaskKind.BATCH, t, value=value) for t in accepted))
    assert [(r.ok, r.reason) for r in block.txs] == [(True, None)] * 3
    assert [h.view(TASK_ABI, "getTerms", i) for i in (1, 2, 3)] == [
        {**{name: 0 for name in h.view(TASK_ABI, "getTerms", 1)}, "numericProfile": bytes(32), **t} for t in accepted
    ]


def test_task_submitted_carries_the_task_and_its_deadline(h, params, client):
    """Rule: TaskSubmitted(taskId, client, prescriptionHash, kind, maxPayment, deposit, bidDeadline):
    ids count from 1, the whole value above maxPayment is the deposit, bidDeadline = the block's
    timestamp + bidWindow; the task is Bidding, its terms are stored as sent, its close is queued."""
    before = h.balance(client.address)
    extra = 7
    value = MAX_PAYMENT + deposit_for(params, MAX_PAYMENT) + extra
    result, task_id = submit(h, params, client, value=value, firstN=4, minBids=2, latenessBpsPerSecond=5)
    stamp = h.now
    deposit = value - MAX_PAYMENT
    assert result.ok
    assert result.events == [ev(
        "Task", "TaskSubmitted", taskId=1, client=client.address, prescriptionHash=PRESCRIPTION,
        kind=TaskKind.BATCH, maxPayment=MAX_PAYMENT, deposit=deposit, bidDeadline=stamp + BID_WINDOW,
    )]
    assert h.view(TASK_ABI, "getTask", task_id) == {
        "client": client.address, "kind": TaskKind.BATCH, "state": TaskState.BIDDING, "prescriptionHash": PRESCRIPTION,
        "escrow": MAX_PAYMENT, "deposit": deposit, "executor": ZERO_ADDRESS, "price": 0, "seed": b"\x00" * 32,
        "bidDeadline": stamp + BID_WINDOW, "assignedAt": 0,
    }
    stored = h.view(TASK_ABI, "getTerms", task_id)
    assert {k: stored[k] for k in BASE_TERMS} == terms(firstN=4, minBids=2, latenessBpsPerSecond=5)
    assert h.view(TASK_ABI, "taskCount") == 1
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 1, "nextDue": stamp + BID_WINDOW}
    assert h.balance(TASK_ABI.address) == value
    assert h.balance(client.address) == before - value - result.fee

    second, second_id = submit(h, params, client, bidWindow=5)
    assert second_id == 2 and second.events[0]["bidDeadline"] == h.now + 5
    # The earlier deadline is at the head of the queue, whichever task was submitted first.
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 2, "nextDue": h.now + 5}


def test_unknown_task_ids_revert_in_views(h, params, client):
    """Rule: task ids are 1..taskCount; any other id reverts "Task: no task <id>"."""
    submitted(h, params, client)
    assert h.view_reverts(TASK_ABI, "getTask", 0) == "Task: no task 0"
    assert h.view_reverts(TASK_ABI, "getTask", 2) == "Task: no task 2"
    assert h.view_reverts(TASK_ABI, "getTerms", 2) == "Task: no task 2"


# -- placeBid --


def test_bid_locks_collateral_and_records_the_offer(h, params, client, providers):
    """Rule: a bid locks collateralBps of its price from free stake and emits StakeLocked then
    BidPlaced(taskId, provider, price, collateral); a price equal to maxPayment is allowed."""
    task_id, _ = submitted(h, params, client)
    p = providers[0]
    [result] = h.block(bid(h, p, task_id, MAX_PAYMENT)).txs
    c = collateral(params, MAX_PAYMENT)
    assert result.ok
    assert result.events == [
        ev("Stake", "StakeLocked", account=p.address, amount=c, locked=c),
        ev("Bid", "BidPlaced", taskId=task_id, provider=p.address, price=MAX_PAYMENT, collateral=c),
    ]
    assert h.view(STAKE_ABI, "stakeOf", p.address) == {
        "staked": PROVIDER_STAKE, "locked": c, "unbonding": 0, "releaseTime": 0, "roles": Role.PROVIDER,
    }
    assert h.view(STAKE_ABI, "freeStake", p.address) == PROVIDER_STAKE - c
    assert h.view(BID_ABI, "bidsOf", task_id) == {"providers": [p.address], "prices": [MAX_PAYMENT]}


def _stake_without_provider_role(h: Harness, account: Any) -> None:
    h.block(
        h.tx(account, STAKE_ABI, "stake", value=PROVIDER_STAKE),
        h.tx(account, STAKE_ABI, "registerResources", 0, 8_000, 10, ""),
    )


def _validator_only(h: Harness, account: Any) -> None:
    block = h.block(
        h.tx(account, STAKE_ABI, "stake", value=2_000 * OGPU),
        h.tx(account, STAKE_ABI, "setRandaoTip", b"\x07" * 32),
        h.tx(account, STAKE_ABI, "setRoles", Role.VALIDATOR),
    )
    assert all(r.ok for r in block.txs)


@pytest.mark.parametrize(
    "setup", [lambda h, a: None, _stake_without_provider_role, _validator_only],
    ids=["no-stake", "staked-without-role", "validator-only"],
)
def test_only_staked_providers_may_bid(h, params, client, providers, outsider, setup):
    """Rule: the bidder must hold the provider role (staked with resources); otherwise
    "Bid: caller is not a staked provider" and nothing is locked."""
    setup(h, outsider)
    task_id, _ = submitted(h, params, client)
    [result] = h.block(bid(h, outsider, task_id, OGPU)).txs
    assert (result.ok, result.reason) == (False, "Bid: caller is not a staked provider")
    assert locked(h, outsider) == 0
    assert h.view(BID_ABI, "bidsOf", task_id) == {"providers": [], "prices": []}


def test_client_cannot_bid_on_its_own_task(h, params, providers):
    """Rule: the client never bids on its own task, even when it is itself a staked provider."""
    provider_client = providers[0]
    task_id, _ = submitted(h, params, provider_client)
    [result] = h.block(bid(h, provider_client, task_id, OGPU)).txs
    assert (result.ok, result.reason) == (False, "Bid: a client cannot bid on its own task")
    assert locked(h, provider_client) == 0


@pytest.mark.parametrize(
    ("price", "reason"),
    [(0, "Bid: price is zero"), (MAX_PAYMENT + 1, "Bid: price above the task's maximum payment")],
    ids=["zero", "above-max"],
)
def test_bid_price_must_be_positive_and_within_max_payment(h, params, client, providers, price, reason):
    """Rule: 0 < price <= maxPayment."""
    task_id, _ = submitted(h, params, client)
    [result] = h.block(bid(h, providers[0], task_id, price)).txs
    assert (result.ok, result.reason) == (False, reason)
    assert locked(h, providers[0]) == 0


@pytest.mark.parametrize("task_id", [0, 2, 2**256 - 1], ids=["zero", "next", "max"])
def test_bid_on_unknown_task_reverts(h, params, client, providers, task_id):
    """Rule: a bid names an existing task: "Task: no task <id>"."""
    submitted(h, params, client)
    [result] = h.block(bid(h, providers[0], task_id, OGPU)).txs
    assert (result.ok, result.reason) == (False, f"Task: no task {task_id}")


def test_rebid_must_lower_the_price(h, params, client, providers):
    """Rule: one live bid per provider and task; a re-bid at the same or a higher price reverts
    "Bid: a new bid must lower the price" and leaves the first bid and its lock as they were."""
    task_id, _ = submitted(h, params, client)
    p = providers[0]
    h.block(bid(h, p, task_id, 5 * OGPU))
    block = h.block(bid(h, p, task_id, 5 * OGPU), bid(h, p, task_id, 6 * OGPU))
    assert [(r.ok, r.reason) for r in block.txs] == [(False, "Bid: a new bid must lower the price")] * 2
    assert locked(h, p) == collateral(params, 5 * OGPU)
    assert h.view(BID_ABI, "bidsOf", task_id) == {"providers": [p.address], "prices": [5 * OGPU]}


def test_lower_rebid_replaces_the_bid_and_adjusts_the_lock(h, params, client, providers):
    """Rule: a lower re-bid replaces the provider's bid: the old collateral is unlocked, the new one
    locked (StakeUnlocked, StakeLocked, BidPlaced in that order); one entry stays in bidsOf."""
    task_id, _ = submitted(h, params, client)
    p, other = providers[0], providers[1]
    h.block(bid(h, p, task_id, 8 * OGPU), bid(h, other, task_id, 9 * OGPU))
    old, new = collateral(params, 8 * OGPU), collateral(params, 6 * OGPU)
    [result] = h.block(bid(h, p, task_id, 6 * OGPU)).txs
    assert result.ok
    assert result.events == [
        ev("Stake", "StakeUnlocked", account=p.address, amount=old, locked=0),
        ev("Stake", "StakeLocked", account=p.address, amount=new, locked=new),
        ev("Bid", "BidPlaced", taskId=task_id, provider=p.address, price=6 * OGPU, collateral=new),
    ]
    assert locked(h, p) == new
    assert h.view(BID_ABI, "bidsOf", task_id) == {
        "providers": [p.address, other.address], "prices": [6 * OGPU, 9 * OGPU],
    }


def test_bid_needs_free_stake_for_its_collateral(h, params, client, providers, dev_accounts):
    """Rule: a bid locks only free stake (staked − locked): with stake S and one bid's collateral
    locked, a bid whose collateral exceeds the rest reverts "Stake: insufficient free stake"; the
    largest price whose collateral fits is accepted and leaves no free stake."""
    lean = dev_accounts[6]
    stake = params.min_provider_stake
    h.make_providers([lean], stake)
    first, _ = submitted(h, params, client, maxPayment=stake)
    second, _ = submitted(h, params, client, maxPayment=stake)
    price = stake * 6 // 10
    h.block(bid(h, lean, first, price))
    free = stake - collateral(params, price)
    assert h.view(BID_ABI, "collateralFor", second, free) == free  # above the floor: the price's share
    assert h.view(STAKE_ABI, "freeStake", lean.address) == free
    too_much = -(-(free + 1) * BPS // params.collateral_bps)  # least price whose collateral > free
    assert price * params.collateral_bps // BPS + free == stake
    assert too_much * params.collateral_bps // BPS > free >= (too_much - 1) * params.collateral_bps // BPS
    [refused] = h.block(bid(h, lean, second, too_much)).txs
    assert (refused.ok, refused.reason) == (False, "Stake: insufficient free stake")
    assert locked(h, lean) == price * params.collateral_bps // BPS
    [accepted] = h.block(bid(h, lean, second, too_much - 1)).txs
    assert accepted.ok
    assert locked(h, lean) == collateral(params, price) + collateral(params, too_much - 1)



@pytest.mark.parametrize("overrides, binding", [
    ({"maxPayment": 40 * OGPU}, "share of maxPayment"),  # 10 oGPU floor
    ({"maxPayment": 40 * OGPU, "councilShareBps": 10_000, "checkpoints": 1}, "council fees"),  # 3 × 40
    ({"maxPayment": OGPU // 10}, "genesis minimum"),
], ids=["share", "fees", "minimum"])
def test_collateral_floor_binds_a_one_wei_bid(h, params, client, providers, overrides, binding):
    """Rule: a bid locks max(its price's share, the task's floor); the floor is the largest of a share
    of maxPayment, the council's fees c × S and the genesis minimum, so a 1-wei bid risks the floor."""
    t = terms(**overrides)
    task_id, _ = submitted(h, params, client, **overrides)
    floor = floor_of(params, t)
    parts = {
        "share of maxPayment": t["maxPayment"] * params.collateral_floor_bps // BPS,
        "council fees": t["councilSize"] * (t["maxPayment"] // t["checkpoints"] * t["councilShareBps"] // BPS),
        "genesis minimum": params.min_collateral,
    }
    assert floor == parts[binding] > max(v for k, v in parts.items() if k != binding)
    assert h.view(BID_ABI, "collateralFor", task_id, 1) == floor
    assert h.view(BID_ABI, "collateralFor", task_id, t["maxPayment"]) == max(floor, t["maxPayment"])
    provider = providers[0]
    before = locked(h, provider)
    [placed] = h.block(bid(h, provider, task_id, 1)).txs
    assert placed.ok, placed.reason
    assert locked(h, provider) - before == floor
    assert h.view_reverts(BID_ABI, "collateralFor", 99, 1) == "Task: no task 99"

# -- assignment on H --


def test_deadline_assigns_the_lowest_bid_in_the_next_block_without_a_transaction(
    h, params, client, providers, outsider
):
    """Rule: bidding is open while the block's timestamp < bidDeadline; the first block with
    timestamp >= bidDeadline assigns in its start-of-block system call, though no transaction in it
    touches the task: the lowest bid wins (the earliest on a tie), its collateral stays locked, the
    losers' is unlocked, the seed is keccak(block mixHash ‖ uint256 taskId), the task is Running."""
    task_id, deadline = submitted(h, params, client)
    p0, p1, p2, p3 = providers
    h.block(bid(h, p0, task_id, 9 * OGPU), bid(h, p1, task_id, 7 * OGPU))
    h.block(bid(h, p2, task_id, 7 * OGPU))  # ties with p1, later
    [last_second] = h.block(bid(h, p3, task_id, 8 * OGPU), at=deadline - 1).txs
    assert last_second.ok
    escrow_before = h.balance(TASK_ABI.address)

    block = h.block(h.transfer(outsider, outsider.address, 1), at=deadline)  # unrelated traffic only
    mix = block.header.mix_hash
    assert block.system_events == [
        ev("Stake", "StakeUnlocked", account=p0.address, amount=collateral(params, 9 * OGPU), locked=0),
        ev("Stake", "StakeUnlocked", account=p2.address, amount=collateral(params, 7 * OGPU), locked=0),
        ev("Stake", "StakeUnlocked", account=p3.address, amount=collateral(params, 8 * OGPU), locked=0),
        ev("Bid", "BidsClosed", taskId=task_id, count=4),
        ev("Task", "TaskAssigned", taskId=task_id, executor=p1.address, price=7 * OGPU, seed=seed_of(mix, task_id)),
    ]
    task = h.view(TASK_ABI, "getTask", task_id)
    assert (task["state"], task["executor"], task["price"], task["seed"], task["assignedAt"]) == (
        TaskState.RUNNING, p1.address, 7 * OGPU, seed_of(mix, task_id), deadline,
    )
    assert (task["escrow"], task["deposit"]) == (MAX_PAYMENT, deposit_for(params, MAX_PAYMENT))
    assert [locked(h, p) for p in providers] == [0, collateral(params, 7 * OGPU), 0, 0]
    assert h.balance(TASK_ABI.address) == escrow_before
    [late] = h.block(bid(h, p0, task_id, OGPU)).txs
    assert (late.ok, late.reason) == (False, CLOSED)


def test_nothing_happens_before_the_deadline(h, params, client, providers):
    """Rule: a block one second before bidDeadline runs no step for the task (no system logs)."""
    task_id, deadline = submitted(h, params, client)
    h.block(bid(h, providers[0], task_id, OGPU))
    block = h.block(at=deadline - 1)
    assert block.system_logs == []
    assert h.view(TASK_ABI, "getTask", task_id)["state"] == TaskState.BIDDING
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 1, "nextDue": deadline}


def test_a_rebid_takes_a_new_place_among_equal_prices(h, params, client, providers):
    """Rule: ties go to the earliest bid, and a re-bid is a new offer: A at 8, B at 7, then A down to
    7 leaves B the earliest at 7, so B is the executor."""
    task_id, deadline = submitted(h, params, client)
    a, b = providers[0], providers[1]
    h.block(bid(h, a, task_id, 8 * OGPU))
    h.block(bid(h, b, task_id, 7 * OGPU))
    h.block(bid(h, a, task_id, 7 * OGPU))
    block = h.block(at=deadline)
    assert block.system_events[-1] == ev(
        "Task", "TaskAssigned", taskId=task_id, executor=b.address, price=7 * OGPU,
        seed=seed_of(block.header.mix_hash, task_id),
    )


def test_first_n_bids_close_bidding_in_the_bids_own_transaction(h, params, client, providers):
    """Rule: with firstN set, the bid that brings the count of bidders to firstN applies H in its own
    transaction (its receipt carries the assignment, seeded by that block's mix); later bids revert
    and the queued deadline later finds the task closed and does nothing."""
    task_id, deadline = submitted(h, params, client, firstN=2, minBids=1)
    p0, p1, p2 = providers[:3]
    [first] = h.block(bid(h, p0, task_id, 9 * OGPU)).txs
    assert [e.name for e in first.events] == ["StakeLocked", "BidPlaced"]
    assert h.view(TASK_ABI, "getTask", task_id)["state"] == TaskState.BIDDING
    block = h.block(bid(h, p1, task_id, 8 * OGPU))
    [closing] = block.txs
    c9, c8 = collateral(params, 9 * OGPU), collateral(params, 8 * OGPU)
    assert closing.events == [
        ev("Stake", "StakeLocked", account=p1.address, amount=c8, locked=c8),
        ev("Bid", "BidPlaced", taskId=task_id, provider=p1.address, price=8 * OGPU, collateral=c8),
        ev("Stake", "StakeUnlocked", account=p0.address, amount=c9, locked=0),
        ev("Bid", "BidsClosed", taskId=task_id, count=2),
        ev("Task", "TaskAssigned", taskId=task_id, executor=p1.address, price=8 * OGPU,
           seed=seed_of(block.header.mix_hash, task_id)),
    ]
    assert block.system_logs == []
    task = h.view(TASK_ABI, "getTask", task_id)
    assert (task["state"], task["executor"], task["assignedAt"]) == (TaskState.RUNNING, p1.address, block.header.timestamp)
    assert block.header.timestamp < deadline
    [after] = h.block(bid(h, p2, task_id, 7 * OGPU)).txs
    assert (after.ok, after.reason) == (False, CLOSED)
    at_deadline = h.block(at=deadline)
    assert at_deadline.system_logs == []
    assert h.view(TASK_ABI, "getTask", task_id) == task


@pytest.mark.parametrize("bids", [0, 1], ids=["no-bids", "one-of-two"])
def test_too_few_bids_cancel_and_refund_in_full(h, params, client, providers, bids):
    """Rule: at the deadline, fewer than minBids bids cancel the task: TaskCancelled(taskId,
    reason 1, refund = escrow + deposit), the client's balance rises by exactly that, every bid's
    collateral is unlocked, the task holds nothing and is Cancelled."""
    extra = 12_345
    value = MAX_PAYMENT + deposit_for(params, MAX_PAYMENT) + extra
    result, task_id = submit(h, params, client, value=value, minBids=2)
    deadline = h.view(TASK_ABI, "getTask", task_id)["bidDeadline"]
    if bids:
        h.block(bid(h, providers[0], task_id, 5 * OGPU))
    client_before = h.balance(client.address)
    task_before = h.balance(TASK_ABI.address)
    block = h.block(at=deadline)
    unlocks = [ev("Stake", "StakeUnlocked", account=providers[0].address, amount=collateral(params, 5 * OGPU), locked=0)]
    assert block.system_events == unlocks[:bids] + [
        ev("Bid", "BidsClosed", taskId=task_id, count=bids),
        ev("Task", "TaskCancelled", taskId=task_id, reason=CancelReason.TOO_FEW_BIDS, refund=value),
    ]
    assert h.balance(client.address) == client_before + value
    assert h.balance(TASK_ABI.address) == task_before - value == 0
    task = h.view(TASK_ABI, "getTask", task_id)
    assert (task["state"], task["escrow"], task["deposit"], task["executor"]) == (TaskState.CANCELLED, 0, 0, ZERO_ADDRESS)
    assert locked(h, providers[0]) == 0


@pytest.mark.parametrize("window", ["segmentWindow", "bidWindow", "confirmWindow"])
def test_windows_beyond_ten_years_are_refused(h, params, client, window):
    """Rule: every derived deadline fits the queue's 64-bit time, so each window is bounded."""
    result, _ = submit(h, params, client, **{window: MAX_WINDOW + 1})
    assert result.reason == f"Task: {window} above {MAX_WINDOW} seconds"


def test_a_task_at_the_longest_windows_still_closes_at_its_deadline(h, params, client, providers):
    """Rule: H is always applied to an accepted task: the first block at its deadline assigns it,
    so no bid collateral or escrow stays locked for good."""
    result, task_id = submit(h, params, client, segmentWindow=MAX_WINDOW, confirmWindow=MAX_WINDOW)
    assert result.ok
    deadline = h.view(TASK_ABI, "getTask", task_id)["bidDeadline"]
    h.block(bid(h, providers[0], task_id, OGPU))
    h.block(at=deadline)
    assert h.view(TASK_ABI, "getTask", task_id)["state"] == TaskState.RUNNING


def test_money_invariants_hold_through_a_mixed_history(h, params, client, providers, dev_accounts):
    """Rule: after every block (checked by the harness hook), Task's balance = Σ escrow + deposit
    of tasks not settled and Stake's = Σ staked + Σ unbonding, through submissions, bids, re-bids,
    an assignment, a cancellation and an unstake request."""
    checked: list[int] = []
    h.after_block.append(lambda block: checked.append(block.number))
    first = len(h.blocks)
    assigned, deadline = submitted(h, params, client)
    cancelled, _ = submitted(h, params, dev_accounts[5], minBids=3, bidWindow=BID_WINDOW - 1)
    h.block(bid(h, providers[0], assigned, 4 * OGPU), bid(h, providers[1], cancelled, 3 * OGPU),
            h.tx(providers[2], STAKE_ABI, "requestUnstake", 100 * OGPU))
    h.block(bid(h, providers[0], assigned, 3 * OGPU))
    h.block(at=deadline)
    states = [h.view(TASK_ABI, "getTask", i)["state"] for i in (assigned, cancelled)]
    assert states == [TaskState.RUNNING, TaskState.CANCELLED]
    assert h.balance(TASK_ABI.address) == MAX_PAYMENT + deposit_for(params, MAX_PAYMENT)
    assert h.balance(STAKE_ABI.address) == 4 * PROVIDER_STAKE
    assert h.view(STAKE_ABI, "stakeOf", providers[2].address)["unbonding"] == 100 * OGPU
    assert checked == [block.number for block in h.blocks[first:]] and len(checked) == 5


# -- the deadline queue's per-block bound --


@pytest.fixture
def limited(tmp_path, dev_accounts) -> Harness:
    """A chain whose genesis is ogpu_node/config/networks/dev.json with maxDeadlinesPerBlock = 2."""
    doc = json.loads(DEV_GENESIS.read_text())
    doc["config"]["ogpu"]["maxDeadlinesPerBlock"] = 2
    genesis = parse_genesis(doc)
    assert genesis.protocol.max_deadlines_per_block == 2
    store = LMDBStore(tmp_path / "limited")
    yield make_harness(Chain(store, genesis), dev_accounts)
    store.close()


def test_due_deadlines_beyond_the_per_block_bound_spill_to_the_next_blocks(limited, dev_accounts):
    """Rule: the system call runs at most maxDeadlinesPerBlock due steps per block, in (due,
    scheduling) order; the rest run in the following blocks, each seeded by the block that runs it.
    A bid on a task whose step has not run yet still fails in a block at or after its deadline."""
    h = limited
    params = h.chain.genesis.protocol
    client, provider, late = dev_accounts[0], dev_accounts[1], dev_accounts[2]
    h.make_providers([provider, late], PROVIDER_STAKE)
    value = MAX_PAYMENT + deposit_for(params, MAX_PAYMENT)
    submit_block = h.block(*(
        h.tx(client, TASK_ABI, "submitTask", PRESCRIPTION, TaskKind.BATCH, terms(), value=value) for _ in range(5)
    ))
    assert all(r.ok for r in submit_block.txs)
    deadline = submit_block.header.timestamp + BID_WINDOW
    prices = {task_id: task_id * OGPU for task_id in range(1, 6)}
    h.block(*(bid(h, provider, task_id, price) for task_id, price in prices.items()))

    def assigned(block: Any, task_ids: list[int]) -> list[Event]:
        out = []
        for task_id in task_ids:
            out += [
                ev("Bid", "BidsClosed", taskId=task_id, count=1),
                ev("Task", "TaskAssigned", taskId=task_id, executor=provider.address, price=prices[task_id],
                   seed=seed_of(block.header.mix_hash, task_id)),
            ]
        return out

    first = h.block(bid(h, late, 3, OGPU // 2), bid(h, late, 5, OGPU // 2), at=deadline)
    assert first.system_events == assigned(first, [1, 2])
    assert [(r.ok, r.reason) for r in first.txs] == [(False, CLOSED), (False, CLOSED)]
    # The late bids failed on the deadline itself: the queue had not yet closed tasks 3 and 5.
    assert [h.view(TASK_ABI, "getTask", i)["state"] for i in range(1, 6)] == [TaskState.RUNNING] * 2 + [TaskState.BIDDING] * 3
    assert h.view(TASK_ABI, "pendingDeadlines")["nextDue"] == deadline
    assert locked(h, late) == 0

    second = h.block()
    assert second.system_events == assigned(second, [3, 4])
    third = h.block()
    assert third.system_events == assigned(third, [5])
    # Only steps of later stages (if any) remain queued, none due now.
    next_due = h.view(TASK_ABI, "pendingDeadlines")["nextDue"]
    assert next_due == 0 or next_due > third.header.timestamp
    assigned_at = [h.view(TASK_ABI, "getTask", i)["assignedAt"] for i in range(1, 6)]
    stamps = [b.header.timestamp for b in (first, second, third)]
    assert assigned_at == [stamps[0], stamps[0], stamps[1], stamps[1], stamps[2]]
    assert h.block().system_logs == []


# -- where the system call's logs are kept and served --


def test_system_logs_come_first_in_the_block_under_the_synthetic_hash(h, params, client, providers, outsider):
    """Rule: the system call's logs are stored with the block, first in its log order (logIndex
    0..k-1) under transactionHash keccak("ogpu-system" ‖ block hash), and the receipt of that
    hash (status 1, no gas) returns them; the block's transactions' logs follow from logIndex k."""
    task_id, deadline = submitted(h, params, client)
    h.block(bid(h, providers[0], task_id, 5 * OGPU), bid(h, providers[1], task_id, 6 * OGPU))
    block = h.block(h.tx(outsider, STAKE_ABI, "stake", value=OGPU), at=deadline)
    number, block_hash = block.number, block.header.hash
    synthetic = keccak(b"ogpu-system" + block_hash)
    assert system_tx_hash(block_hash) == synthetic
    stored = h.chain.block_by_hash(block_hash)
    assert stored.system_tx_hash == synthetic
    logs = stored.logs_json()
    system = block.system_logs
    assert [e.name for e in block.system_events] == ["StakeUnlocked", "BidsClosed", "TaskAssigned"]
    assert len(logs) == len(system) + 1
    for index, ((address, topics, data), entry) in enumerate(zip(system, logs, strict=False)):
        assert (entry["address"], entry["topics"], entry["data"]) == (address, topics, data)
        assert (entry["logIndex"], entry["transactionHash"], entry["blockHash"], entry["blockNumber"]) == (
            index, synthetic, block_hash, number,
        )
        assert entry["removed"] is False
    [staked] = block.txs
    tail = logs[len(system)]
    assert (tail["logIndex"], tail["transactionHash"], tail["transactionIndex"]) == (len(system), staked.tx.hash, 0)
    assert h.chain.receipt_json(staked.tx.hash)["logs"] == [tail]

    receipt = h.chain.receipt_json(synthetic)
    assert receipt is not None
    assert (receipt["status"], receipt["gasUsed"], receipt["transactionHash"], receipt["blockHash"],
            receipt["blockNumber"]) == (1, 0, synthetic, block_hash, number)
    assert receipt["logs"] == logs[: len(system)]
    assert h.chain.receipt_json(system_tx_hash(block.header.parent_hash)) is None  # a block without system logs


def test_an_imported_block_reproduces_the_system_call(h, params, client, providers, tmp_path, dev_accounts):
    """Rule: every importing node recomputes the system call: a second chain importing the encoded
    blocks gets the same system logs, receipts and state root; a block whose mixHash is altered
    (so its seed, and state, differ) does not import."""
    task_id, deadline = submitted(h, params, client)
    cancelled, _ = submitted(h, params, client, minBids=2, bidWindow=BID_WINDOW - 1)
    h.block(bid(h, providers[0], task_id, 5 * OGPU), bid(h, providers[1], cancelled, 5 * OGPU))
    h.block(at=deadline)
    assert [e.name for e in h.blocks[-1].system_events] == [
        "BidsClosed", "TaskAssigned", "StakeUnlocked", "BidsClosed", "TaskCancelled",
    ]  # both due at this block, run in scheduling order
    original = h.chain
    store = LMDBStore(tmp_path / "replica")
    try:
        replica = Chain(store, original.genesis)
        tampered_at = h.blocks[-1].number
        for built in h.blocks:
            raw = encode_block(built.executed.block)
            if built.number == tampered_at:
                header = built.header.copy(mix_hash=keccak(b"another mix"))
                bad = decode_block(raw).copy(header=header)
                with pytest.raises(InvalidBlock, match="state_root"):
                    replica.import_block(bad, as_head=True)
            imported = replica.import_block(decode_block(raw), as_head=True)
            assert imported.header == built.header
            assert imported.system_logs == built.executed.system_logs
            mine, theirs = original.block_by_hash(built.header.hash), replica.block_by_hash(built.header.hash)
            assert theirs.logs_json() == mine.logs_json()
            assert replica.receipt_json(system_tx_hash(built.header.hash)) == original.receipt_json(system_tx_hash(built.header.hash))
        assert replica.head.state_root == original.head.state_root
        assert replica.head.hash == original.head.hash
    finally:
        store.close()
