"""The stream task lifecycle (DESIGN.md §6, "Stream task") on an in-process chain.

Covers submitStream (escrow, deposit, terms version 1, every rejection), Bid.subscribe/unsubscribe
(who may, resources, the council-seat stake locked and unlocked exactly), the state machine Forming(7)
→ Active(8) ⇄ Interrupted(9) → Closing(10) → Settled(6), reportConsensusFailure, updateTerms, settle
with receipts signed over StreamReceipt.signing_root(chain id, genesis hash), topUp, and retract with
its settle window closed by the start-of-block system call. Every step is a transaction in a block
of its own built by harness.py; after every block the money invariants of DESIGN.md §3 are checked:
Task's balance = Σ escrow + deposit over tasks, Stake's balance = Σ staked + Σ unbonding, Bid holds
nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, STAKE_ABI, TASK_ABI, ZERO_ADDRESS, Event, Harness

from ogpu_node.types.protocol import BPS, MAX_WINDOW, Outcome, TaskKind, TaskState
from ogpu_node.types.signing import StreamReceipt

PROVIDER_STAKE = 500 * OGPU
PRESCRIPTION = keccak(b"prescription of a stream task")
PRICE = 10**12  # wei per output unit
BUDGET = 10 * OGPU
SETTLE_WINDOW = 100

BAD_STATE = "Task: stream is not in a state that allows this"
NOT_CLIENT = "Task: caller is not the client"
NO_NEW_UNITS = "Task: receipt adds no units over what was settled"
EXHAUSTED = "Task: stream budget exhausted; the client must top up"
BAD_SIGNER = "Task: receipt is not signed by the client or its request key"
UNKNOWN_VERSION = "Task: unknown terms version"

BASE_TERMS = {
    "budget": BUDGET, "councilSize": 2, "pricePerUnit": PRICE, "responseMethod": 1, "responseWeight": 6_000,
    "maxResponseTime": 5, "settleWindow": SETTLE_WINDOW, "minMemoryMiB": 4_000, "deviceMask": 0,
}


def stream_terms(**overrides: int) -> dict[str, int]:
    return {**BASE_TERMS, **overrides}


# -- fixtures and helpers --


def money_invariants(h: Harness, accounts: list[Any]) -> Any:
    def check(_block: Any) -> None:
        assert h.balance(TASK_ABI.address) == h.task_liabilities()
        assert h.balance(STAKE_ABI.address) == h.stake_liabilities(accounts)
        assert h.view(STAKE_ABI, "totalStaked") == sum(
            h.view(STAKE_ABI, "stakeOf", a.address)["staked"] for a in accounts
        )
        assert h.balance(BID_ABI.address) == 0

    return check


@pytest.fixture
def h(chain, dev_accounts) -> Harness:
    harness = Harness(chain)
    harness.after_block.append(money_invariants(harness, dev_accounts))
    return harness


@pytest.fixture
def params(chain):
    return chain.genesis.protocol


@pytest.fixture
def seat(params) -> int:
    return params.council_seat_stake


@pytest.fixture
def client(dev_accounts):
    return dev_accounts[0]


@pytest.fixture
def providers(h, dev_accounts):
    accounts = dev_accounts[1:5]
    h.make_providers(accounts, PROVIDER_STAKE)
    return accounts


@pytest.fixture
def request_key(dev_accounts):
    return dev_accounts[7]


@pytest.fixture
def stranger(dev_accounts):
    """Signs receipts, never sends a transaction."""
    return dev_accounts[8]


@pytest.fixture
def outsider(dev_accounts):
    return dev_accounts[9]


def min_deposit(params: Any, budget: int) -> int:
    return budget * params.client_deposit_bps // BPS


def submit(h: Harness, params: Any, client: Any, value: int | None = None, **overrides: int) -> Any:
    t = stream_terms(**overrides)
    if value is None:
        value = t["budget"] + min_deposit(params, t["budget"])
    return h.send(client, TASK_ABI, "submitStream", PRESCRIPTION, t, value=value)


def new_stream(h: Harness, params: Any, client: Any, **overrides: int) -> int:
    result = submit(h, params, client, **overrides)
    assert result.ok, result.reason
    return TASK_ABI.decode_output("submitStream", result.output)


def sign_receipt(h: Harness, signer: Any, task_id: int, provider: Any, units: int, version: int,
                 chain_id: int | None = None, genesis_hash: bytes | None = None) -> bytes:
    receipt = StreamReceipt(task_id, provider.address, units, version)
    root = receipt.signing_root(
        h.chain.chain_id if chain_id is None else chain_id,
        h.chain.genesis_hash if genesis_hash is None else genesis_hash,
    )
    return signer.sign_hash(root)


def settle(h: Harness, sender: Any, task_id: int, provider: Any, units: int, version: int, signature: bytes,
           **options: Any) -> Any:
    return h.send(sender, TASK_ABI, "settle", task_id, provider.address, units, version, signature, **options)


def ev(contract: str, name: str, **args: Any) -> Event:
    return Event(contract, name, args)


def state_of(h: Harness, task_id: int) -> int:
    return h.view(TASK_ABI, "getTask", task_id)["state"]


def escrow_of(h: Harness, task_id: int) -> int:
    return h.view(TASK_ABI, "getTask", task_id)["escrow"]


def stake_of(h: Harness, account: Any) -> dict[str, int]:
    return h.view(STAKE_ABI, "stakeOf", account.address)


def subscribers(h: Harness, task_id: int) -> list[bytes]:
    return h.view(BID_ABI, "subscribersOf", task_id)


def subscribe_all(h: Harness, accounts: list[Any], task_id: int) -> None:
    block = h.block(*(h.tx(a, BID_ABI, "subscribe", task_id) for a in accounts))
    assert [r.reason for r in block.txs if not r.ok] == []


def assert_reverts(result: Any, reason: str) -> None:
    assert (result.ok, result.reason) == (False, reason)
    assert result.events == []


# -- submitStream --


def test_submit_stream_escrows_budget_and_keeps_the_rest_as_deposit(h, params, client):
    """Escrow = budget, deposit = value − budget (here above the minimum), kind 1 in Forming,
    TaskSubmitted(kind 1, bidDeadline 0) and TermsUpdated version 1, no deadline scheduled."""
    value = BUDGET + min_deposit(params, BUDGET) + 3 * 10**17
    before = h.balance(client.address)
    result = submit(h, params, client, value=value)
    assert result.ok, result.reason
    assert TASK_ABI.decode_output("submitStream", result.output) == 1
    deposit = value - BUDGET
    assert deposit == 13 * 10**17
    assert h.balance(client.address) == before - value - result.fee
    assert h.balance(TASK_ABI.address) == value
    assert result.events == [
        ev("Task", "TermsUpdated", taskId=1, version=1, pricePerUnit=PRICE, responseMethod=1, responseWeight=6_000),
        ev("Task", "TaskSubmitted", taskId=1, client=client.address, prescriptionHash=PRESCRIPTION, kind=TaskKind.STREAM,
           maxPayment=BUDGET, deposit=deposit, bidDeadline=0),
    ]
    task = h.view(TASK_ABI, "getTask", 1)
    assert task == {
        "client": client.address, "kind": TaskKind.STREAM, "state": TaskState.FORMING, "prescriptionHash": PRESCRIPTION,
        "escrow": BUDGET, "deposit": deposit, "executor": ZERO_ADDRESS, "price": 0, "seed": b"\x00" * 32,
        "bidDeadline": 0, "assignedAt": 0,
    }
    assert h.view(TASK_ABI, "getStream", 1) == {
        "termsVersion": 1, "pricePerUnit": PRICE, "responseMethod": 1, "responseWeight": 6_000, "subscribers": 0,
        "requestKey": ZERO_ADDRESS, "closeDeadline": 0,
    }
    assert h.view(TASK_ABI, "taskCount") == 1
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 0, "nextDue": 0}


def test_submit_stream_accepts_the_boundaries(h, params, client):
    """The exact minimum deposit, council size 1 and 100, weight 10000, method 2, settleWindow 1 and
    ten years are all accepted."""
    boundaries = [
        {"councilSize": 1}, {"councilSize": 100}, {"responseWeight": BPS}, {"responseMethod": 2},
        {"settleWindow": 1}, {"settleWindow": MAX_WINDOW},
    ]
    value = BUDGET + min_deposit(params, BUDGET)
    block = h.block(*(
        h.tx(client, TASK_ABI, "submitStream", PRESCRIPTION, stream_terms(**b), value=value) for b in boundaries
    ))
    assert [r.reason for r in block.txs] == [None] * len(boundaries)
    assert h.view(TASK_ABI, "taskCount") == len(boundaries)
    for task_id in range(1, len(boundaries) + 1):
        task = h.view(TASK_ABI, "getTask", task_id)
        assert (task["escrow"], task["deposit"]) == (BUDGET, min_deposit(params, BUDGET))
    assert h.balance(TASK_ABI.address) == len(boundaries) * value


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"budget": 0}, "Task: budget is zero"),
        ({"councilSize": 0}, "Task: councilSize must be between 1 and 100"),
        ({"councilSize": 101}, "Task: councilSize must be between 1 and 100"),
        ({"pricePerUnit": 0}, "Task: pricePerUnit is zero"),
        ({"responseMethod": 3}, "Task: unknown responseMethod"),
        ({"responseMethod": 255}, "Task: unknown responseMethod"),
        ({"responseWeight": BPS + 1}, "Task: responseWeight above 10000"),
        ({"settleWindow": 0}, f"Task: settleWindow must be between 1 and {MAX_WINDOW} seconds"),
        ({"settleWindow": MAX_WINDOW + 1}, f"Task: settleWindow must be between 1 and {MAX_WINDOW} seconds"),
    ],
    ids=[
        "budget-zero", "council-zero", "council-101", "price-zero", "method-3", "method-255", "weight-10001",
        "settle-window-zero", "settle-window-above-ten-years",
    ],
)
def test_submit_stream_rejects_each_broken_term(h, params, client, overrides, reason):
    before = h.balance(client.address)
    result = submit(h, params, client, value=20 * OGPU, **overrides)
    assert_reverts(result, reason)
    assert h.view(TASK_ABI, "taskCount") == 0
    assert h.balance(TASK_ABI.address) == 0
    assert h.balance(client.address) == before - result.fee


@pytest.mark.parametrize("short_by", [1, BUDGET // 10, BUDGET], ids=["one-wei", "whole-deposit", "whole-budget"])
def test_submit_stream_rejects_value_short_of_budget_plus_deposit(h, params, client, short_by):
    minimum = min_deposit(params, BUDGET)
    assert minimum == BUDGET // 10
    result = submit(h, params, client, value=BUDGET + minimum - short_by)
    assert_reverts(
        result, f"Task: value must cover the budget plus a safety deposit of at least {minimum} wei"
    )
    assert h.view(TASK_ABI, "taskCount") == 0
    assert h.balance(TASK_ABI.address) == 0


# -- subscribe / unsubscribe --


def test_subscribe_locks_the_seat_stake_and_unsubscribe_unlocks_it(h, params, client, providers, seat):
    task_id = new_stream(h, params, client)
    p0 = providers[0]
    assert stake_of(h, p0) == {"staked": PROVIDER_STAKE, "locked": 0, "unbonding": 0, "releaseTime": 0, "roles": 2}
    result = h.ok(p0, BID_ABI, "subscribe", task_id)
    assert result.events == [
        ev("Stake", "StakeLocked", account=p0.address, amount=seat, locked=seat),
        ev("Bid", "Subscribed", taskId=task_id, provider=p0.address, stake=seat),
    ]
    assert stake_of(h, p0)["locked"] == seat == 10 * OGPU
    assert h.view(STAKE_ABI, "freeStake", p0.address) == PROVIDER_STAKE - seat
    assert subscribers(h, task_id) == [p0.address]
    assert h.view(TASK_ABI, "getStream", task_id)["subscribers"] == 1

    again = h.send(p0, BID_ABI, "subscribe", task_id)
    assert_reverts(again, "Bid: already subscribed")
    assert stake_of(h, p0)["locked"] == seat

    # A second stream locks a second seat.
    other = new_stream(h, params, client)
    h.ok(p0, BID_ABI, "subscribe", other)
    assert stake_of(h, p0)["locked"] == 2 * seat

    result = h.ok(p0, BID_ABI, "unsubscribe", task_id)
    assert result.events == [
        ev("Stake", "StakeUnlocked", account=p0.address, amount=seat, locked=seat),
        ev("Bid", "Unsubscribed", taskId=task_id, provider=p0.address),
    ]
    assert stake_of(h, p0)["locked"] == seat
    assert subscribers(h, task_id) == []
    assert_reverts(h.send(p0, BID_ABI, "unsubscribe", task_id), "Bid: not subscribed")
    assert_reverts(h.send(providers[1], BID_ABI, "unsubscribe", task_id), "Bid: not subscribed")
    h.ok(p0, BID_ABI, "unsubscribe", other)
    assert stake_of(h, p0)["locked"] == 0
    assert stake_of(h, p0)["staked"] == PROVIDER_STAKE


def test_subscribe_needs_a_free_seat_stake(h, params, client, dev_accounts, seat):
    """A provider with the minimum stake holds exactly minProviderStake / councilSeatStake seats."""
    small = dev_accounts[5]
    h.make_providers([small], params.min_provider_stake)
    seats = params.min_provider_stake // seat
    assert seats == 10
    value = BUDGET + min_deposit(params, BUDGET)
    h.block(*(
        h.tx(client, TASK_ABI, "submitStream", PRESCRIPTION, stream_terms(), value=value) for _ in range(seats + 1)
    ))
    block = h.block(*(h.tx(small, BID_ABI, "subscribe", t) for t in range(1, seats + 2)))
    assert [r.reason for r in block.txs] == [None] * seats + ["Stake: insufficient free stake"]
    assert stake_of(h, small)["locked"] == params.min_provider_stake
    assert h.view(STAKE_ABI, "freeStake", small.address) == 0
    assert subscribers(h, seats + 1) == []


def test_subscribe_rejects_client_and_non_providers(h, params, client, providers, outsider, dev_accounts):
    task_id = new_stream(h, params, client)
    # The client is itself a staked provider: the rule, not its lack of stake, stops it.
    h.make_providers([client], PROVIDER_STAKE)
    assert_reverts(h.send(client, BID_ABI, "subscribe", task_id), "Bid: a client cannot subscribe to its own task")
    assert_reverts(h.send(outsider, BID_ABI, "subscribe", task_id), "Bid: caller is not a staked provider")
    # Staked, resources registered, but without the provider role.
    staker = dev_accounts[6]
    block = h.block(
        h.tx(staker, STAKE_ABI, "stake", value=PROVIDER_STAKE),
        h.tx(staker, STAKE_ABI, "registerResources", 0, 8_000, 10, ""),
    )
    assert all(r.ok for r in block.txs)
    assert_reverts(h.send(staker, BID_ABI, "subscribe", task_id), "Bid: caller is not a staked provider")
    for account in (client, outsider, staker):
        assert stake_of(h, account)["locked"] == 0
    assert subscribers(h, task_id) == []
    assert_reverts(h.send(providers[0], BID_ABI, "subscribe", 99), "Task: no task 99")
    assert_reverts(h.send(providers[0], BID_ABI, "subscribe", 0), "Task: no task 0")


def test_subscribe_rejects_a_batch_task(h, params, client, providers):
    batch = {
        "maxPayment": OGPU, "councilSize": 1, "councilShareBps": 0, "checkpoints": 1, "segmentWindow": 60,
        "bidWindow": 30, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0, "confirmWindow": 60,
        "responseMethod": 0, "responseWeight": 0,
    }
    h.ok(client, TASK_ABI, "submitTask", PRESCRIPTION, 0, batch, value=OGPU + min_deposit(params, OGPU))
    assert_reverts(h.send(providers[0], BID_ABI, "subscribe", 1), "Task: not a stream task")
    assert_reverts(h.send(client, TASK_ABI, "retract", 1), "Task: not a stream task")
    assert h.view_reverts(TASK_ABI, "getStream", 1) == "Task: not a stream task"
    assert h.view_reverts(TASK_ABI, "settledUnits", 1, providers[0].address, 1) == "Task: not a stream task"
    assert h.view_reverts(TASK_ABI, "getStream", 2) == "Task: no task 2"


def test_subscribe_requires_memory_and_device(h, params, client, dev_accounts, seat):
    low, exact, cuda, rocm = dev_accounts[5:9]
    h.make_providers([low], PROVIDER_STAKE, memory_mib=3_999)
    h.make_providers([exact], PROVIDER_STAKE, memory_mib=4_000)
    h.make_providers([cuda], PROVIDER_STAKE, memory_mib=80_000, device_kind=1)
    h.make_providers([rocm], PROVIDER_STAKE, memory_mib=80_000, device_kind=2)
    below = "Bid: provider resources do not meet the task's terms"
    any_device = new_stream(h, params, client, minMemoryMiB=4_000, deviceMask=0)
    cuda_or_mps = new_stream(h, params, client, minMemoryMiB=4_000, deviceMask=0b1010)

    block = h.block(*(h.tx(a, BID_ABI, "subscribe", any_device) for a in (low, exact, cuda, rocm)))
    assert [r.reason for r in block.txs] == [below, None, None, None]
    block = h.block(*(h.tx(a, BID_ABI, "subscribe", cuda_or_mps) for a in (low, exact, cuda, rocm)))
    assert [r.reason for r in block.txs] == [below, below, None, below]

    assert subscribers(h, any_device) == [exact.address, cuda.address, rocm.address]
    assert subscribers(h, cuda_or_mps) == [cuda.address]
    assert [stake_of(h, a)["locked"] for a in (low, exact, cuda, rocm)] == [0, seat, 2 * seat, seat]


# -- the state machine --


def test_forming_active_interrupted_active(h, params, client, providers):
    """c = 3: Forming until the third subscriber, Interrupted when one of three leaves, Active again
    when a fourth joins; a leave or join that keeps the side of c changes nothing."""
    p0, p1, p2, p3 = providers
    task_id = new_stream(h, params, client, councilSize=3)

    def changed(state: int, count: int) -> list[Event]:
        return [ev("Task", "StreamStateChanged", taskId=task_id, state=state, subscribers=count)]

    def task_events(result: Any) -> list[Event]:
        return [e for e in result.events if e.contract == "Task"]

    assert task_events(h.ok(p0, BID_ABI, "subscribe", task_id)) == []
    assert state_of(h, task_id) == TaskState.FORMING
    assert task_events(h.ok(p0, BID_ABI, "unsubscribe", task_id)) == []
    assert state_of(h, task_id) == TaskState.FORMING  # below c before it ever opened: still forming
    h.ok(p0, BID_ABI, "subscribe", task_id)
    assert task_events(h.ok(p1, BID_ABI, "subscribe", task_id)) == []
    assert state_of(h, task_id) == TaskState.FORMING
    assert task_events(h.ok(p2, BID_ABI, "subscribe", task_id)) == changed(TaskState.ACTIVE, 3)
    assert state_of(h, task_id) == TaskState.ACTIVE
    assert task_events(h.ok(p1, BID_ABI, "unsubscribe", task_id)) == changed(TaskState.INTERRUPTED, 2)
    assert state_of(h, task_id) == TaskState.INTERRUPTED
    assert task_events(h.ok(p3, BID_ABI, "subscribe", task_id)) == changed(TaskState.ACTIVE, 3)
    assert state_of(h, task_id) == TaskState.ACTIVE
    assert task_events(h.ok(p1, BID_ABI, "subscribe", task_id)) == []  # four: still Active
    assert task_events(h.ok(p0, BID_ABI, "unsubscribe", task_id)) == []  # three: still Active
    assert state_of(h, task_id) == TaskState.ACTIVE
    assert sorted(subscribers(h, task_id)) == sorted([p1.address, p2.address, p3.address])
    assert h.view(TASK_ABI, "getStream", task_id)["subscribers"] == 3


def test_report_consensus_failure(h, params, client, providers, outsider):
    p0, p1, p2, _ = providers
    task_id = new_stream(h, params, client, councilSize=2)
    assert_reverts(h.send(client, TASK_ABI, "reportConsensusFailure", task_id), BAD_STATE)  # Forming
    subscribe_all(h, [p0, p1], task_id)
    assert state_of(h, task_id) == TaskState.ACTIVE
    for who in (p0, outsider):
        assert_reverts(h.send(who, TASK_ABI, "reportConsensusFailure", task_id), NOT_CLIENT)
    assert state_of(h, task_id) == TaskState.ACTIVE

    result = h.ok(client, TASK_ABI, "reportConsensusFailure", task_id)
    assert result.events == [ev("Task", "StreamStateChanged", taskId=task_id, state=TaskState.INTERRUPTED, subscribers=2)]
    assert state_of(h, task_id) == TaskState.INTERRUPTED
    assert_reverts(h.send(client, TASK_ABI, "reportConsensusFailure", task_id), BAD_STATE)  # Interrupted
    # Interrupted with c subscribers, until membership changes: a join re-forms the council.
    h.block()
    assert state_of(h, task_id) == TaskState.INTERRUPTED
    result = h.ok(p2, BID_ABI, "subscribe", task_id)
    assert result.events[-1] == ev("Task", "StreamStateChanged", taskId=task_id, state=TaskState.ACTIVE, subscribers=3)
    assert state_of(h, task_id) == TaskState.ACTIVE

    # Again, now re-formed by a departure that leaves c subscribers.
    h.ok(client, TASK_ABI, "reportConsensusFailure", task_id)
    assert state_of(h, task_id) == TaskState.INTERRUPTED
    result = h.ok(p0, BID_ABI, "unsubscribe", task_id)
    assert result.events[-1] == ev("Task", "StreamStateChanged", taskId=task_id, state=TaskState.ACTIVE, subscribers=2)
    # And once more, where the departure leaves fewer than c: still Interrupted, no event.
    h.ok(client, TASK_ABI, "reportConsensusFailure", task_id)
    result = h.ok(p1, BID_ABI, "unsubscribe", task_id)
    assert [e.name for e in result.events] == ["StakeUnlocked", "Unsubscribed"]
    assert state_of(h, task_id) == TaskState.INTERRUPTED


# -- updateTerms --


def test_update_terms_creates_version_two(h, params, client, providers, outsider):
    task_id = new_stream(h, params, client)
    for who in (providers[0], outsider):
        assert_reverts(h.send(who, TASK_ABI, "updateTerms", task_id, 2 * PRICE, 0, 0), NOT_CLIENT)
    assert_reverts(h.send(client, TASK_ABI, "updateTerms", task_id, 0, 0, 0), "Task: pricePerUnit is zero")
    assert_reverts(h.send(client, TASK_ABI, "updateTerms", task_id, PRICE, 3, 0), "Task: unknown responseMethod")
    assert_reverts(h.send(client, TASK_ABI, "updateTerms", task_id, PRICE, 1, BPS + 1),
                   "Task: responseWeight above 10000")
    assert h.view(TASK_ABI, "getStream", task_id)["termsVersion"] == 1

    result = h.ok(client, TASK_ABI, "updateTerms", task_id, 3 * PRICE, 2, BPS)
    assert TASK_ABI.decode_output("updateTerms", result.output) == 2
    assert result.events == [
        ev("Task", "TermsUpdated", taskId=task_id, version=2, pricePerUnit=3 * PRICE, responseMethod=2,
           responseWeight=BPS),
    ]
    stream = h.view(TASK_ABI, "getStream", task_id)
    assert (stream["termsVersion"], stream["pricePerUnit"], stream["responseMethod"], stream["responseWeight"]) == (
        2, 3 * PRICE, 2, BPS,
    )
    assert escrow_of(h, task_id) == BUDGET  # no money moves
    assert state_of(h, task_id) == TaskState.FORMING
    assert_reverts(h.send(client, TASK_ABI, "updateTerms", 99, PRICE, 0, 0), "Task: no task 99")


# -- settle --


@pytest.fixture
def active(h, params, client, providers) -> int:
    """Stream 1, Active with providers 0 and 1 subscribed."""
    task_id = new_stream(h, params, client)
    subscribe_all(h, providers[:2], task_id)
    assert state_of(h, task_id) == TaskState.ACTIVE
    return task_id


def test_settle_pays_only_the_increase_at_each_versions_price(h, client, providers, outsider, active):
    p0, p1 = providers[:2]
    task_id = active
    paid = 0

    def pays(sender: Any, units: int, version: int, expected_units: int, price: int) -> None:
        nonlocal paid
        signature = sign_receipt(h, client, task_id, p0, units, version)
        escrow, provider_before, task_before = escrow_of(h, task_id), h.balance(p0.address), h.balance(TASK_ABI.address)
        result = settle(h, sender, task_id, p0, units, version, signature)
        assert result.ok, result.reason
        amount = expected_units * price
        assert TASK_ABI.decode_output("settle", result.output) == amount
        assert result.events == [
            ev("Task", "ReceiptSettled", taskId=task_id, provider=p0.address, termsVersion=version,
               units=expected_units, amount=amount),
        ]
        assert h.balance(p0.address) == provider_before + amount  # p0 never sends here: no fee
        assert h.balance(TASK_ABI.address) == task_before - amount
        assert escrow_of(h, task_id) == escrow - amount
        assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, version) == units
        paid += amount

    pays(p1, 1_000, 1, 1_000, PRICE)  # another subscriber submits p0's receipt
    pays(outsider, 1_500, 1, 500, PRICE)  # so may anyone
    for units in (1_500, 1_200, 0):
        result = settle(h, outsider, task_id, p0, units, 1, sign_receipt(h, client, task_id, p0, units, 1))
        assert_reverts(result, NO_NEW_UNITS)
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 1) == 1_500

    h.ok(client, TASK_ABI, "updateTerms", task_id, 7 * PRICE, 0, 0)
    pays(client, 300, 2, 300, 7 * PRICE)  # version 2 counts its own units from 0
    pays(p1, 2_000, 1, 500, PRICE)  # version 1 is still settled at version 1's price
    pays(outsider, 301, 2, 1, 7 * PRICE)
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 1) == 2_000
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 2) == 301
    assert h.view(TASK_ABI, "settledUnits", task_id, p1.address, 1) == 0
    assert paid == 2_000 * PRICE + 301 * 7 * PRICE
    assert escrow_of(h, task_id) == BUDGET - paid

    for version in (0, 3, 2**32 - 1):
        result = settle(h, outsider, task_id, p0, 5_000, version, sign_receipt(h, client, task_id, p0, 5_000, version))
        assert_reverts(result, UNKNOWN_VERSION)


def test_settle_accepts_the_clients_request_key_only(h, client, providers, outsider, request_key, stranger, active):
    p0, p1 = providers[:2]
    task_id = active
    for who in (p0, outsider, request_key):
        assert_reverts(h.send(who, TASK_ABI, "setRequestKey", task_id, request_key.address), NOT_CLIENT)
    by_key = sign_receipt(h, request_key, task_id, p0, 100, 1)
    assert_reverts(settle(h, outsider, task_id, p0, 100, 1, by_key), BAD_SIGNER)  # no key registered yet

    result = h.ok(client, TASK_ABI, "setRequestKey", task_id, request_key.address)
    assert result.events == [ev("Task", "RequestKeySet", taskId=task_id, key=request_key.address)]
    assert h.view(TASK_ABI, "getStream", task_id)["requestKey"] == request_key.address
    before = h.balance(p0.address)
    assert settle(h, outsider, task_id, p0, 100, 1, by_key).ok
    assert h.balance(p0.address) == before + 100 * PRICE
    # The client still signs too.
    assert settle(h, outsider, task_id, p0, 150, 1, sign_receipt(h, client, task_id, p0, 150, 1)).ok
    assert h.balance(p0.address) == before + 150 * PRICE

    for signer in (stranger, p0, p1, outsider):
        result = settle(h, outsider, task_id, p0, 200, 1, sign_receipt(h, signer, task_id, p0, 200, 1))
        assert_reverts(result, BAD_SIGNER)
    # A receipt for p1 gives p0 nothing, and p1's receipt carries its own units.
    for_p1 = sign_receipt(h, client, task_id, p1, 500, 1)
    assert_reverts(settle(h, outsider, task_id, p0, 500, 1, for_p1), BAD_SIGNER)
    assert_reverts(settle(h, outsider, task_id, p1, 501, 1, for_p1), BAD_SIGNER)
    assert_reverts(settle(h, outsider, task_id, p1, 500, 2, for_p1), UNKNOWN_VERSION)
    h.ok(client, TASK_ABI, "updateTerms", task_id, PRICE, 0, 0)
    assert_reverts(settle(h, outsider, task_id, p1, 500, 2, for_p1), BAD_SIGNER)

    # A new key replaces the old one.
    h.ok(client, TASK_ABI, "setRequestKey", task_id, stranger.address)
    result = settle(h, outsider, task_id, p0, 300, 1, sign_receipt(h, request_key, task_id, p0, 300, 1))
    assert_reverts(result, BAD_SIGNER)
    assert settle(h, outsider, task_id, p0, 300, 1, sign_receipt(h, stranger, task_id, p0, 300, 1)).ok
    # The zero key turns request keys off.
    h.ok(client, TASK_ABI, "setRequestKey", task_id, ZERO_ADDRESS)
    result = settle(h, outsider, task_id, p0, 400, 1, sign_receipt(h, stranger, task_id, p0, 400, 1))
    assert_reverts(result, BAD_SIGNER)
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 1) == 300
    assert h.balance(p0.address) == before + 300 * PRICE


def test_receipts_are_bound_to_chain_genesis_and_task(h, params, client, providers, outsider, active):
    p0 = providers[0]
    task_id = active
    other = new_stream(h, params, client)
    wrong = [
        sign_receipt(h, client, task_id, p0, 100, 1, chain_id=1),
        sign_receipt(h, client, task_id, p0, 100, 1, chain_id=h.chain.chain_id + 1),
        sign_receipt(h, client, task_id, p0, 100, 1, genesis_hash=keccak(b"another genesis")),
        sign_receipt(h, client, other, p0, 100, 1),
    ]
    for signature in wrong:
        assert_reverts(settle(h, outsider, task_id, p0, 100, 1, signature), BAD_SIGNER)
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 1) == 0
    # The task-2 receipt is good on task 2 (p0 need not be subscribed there).
    before = h.balance(p0.address)
    assert settle(h, outsider, other, p0, 100, 1, wrong[3]).ok
    assert h.balance(p0.address) == before + 100 * PRICE
    assert escrow_of(h, task_id) == BUDGET
    assert escrow_of(h, other) == BUDGET - 100 * PRICE


def test_settle_rejects_malformed_signatures(h, client, providers, outsider, active):
    p0 = providers[0]
    good = sign_receipt(h, client, active, p0, 100, 1)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = good[:32] + (n - int.from_bytes(good[32:64], "big")).to_bytes(32, "big") + bytes([good[64] ^ 1])
    cases = [
        (good[:64], "Task: bad receipt signature: signature must be 65 bytes"),
        (good[:64] + b"\x05", "Task: bad receipt signature: signature recovery id must be 0 or 1"),
        (high_s, "Task: bad receipt signature: signature s value is in the upper half of the curve order"),
    ]
    for signature, reason in cases:
        assert_reverts(settle(h, outsider, active, p0, 100, 1, signature), reason)
    # v as 27/28 is the same signature.
    assert settle(h, outsider, active, p0, 100, 1, good[:64] + bytes([good[64] + 27])).ok


def test_budget_exhaustion_and_top_up(h, params, client, providers, outsider):
    p0, p1 = providers[:2]
    budget = 1_000 * PRICE
    task_id = new_stream(h, params, client, budget=budget)
    deposit = min_deposit(params, budget)
    subscribe_all(h, [p0, p1], task_id)

    assert_reverts(settle(h, outsider, task_id, p0, 1_001, 1, sign_receipt(h, client, task_id, p0, 1_001, 1)),
                   EXHAUSTED)
    assert settle(h, outsider, task_id, p1, 600, 1, sign_receipt(h, client, task_id, p1, 600, 1)).ok
    assert escrow_of(h, task_id) == 400 * PRICE
    receipt = sign_receipt(h, client, task_id, p0, 500, 1)
    assert_reverts(settle(h, outsider, task_id, p0, 500, 1, receipt), EXHAUSTED)
    assert h.view(TASK_ABI, "settledUnits", task_id, p0.address, 1) == 0

    assert_reverts(h.send(client, TASK_ABI, "topUp", task_id), "Task: no value sent")
    before = h.balance(client.address)
    result = h.ok(client, TASK_ABI, "topUp", task_id, value=99 * PRICE)
    assert result.events == [ev("Task", "ToppedUp", taskId=task_id, amount=99 * PRICE, escrow=499 * PRICE)]
    assert h.balance(client.address) == before - 99 * PRICE - result.fee
    assert_reverts(settle(h, outsider, task_id, p0, 500, 1, receipt), EXHAUSTED)  # one unit short
    # Anyone may top up.
    result = h.ok(outsider, TASK_ABI, "topUp", task_id, value=PRICE)
    assert result.events == [ev("Task", "ToppedUp", taskId=task_id, amount=PRICE, escrow=500 * PRICE)]
    before = h.balance(p0.address)
    assert settle(h, outsider, task_id, p0, 500, 1, receipt).ok  # exactly the whole escrow
    assert h.balance(p0.address) == before + 500 * PRICE
    task = h.view(TASK_ABI, "getTask", task_id)
    assert (task["escrow"], task["deposit"]) == (0, deposit)  # the deposit never pays providers
    assert_reverts(settle(h, outsider, task_id, p1, 601, 1, sign_receipt(h, client, task_id, p1, 601, 1)),
                   EXHAUSTED)
    assert h.balance(TASK_ABI.address) == deposit
    assert_reverts(h.send(client, TASK_ABI, "topUp", 99, value=1), "Task: no task 99")


# -- retract and the settle window --


def test_retract_settle_window_then_refund(h, params, client, providers, outsider, seat):
    p0, p1, p2, p3 = providers
    value = BUDGET + min_deposit(params, BUDGET) + 12_345
    task_id = TASK_ABI.decode_output("submitStream", submit(h, params, client, value=value).output)
    deposit = value - BUDGET
    subscribe_all(h, [p0, p1, p2], task_id)
    assert settle(h, outsider, task_id, p0, 1_000, 1, sign_receipt(h, client, task_id, p0, 1_000, 1)).ok
    h.ok(client, TASK_ABI, "topUp", task_id, value=777)
    late = sign_receipt(h, client, task_id, p1, 2_000, 1)

    for who in (p0, outsider):
        assert_reverts(h.send(who, TASK_ABI, "retract", task_id), NOT_CLIENT)
    result = h.ok(client, TASK_ABI, "retract", task_id)
    close_at = h.now + SETTLE_WINDOW
    assert result.events == [ev("Task", "StreamStateChanged", taskId=task_id, state=TaskState.CLOSING, subscribers=3)]
    assert h.view(TASK_ABI, "getStream", task_id)["closeDeadline"] == close_at
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 1, "nextDue": close_at}

    # Closing: nothing but settle and leaving.
    for sender, contract, function, args, options in [
        (p3, BID_ABI, "subscribe", (task_id,), {}),
        (client, TASK_ABI, "retract", (task_id,), {}),
        (client, TASK_ABI, "updateTerms", (task_id, PRICE, 0, 0), {}),
        (client, TASK_ABI, "setRequestKey", (task_id, outsider.address), {}),
        (client, TASK_ABI, "topUp", (task_id,), {"value": 1}),
        (client, TASK_ABI, "reportConsensusFailure", (task_id,), {}),
    ]:
        assert_reverts(h.send(sender, contract, function, *args, **options), BAD_STATE)
    assert stake_of(h, p3)["locked"] == 0
    result = h.ok(p2, BID_ABI, "unsubscribe", task_id)
    assert [e.name for e in result.events] == ["StakeUnlocked", "Unsubscribed"]  # no state change while closing
    assert state_of(h, task_id) == TaskState.CLOSING

    # Inside the window, the last second included, settle still pays.
    before = h.balance(p1.address)
    assert settle(h, outsider, task_id, p1, 2_000, 1, late, at=close_at - 1).ok
    assert h.balance(p1.address) == before + 2_000 * PRICE
    assert state_of(h, task_id) == TaskState.CLOSING
    paid = 3_000 * PRICE
    escrow = BUDGET + 777 - paid
    assert escrow_of(h, task_id) == escrow

    # At the deadline the start-of-block system call closes it; no transaction in the block.
    client_before = h.balance(client.address)
    block = h.block(at=close_at)
    assert block.txs == []
    refund = escrow + deposit
    assert refund == BUDGET + 777 - paid + deposit
    events = block.system_events
    assert events[-1] == ev("Task", "TaskSettled", taskId=task_id, outcome=Outcome.CONFIRMED, refund=refund,
                            paid=paid)
    assert sorted((e.name, e["account"]) for e in events if e.name == "StakeUnlocked") == sorted(
        ("StakeUnlocked", p.address) for p in (p0, p1)
    )
    assert all(e["amount"] == seat for e in events if e.name == "StakeUnlocked")
    assert sorted(e["provider"] for e in events if e.name == "Unsubscribed") == sorted([p0.address, p1.address])
    assert h.balance(client.address) == client_before + refund
    task = h.view(TASK_ABI, "getTask", task_id)
    assert (task["state"], task["escrow"], task["deposit"]) == (TaskState.SETTLED, 0, 0)
    assert h.balance(TASK_ABI.address) == 0
    assert subscribers(h, task_id) == []
    assert h.view(TASK_ABI, "getStream", task_id)["subscribers"] == 0
    for p in providers:
        assert stake_of(h, p) == {"staked": PROVIDER_STAKE, "locked": 0, "unbonding": 0, "releaseTime": 0, "roles": 2}
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": 0, "nextDue": 0}

    # Settled: receipts, subscriptions and everything else revert.
    assert_reverts(settle(h, outsider, task_id, p0, 1_001, 1, sign_receipt(h, client, task_id, p0, 1_001, 1)),
                   BAD_STATE)
    assert_reverts(settle(h, outsider, task_id, p2, 1, 1, sign_receipt(h, client, task_id, p2, 1, 1)), BAD_STATE)
    assert_reverts(h.send(p0, BID_ABI, "subscribe", task_id), BAD_STATE)
    assert_reverts(h.send(p0, BID_ABI, "unsubscribe", task_id), "Bid: not subscribed")
    assert_reverts(h.send(client, TASK_ABI, "retract", task_id), BAD_STATE)
    assert_reverts(h.send(client, TASK_ABI, "topUp", task_id, value=1), BAD_STATE)
    assert h.view(TASK_ABI, "settledUnits", task_id, p1.address, 1) == 2_000


def test_retract_a_forming_stream_refunds_everything(h, params, client, providers):
    value = BUDGET + min_deposit(params, BUDGET)
    task_id = new_stream(h, params, client, settleWindow=1)
    h.ok(providers[0], BID_ABI, "subscribe", task_id)
    before = h.balance(client.address)
    result = h.ok(client, TASK_ABI, "retract", task_id)
    block = h.block(at=h.now + 1)
    assert block.system_events[-1] == ev("Task", "TaskSettled", taskId=task_id, outcome=Outcome.CONFIRMED,
                                         refund=value, paid=0)
    assert h.balance(client.address) == before - result.fee + value
    assert stake_of(h, providers[0])["locked"] == 0
    assert state_of(h, task_id) == TaskState.SETTLED


def test_settle_after_the_window_reverts_even_when_the_queue_lags(h, params, client, providers, outsider):
    """scheduler.py: 'the functions that depend on a deadline check it themselves, so nothing waits on
    the queue for safety'. 64 bid deadlines due at the same second, scheduled first, fill the
    start-of-block call's quota, so the stream's close waits a block; a receipt sent at the deadline
    must still be refused."""
    p0, p1 = providers[:2]
    task_id = new_stream(h, params, client)
    subscribe_all(h, [p0, p1], task_id)
    receipt = sign_receipt(h, client, task_id, p0, 1_000, 1)
    limit = params.max_deadlines_per_block
    batch = {
        "maxPayment": OGPU, "councilSize": 1, "councilShareBps": 0, "checkpoints": 1, "segmentWindow": 60,
        "bidWindow": SETTLE_WINDOW + 1, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0,
        "confirmWindow": 60, "responseMethod": 0, "responseWeight": 0,
    }
    value = OGPU + min_deposit(params, OGPU)
    block = h.block(*(
        h.tx(client, TASK_ABI, "submitTask", PRESCRIPTION, 0, batch, value=value, gas=450_000) for _ in range(limit)
    ))
    assert all(r.ok for r in block.txs)
    h.ok(client, TASK_ABI, "retract", task_id)
    close_at = h.view(TASK_ABI, "getStream", task_id)["closeDeadline"]
    assert h.view(TASK_ABI, "pendingDeadlines") == {"count": limit + 1, "nextDue": close_at}
    result = settle(h, outsider, task_id, p0, 1_000, 1, receipt, at=close_at)
    assert h.view(TASK_ABI, "pendingDeadlines")["count"] == 1  # the close is still queued
    assert not result.ok, "a receipt paid after the settle window"
