"""Stake, the native contract at 0x…1000 (DESIGN.md §3), on an in-process chain with real blocks.

Every external transition and rejection is driven by signed transactions in blocks built with
`Chain.build_block` through the contract harness (harness.py); revert reasons are read with eth_call
on the same state. Calldata is encoded and logs decoded with eth_abi from `abis/Stake.json` (the
harness's own ABI code), not with the node's. After every block the test checks Stake's invariant: its balance = Σ staked +
Σ unbonding over every account that ever called it, and totalStaked() = Σ staked.

The internal API that other native contracts use (`lock`, `unlock`, `slash`) is driven through a small
`Host` over the chain's real py-evm state after the head (`Execution.state_at`), no mock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_utils import keccak
from harness import STAKE_ABI, Harness, TxResult, topic_bytes
from txfactory import MAX_FEE, TIP

from ogpu_node.contracts.addresses import STAKE
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.storage import slot_of
from ogpu_node.execution.errors import ExecutionReverted
from ogpu_node.types.protocol import ValidatorStatus

OGPU = 10**18
MIN_VALIDATOR = 1_000 * OGPU  # ogpu_node/config/networks/dev.json config.ogpu
RANDAO_TIP = b"\x07" * 32
MIN_PROVIDER = 100 * OGPU
UNBONDING_DELAY = 3_600
COINBASE = b"\xc0" * 20  # not a test account: tips never land on a balance the tests check

# The gas model of DESIGN.md §3: a fixed base per function, EIP-2929/2200 storage, LOG costs.
BASE = 2_000
COLD = 2_100  # first touch of a slot in the transaction
WARM = 100
SET = 20_000  # 0 -> nonzero (slot already warm)
RESET = 5_000 - COLD  # nonzero -> other value (slot already warm)
CLEAR_REFUND = 4_800


def log_gas(topics: int, data_bytes: int) -> int:
    return 375 + 375 * topics + 8 * data_bytes


def intrinsic(data: bytes) -> int:
    zeros = data.count(0)
    return 21_000 + 4 * zeros + 16 * (len(data) - zeros)


def tx_gas(data: bytes, execution: int, refund: int = 0) -> int:
    """Gas a transaction to Stake uses: intrinsic + execution - capped refund, at least the EIP-7623
    calldata floor (21000 + 10 per token, a nonzero byte being four tokens)."""
    spent = intrinsic(data) + execution
    zeros = data.count(0)
    floor = 21_000 + 10 * (zeros + 4 * (len(data) - zeros))
    return max(spent - min(refund, spent // 5), floor)


# -- driving the chain: the one contract harness (harness.py), Stake's invariant after every block --


def selector(name: str) -> bytes:
    return STAKE_ABI.selector(name)


def calldata(name: str, *args: Any) -> bytes:
    return STAKE_ABI.encode_call(name, *args)


def decode_log(address: bytes, topics: list[int] | tuple, data: bytes) -> tuple[str, dict[str, Any]]:
    assert address == STAKE
    event = STAKE_ABI.decode_log([topic_bytes(t) for t in topics], data)
    return event.name, event.args


@dataclass
class Sent:
    """One transaction's result (harness.TxResult) with Stake's events as (name, arguments)."""

    result: TxResult

    @property
    def tx(self) -> Any:
        return self.result.tx

    @property
    def receipt(self) -> Any:
        return self.result.receipt

    @property
    def header(self) -> Any:
        return self.result.header

    @property
    def gas_used(self) -> int:
        return self.result.gas_used

    @property
    def status(self) -> int:
        return 1 if self.result.ok else 0

    @property
    def fee(self) -> int:
        return self.result.fee  # gas × min(MAX_FEE, base fee + TIP)

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [decode_log(log.address, log.topics, log.data) for log in self.receipt.logs]


class StakeDriver:
    """Stake alone through `harness.Harness`: calls by function name, views as tuples, a tip paid to a
    coinbase no test account owns, blocks 12 s apart, and Stake's invariant checked after every block."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.harness = Harness(chain, coinbase=COINBASE, max_fee_per_gas=MAX_FEE, max_priority_fee_per_gas=TIP)
        self.callers: set[bytes] = set()  # every account that ever sent a transaction to Stake
        self.forced = 0  # ether forced into Stake without a call (SELFDESTRUCT): nobody's stake

    # reads at the head

    def balance(self, address: bytes) -> int:
        return self.harness.balance(address)

    def raw_call(self, data: bytes, sender: bytes = b"\x00" * 20, value: int = 0) -> bytes:
        return self.harness.call(STAKE, data, sender, value)

    def view(self, name: str, *args: Any) -> Any:
        out = self.harness.view(STAKE_ABI, name, *args)
        return tuple(out.values()) if isinstance(out, dict) else out

    def reason(self, account: Any, data: bytes, value: int = 0) -> str:
        """The revert reason eth_call gives for this call from `account` at the head."""
        with pytest.raises(ExecutionReverted) as failure:
            self.raw_call(data, account.address, value)
        assert failure.value.data[:4] == keccak(text="Error(string)")[:4]
        return failure.value.reason

    # writes

    def tx(self, account: Any, data: bytes, value: int = 0, gas: int = 500_000, to: bytes = STAKE) -> Any:
        if to == STAKE:
            self.callers.add(account.address)
        return self.harness.raw_tx(account, to, data, value, gas)

    def block(self, txs: list[Any], dt: int = 12) -> list[Sent]:
        block = self.harness.block(*txs, dt=dt, mix_hash=b"\x07" * 32)
        self.check_invariant()
        return [Sent(result) for result in block.txs]

    def send(self, account: Any, name: str, *args: Any, value: int = 0, dt: int = 12) -> Sent:
        (result,) = self.block([self.tx(account, calldata(name, *args), value)], dt)
        assert result.status == 1, self.reason(account, calldata(name, *args), value)
        return result

    def fail(self, account: Any, data: bytes, value: int = 0) -> tuple[str, Sent]:
        """Send a transaction that must fail: its reason (eth_call at the head, which runs at head
        timestamp + 1, the timestamp the block gets), status 0, no logs, nothing changed but the fee."""
        reason = self.reason(account, data, value)
        stake_before = self.balance(STAKE)
        sender_before = self.balance(account.address)
        state_before = self.view("stakeOf", account.address), self.view("totalStaked")
        (result,) = self.block([self.tx(account, data, value)], dt=1)
        assert result.status == 0
        assert result.receipt.logs == ()
        assert self.balance(STAKE) == stake_before
        assert self.balance(account.address) == sender_before - result.fee
        assert (self.view("stakeOf", account.address), self.view("totalStaked")) == state_before
        return reason, result

    def check_invariant(self) -> None:
        records = [self.view("stakeOf", who) for who in self.callers]
        staked = sum(r[0] for r in records)
        unbonding = sum(r[2] for r in records)
        assert self.balance(STAKE) == staked + unbonding + self.forced
        assert self.view("totalStaked") == staked


@pytest.fixture
def h(chain) -> StakeDriver:
    return StakeDriver(chain)


# -- stake --


def test_stake_records_the_value_moves_exactly_it_and_emits_staked(h, dev_accounts):
    """Rule: stake() adds msg.value to the caller's stake and totalStaked, holds the value at Stake,
    emits Staked(account, amount, new total); gas = base + EIP-2929/2200 slot costs + LOG2."""
    a, b = dev_accounts[1], dev_accounts[2]
    start_a, start_b = h.balance(a.address), h.balance(b.address)

    first = h.send(a, "stake", value=600 * OGPU)
    assert first.events == [("Staked", {"account": a.address, "amount": 600 * OGPU, "total": 600 * OGPU})]
    # staked[a] and total: cold read, then 0 -> nonzero; one LOG2 with two words of data.
    assert first.gas_used == tx_gas(selector("stake"), BASE + 2 * (COLD + SET) + log_gas(2, 64)) == 68_901
    second = h.send(a, "stake", value=450 * OGPU)
    assert second.events == [("Staked", {"account": a.address, "amount": 450 * OGPU, "total": 1_050 * OGPU})]
    assert second.gas_used == tx_gas(selector("stake"), BASE + 2 * (COLD + RESET) + log_gas(2, 64)) == 34_701
    other = h.send(b, "stake", value=7)
    assert other.events == [("Staked", {"account": b.address, "amount": 7, "total": 7})]
    # b's slot is new, the total's is not.
    assert other.gas_used == tx_gas(selector("stake"), BASE + COLD + SET + COLD + RESET + log_gas(2, 64))

    assert h.view("stakeOf", a.address) == (1_050 * OGPU, 0, 0, 0, 0)
    assert h.view("stakeOf", b.address) == (7, 0, 0, 0, 0)
    assert h.view("freeStake", a.address) == 1_050 * OGPU
    assert h.view("totalStaked") == 1_050 * OGPU + 7
    assert h.balance(STAKE) == 1_050 * OGPU + 7
    assert h.balance(a.address) == start_a - 1_050 * OGPU - first.fee - second.fee
    assert h.balance(b.address) == start_b - 7 - other.fee


def test_gas_of_each_transaction_in_a_block_starts_from_that_transaction(h, dev_accounts):
    """Rule: EIP-2929 warm slots and EIP-2200 original values are per transaction: a second and third
    stake() by the same account in the same block pay the cold read and the nonzero -> nonzero write
    again, exactly as in a later block."""
    a = dev_accounts[1]
    sent = h.block([h.tx(a, selector("stake"), value=v * OGPU) for v in (1, 2, 3)])
    first = tx_gas(selector("stake"), BASE + 2 * (COLD + SET) + log_gas(2, 64))
    again = tx_gas(selector("stake"), BASE + 2 * (COLD + RESET) + log_gas(2, 64))
    assert [s.gas_used for s in sent] == [first, again, again]
    assert [s.events[0][1]["total"] for s in sent] == [1 * OGPU, 3 * OGPU, 6 * OGPU]
    assert h.view("stakeOf", a.address) == (6 * OGPU, 0, 0, 0, 0)


def test_stake_without_value_reverts(h, dev_accounts):
    """Rule: stake() with msg.value 0 reverts "Stake.stake: no value sent" and costs only gas."""
    a = dev_accounts[1]
    reason, sent = h.fail(a, calldata("stake"))
    assert reason == "Stake.stake: no value sent"
    assert sent.gas_used == tx_gas(selector("stake"), BASE)
    assert h.view("stakeOf", a.address) == (0, 0, 0, 0, 0)


# -- requestUnstake --


def test_request_unstake_moves_free_stake_to_unbonding_and_a_new_request_restarts_the_delay(h, dev_accounts):
    """Rule: requestUnstake(amount) moves amount from staked to unbonding, lowers totalStaked, sets the
    release time to block timestamp + unbondingDelay for the whole unbonding amount (a later request
    restarts it) and emits UnstakeRequested(account, amount, releaseTime)."""
    a = dev_accounts[1]
    h.send(a, "stake", value=500 * OGPU)
    first = h.send(a, "requestUnstake", 200 * OGPU)
    t1 = first.header.timestamp
    assert first.events == [
        ("UnstakeRequested", {"account": a.address, "amount": 200 * OGPU, "releaseTime": t1 + UNBONDING_DELAY})
    ]
    # reads staked, locked, roles (cold); staked, total rewritten; unbonding, release 0 -> nonzero.
    # Below the validator minimum afterwards, so its validator status is read too (a fourth cold read).
    execution = BASE + 4 * COLD + RESET + (COLD + RESET) + 2 * (COLD + SET) + log_gas(2, 64)
    assert first.gas_used == tx_gas(calldata("requestUnstake", 200 * OGPU), execution) == 85_413
    assert h.view("stakeOf", a.address) == (300 * OGPU, 0, 200 * OGPU, t1 + UNBONDING_DELAY, 0)
    assert h.view("freeStake", a.address) == 300 * OGPU
    assert h.view("totalStaked") == 300 * OGPU

    second = h.send(a, "requestUnstake", 50 * OGPU, dt=100)
    t2 = second.header.timestamp
    assert t2 == t1 + 100
    assert second.events == [
        ("UnstakeRequested", {"account": a.address, "amount": 50 * OGPU, "releaseTime": t2 + UNBONDING_DELAY})
    ]
    assert h.view("stakeOf", a.address) == (250 * OGPU, 0, 250 * OGPU, t2 + UNBONDING_DELAY, 0)
    assert h.balance(STAKE) == 500 * OGPU

    # All of the remaining free stake may go when no role is held.
    h.send(a, "requestUnstake", 250 * OGPU)
    assert h.view("stakeOf", a.address)[:3] == (0, 0, 500 * OGPU)
    assert h.view("totalStaked") == 0


def test_request_unstake_rejections(h, dev_accounts):
    """Rule: requestUnstake reverts for a zero amount, an amount over the free stake, and an amount that
    would leave the stake below the minimum of a role the account holds; clearing the role lifts it."""
    a = dev_accounts[1]
    h.send(a, "stake", value=1_200 * OGPU)
    assert h.fail(a, calldata("requestUnstake", 0))[0] == "Stake.requestUnstake: amount is zero"
    assert h.fail(a, calldata("requestUnstake", 1_200 * OGPU + 1))[0] == "Stake.requestUnstake: amount exceeds free stake"
    assert h.fail(a, calldata("requestUnstake", 2**256 - 1))[0] == "Stake.requestUnstake: amount exceeds free stake"

    h.send(a, "registerResources", 1, 24_576, 10, "https://a.example")
    h.send(a, "setRandaoTip", RANDAO_TIP)
    h.send(a, "setRoles", 1)  # validator
    assert h.fail(a, calldata("requestUnstake", 200 * OGPU + 1))[0] == (
        "Stake.requestUnstake: stake would fall below the validator minimum; clear the role first"
    )
    h.send(a, "requestUnstake", 200 * OGPU)  # exactly the minimum left
    assert h.view("stakeOf", a.address)[:3] == (MIN_VALIDATOR, 0, 200 * OGPU)

    h.send(a, "setRoles", 2)  # provider only: out of the validator set at the next epoch boundary
    assert h.fail(a, calldata("requestUnstake", 900 * OGPU + 1))[0] == (
        "Stake.requestUnstake: a validator's stake stays until an epoch boundary takes it out of the validator set"
    )
    assert h.view("validatorOf", a.address)[1] == ValidatorStatus.NONE  # the failed tx's block was the boundary
    assert h.fail(a, calldata("requestUnstake", 900 * OGPU + 1))[0] == (
        "Stake.requestUnstake: stake would fall below the provider minimum; clear the role first"
    )
    h.send(a, "setRoles", 0)
    h.send(a, "requestUnstake", 1_000 * OGPU)
    assert h.view("stakeOf", a.address)[:3] == (0, 0, 1_200 * OGPU)


# -- withdraw --


def test_withdraw_pays_exactly_the_unbonded_amount_at_the_release_time_not_before(h, dev_accounts):
    """Rule: withdraw() reverts with nothing unbonding, reverts before the release time (naming it),
    and from the release time on pays exactly the unbonding amount to the caller, clears the entry,
    emits Withdrawn(account, amount) and returns the amount."""
    a = dev_accounts[1]
    assert h.fail(a, calldata("withdraw"))[0] == "Stake.withdraw: nothing to withdraw"
    h.send(a, "stake", value=300 * OGPU)
    request = h.send(a, "requestUnstake", 120 * OGPU)
    release = request.header.timestamp + UNBONDING_DELAY

    # Advance to one second before the release time: the next block's timestamp is release - 1.
    h.block([], dt=release - 2 - h.chain.head.timestamp)
    assert h.chain.head.timestamp == release - 2
    reason, _ = h.fail(a, calldata("withdraw"))  # its block has timestamp release - 1
    assert h.chain.head.timestamp == release - 1
    assert reason == f"Stake.withdraw: unbonding until timestamp {release}"

    # eth_call runs at head timestamp + 1 = release: it returns the amount.
    assert decode(["uint256"], h.raw_call(calldata("withdraw"), a.address)) == (120 * OGPU,)
    before = h.balance(a.address)
    paid = h.send(a, "withdraw", dt=1)
    assert paid.header.timestamp == release
    assert paid.events == [("Withdrawn", {"account": a.address, "amount": 120 * OGPU})]
    assert h.balance(a.address) == before + 120 * OGPU - paid.fee
    assert h.balance(STAKE) == 180 * OGPU
    assert h.view("stakeOf", a.address) == (180 * OGPU, 0, 0, 0, 0)
    # unbonding and release: cold read, nonzero -> 0 (two clear refunds, capped at a fifth of the gas).
    execution = BASE + 2 * COLD + 2 * RESET + log_gas(2, 32)
    assert paid.gas_used == tx_gas(selector("withdraw"), execution, refund=2 * CLEAR_REFUND) == 27_556
    assert h.fail(a, calldata("withdraw"))[0] == "Stake.withdraw: nothing to withdraw"


# -- setRoles --


def test_set_roles_rejections(h, dev_accounts):
    """Rule: setRoles reverts on bits other than 1 (validator) and 2 (provider), on a stake below the
    minimum of a requested role, and on the provider role without registered resources."""
    a = dev_accounts[1]
    assert h.fail(a, calldata("setRoles", 4))[0] == "Stake.setRoles: unknown role bits"
    assert h.fail(a, calldata("setRoles", 255))[0] == "Stake.setRoles: unknown role bits"
    h.send(a, "stake", value=MIN_VALIDATOR - 1)
    assert h.fail(a, calldata("setRoles", 1))[0] == "Stake.setRoles: stake below the validator minimum"
    assert h.fail(a, calldata("setRoles", 3))[0] == "Stake.setRoles: stake below the validator minimum"
    assert h.fail(a, calldata("setRoles", 2))[0] == "Stake.setRoles: register resources before taking the provider role"

    b = dev_accounts[2]
    h.send(b, "stake", value=MIN_PROVIDER - 1)
    h.send(b, "registerResources", 0, 1, 0, "")
    assert h.fail(b, calldata("setRoles", 2))[0] == "Stake.setRoles: stake below the provider minimum"
    assert h.view("stakeOf", b.address)[4] == 0
    assert h.view("providers") == []


def test_set_roles_keeps_the_provider_set_and_queues_validators_for_the_next_epoch_boundary(h, dev_accounts):
    """Rule: setRoles(roles) stores the bits and emits RolesChanged(account, roles). The provider role
    adds the caller to or removes it from providers() at once; the validator role queues it
    (ValidatorQueued(account, status)) and validators() changes only at the next epoch boundary, the
    next block under --dev (removal moves the last member into the hole). An exit called off before
    the boundary keeps the validator; a role set again changes nothing."""
    a, b, c = dev_accounts[1], dev_accounts[2], dev_accounts[3]
    for who in (a, b, c):
        h.send(who, "stake", value=MIN_VALIDATOR)
        h.send(who, "setRandaoTip", RANDAO_TIP)
    h.send(a, "registerResources", 1, 81_920, 5, "https://x")
    both = h.send(a, "setRoles", 3)
    assert both.events == [("RolesChanged", {"account": a.address, "roles": 3}),
                           ("ValidatorQueued", {"account": a.address, "status": ValidatorStatus.PENDING})]
    assert (h.view("validators"), h.view("providers")) == ([], [a.address])
    assert h.view("validatorOf", a.address) == (RANDAO_TIP, ValidatorStatus.PENDING, 0, 0)
    activated = h.send(b, "setRoles", 1)  # this block's start is the boundary that activates a
    assert h.view("validators") == [a.address]
    assert h.view("validatorOf", a.address) == (RANDAO_TIP, ValidatorStatus.ACTIVE, activated.header.timestamp, 0)
    h.send(c, "setRoles", 1)
    h.block([])
    assert h.view("validators") == [a.address, b.address, c.address]
    assert h.view("stakeOf", a.address)[4] == 3

    dropped = h.send(a, "setRoles", 2)  # a leaves: still validating until the boundary
    assert dropped.events == [("RolesChanged", {"account": a.address, "roles": 2}),
                              ("ValidatorQueued", {"account": a.address, "status": ValidatorStatus.EXITING})]
    assert h.view("validators") == [a.address, b.address, c.address]
    h.block([])  # the boundary: c moves into a's place
    assert h.view("validators") == [c.address, b.address]
    assert h.view("validatorOf", a.address)[1:] == (ValidatorStatus.NONE, activated.header.timestamp,
                                                     h.chain.head.timestamp)
    h.send(a, "setRoles", 0)
    assert h.view("providers") == []
    h.send(a, "setRoles", 1)
    h.block([])
    assert h.view("validators") == [c.address, b.address, a.address]
    # Setting the same roles again changes nothing but still reports them.
    again = h.send(a, "setRoles", 1)
    assert again.events == [("RolesChanged", {"account": a.address, "roles": 1})]
    # An exit called off before its boundary: b never leaves, and its stale queue entry is skipped.
    h.block([h.tx(b, calldata("setRoles", 0)), h.tx(b, calldata("setRoles", 1))])
    h.block([])
    assert h.view("validators") == [c.address, b.address, a.address]
    assert h.view("validatorQueues")[1:] == (0, 0)


# -- registerResources --


def test_register_resources_stores_the_record_and_rejects_bad_fields(h, dev_accounts):
    """Rule: registerResources(kind, memoryMiB, score, endpoint) reverts for a device kind outside
    cpu/cuda/rocm/mps (0..3), zero memory, and an endpoint over 256 bytes of UTF-8; otherwise it
    stores the record (resourcesOf), replacing an earlier one entirely, and emits ResourcesRegistered."""
    a = dev_accounts[1]
    assert h.fail(a, calldata("registerResources", 4, 1, 0, "x"))[0] == "Stake.registerResources: unknown device kind"
    assert h.fail(a, calldata("registerResources", 255, 1, 0, "x"))[0] == "Stake.registerResources: unknown device kind"
    assert h.fail(a, calldata("registerResources", 1, 0, 9, "x"))[0] == "Stake.registerResources: memory must be positive"
    too_long = "https://" + "a" * 249
    assert len(too_long.encode()) == 257
    assert h.fail(a, calldata("registerResources", 1, 1, 0, too_long))[0] == (
        "Stake.registerResources: endpoint longer than 256 bytes"
    )
    # 129 two-byte characters: 129 characters, 258 bytes.
    assert h.fail(a, calldata("registerResources", 1, 1, 0, "é" * 129))[0] == (
        "Stake.registerResources: endpoint longer than 256 bytes"
    )
    assert h.view("resourcesOf", a.address) == (0, 0, 0, "")

    longest = "https://" + "b" * 248
    first = h.send(a, "registerResources", 3, 2**64 - 1, 2**64 - 1, longest)
    assert first.events == [(
        "ResourcesRegistered",
        {"account": a.address, "deviceKind": 3, "memoryMiB": 2**64 - 1, "throughputScore": 2**64 - 1,
         "endpoint": longest},
    )]
    assert h.view("resourcesOf", a.address) == (3, 2**64 - 1, 2**64 - 1, longest)
    endpoint_word = lambda i: h.chain.storage_at(h.chain.head, STAKE, slot_of("endpoint", a.address, i))  # noqa: E731
    assert [endpoint_word(i) != 0 for i in range(8)] == [True] * 8

    short = "é" * 10
    second = h.send(a, "registerResources", 0, 16, 0, short)
    assert second.events[0][1]["endpoint"] == short
    assert h.view("resourcesOf", a.address) == (0, 16, 0, short)
    # The longer endpoint's tail words are cleared, not left behind in storage.
    assert endpoint_word(0) != 0
    assert [endpoint_word(i) for i in range(1, 8)] == [0] * 7

    b = dev_accounts[2]
    one = h.send(b, "registerResources", 1, 81_920, 5, "https://x")
    # device, memory, score: 0 -> nonzero; endpoint length read then 0 -> 9; one data word 0 -> nonzero.
    # LOG2 with six data words (three scalars, the string's offset, length and one word).
    execution = BASE + 3 * (COLD + SET) + COLD + SET + (COLD + SET) + log_gas(2, 192)
    assert one.gas_used == tx_gas(calldata("registerResources", 1, 81_920, 5, "https://x"), execution) == 137_173


# -- dispatch --


def test_dispatch_rejects_value_to_non_payable_functions(h, dev_accounts):
    """Rule: a call with value to any function but stake() reverts "Stake.<fn>: function is not payable"
    and the value stays with the sender."""
    a = dev_accounts[1]
    h.send(a, "stake", value=MIN_VALIDATOR)
    cases = {
        "requestUnstake": calldata("requestUnstake", 1),
        "withdraw": calldata("withdraw"),
        "setRoles": calldata("setRoles", 1),
        "registerResources": calldata("registerResources", 1, 1, 1, "x"),
        "stakeOf": calldata("stakeOf", a.address),
        "totalStaked": calldata("totalStaked"),
    }
    for name, data in cases.items():
        reason, sent = h.fail(a, data, value=1)
        assert reason == f"Stake.{name}: function is not payable"
        # Rejected before the base charge: only the intrinsic gas (or the calldata floor).
        assert sent.gas_used == tx_gas(data, 0)
    assert h.view("stakeOf", a.address) == (MIN_VALIDATOR, 0, 0, 0, 0)


def test_dispatch_rejects_unknown_selectors_short_and_malformed_calldata(h, dev_accounts):
    """Rule: calldata shorter than a selector (a plain transfer included), an unknown selector, and
    arguments that do not decode as the function's ABI types revert with a reason naming the fault."""
    a = dev_accounts[1]
    assert h.fail(a, b"")[0] == "Stake: calldata has no function selector"
    assert h.fail(a, b"", value=OGPU)[0] == "Stake: calldata has no function selector"  # plain transfer
    assert h.fail(a, b"\x3a\x4b\x66")[0] == "Stake: calldata has no function selector"
    assert h.fail(a, bytes.fromhex("deadbeef"))[0] == "Stake: unknown function selector 0xdeadbeef"
    assert h.fail(a, bytes.fromhex("deadbeef"), value=5)[0] == "Stake: unknown function selector 0xdeadbeef"

    malformed = {
        "requestUnstake": selector("requestUnstake") + b"\x01\x02\x03",  # a truncated word
        "setRoles": selector("setRoles") + encode(["uint256"], [256]),  # not a uint8
        "stakeOf": selector("stakeOf") + encode(["uint256"], [2**160]),  # not an address
        "registerResources": selector("registerResources") + encode(  # endpoint not UTF-8
            ["uint8", "uint64", "uint64", "bytes"], [1, 1, 1, b"\xff\xfe"]
        ),
    }
    bad_pointer = bytearray(calldata("registerResources", 1, 1, 1, "x"))
    bad_pointer[4 + 96 : 4 + 128] = (2**255).to_bytes(32, "big")  # the string's offset
    huge_length = bytearray(calldata("registerResources", 1, 1, 1, "x"))
    huge_length[4 + 128 : 4 + 160] = (2**200).to_bytes(32, "big")  # the string's length
    for name, data in [*malformed.items(), ("registerResources", bytes(bad_pointer)),
                       ("registerResources", bytes(huge_length))]:
        reason, sent = h.fail(a, data)
        assert reason == f"Stake.{name}: malformed arguments"
        assert sent.gas_used == tx_gas(data, BASE)
    assert h.view("stakeOf", a.address) == (0, 0, 0, 0, 0)
    assert h.view("resourcesOf", a.address) == (0, 0, 0, "")


def test_out_of_gas_inside_stake_changes_nothing_and_consumes_all_gas(h, dev_accounts):
    """Rule: a native call that runs out of gas part-way (after some storage writes) fails like any EVM
    out-of-gas: status 0, all the transaction's gas used, its writes, logs and value undone."""
    a = dev_accounts[1]
    before = h.balance(a.address)
    needed = tx_gas(selector("stake"), BASE + 2 * (COLD + SET) + log_gas(2, 64))
    short = needed - 1  # everything but the last gas unit of the LOG
    (sent,) = h.block([h.tx(a, selector("stake"), value=OGPU, gas=short)])
    assert sent.status == 0
    assert sent.gas_used == short
    assert sent.receipt.logs == ()
    assert h.balance(a.address) == before - sent.fee
    assert h.view("stakeOf", a.address) == (0, 0, 0, 0, 0)
    assert h.balance(STAKE) == 0
    assert h.send(a, "stake", value=OGPU).gas_used == needed


def test_ether_forced_into_stake_is_nobodys_stake(h, dev_accounts):
    """Rule: ether that reaches 0x…1000 without a call (the beneficiary of a SELFDESTRUCT) creates no
    stake record and cannot be withdrawn by anyone; Stake's balance then exceeds Σ staked + Σ unbonding
    by exactly that amount (the DESIGN.md §3 equality holds only absent such forced sends)."""
    a, b = dev_accounts[1], dev_accounts[2]
    h.send(a, "stake", value=10 * OGPU)
    h.send(a, "requestUnstake", 4 * OGPU)
    # Init code PUSH2 0x1000 SELFDESTRUCT: created and destroyed in one transaction (EIP-6780), its
    # value goes to Stake.
    h.forced = 3 * OGPU
    (sent,) = h.block([h.tx(b, bytes.fromhex("611000ff"), value=3 * OGPU, to=b"")])
    assert sent.status == 1
    assert h.balance(STAKE) == 13 * OGPU
    assert h.view("totalStaked") == 6 * OGPU
    assert h.view("stakeOf", b.address) == (0, 0, 0, 0, 0)
    assert h.fail(b, calldata("withdraw"))[0] == "Stake.withdraw: nothing to withdraw"
    assert h.fail(b, calldata("requestUnstake", 1))[0] == "Stake.requestUnstake: amount exceeds free stake"


def test_views_and_params(h, dev_accounts):
    """Rule: the views report the stored records (zero for an unknown account) and params() the
    genesis config.ogpu values; several transactions in one block keep the books straight."""
    a = dev_accounts[1]
    assert h.view("params") == (MIN_VALIDATOR, MIN_PROVIDER, UNBONDING_DELAY)
    assert h.view("stakeOf", a.address) == (0, 0, 0, 0, 0)
    assert h.view("freeStake", a.address) == 0
    assert h.view("resourcesOf", a.address) == (0, 0, 0, "")
    assert (h.view("validators"), h.view("providers"), h.view("totalStaked")) == ([], [], 0)
    h.send(a, "stake", value=MIN_VALIDATOR + 5)
    h.send(a, "registerResources", 2, 65_536, 77, "grpc://node-1:9000")
    h.send(a, "setRandaoTip", RANDAO_TIP)
    h.send(a, "setRoles", 3)
    request = h.send(a, "requestUnstake", 5)
    assert h.view("stakeOf", a.address) == (MIN_VALIDATOR, 0, 5, request.header.timestamp + UNBONDING_DELAY, 3)
    assert h.view("freeStake", a.address) == MIN_VALIDATOR
    assert h.view("resourcesOf", a.address) == (2, 65_536, 77, "grpc://node-1:9000")
    assert (h.view("validators"), h.view("providers")) == ([a.address], [a.address])
    assert h.view("totalStaked") == MIN_VALIDATOR
    # Several accounts and transactions in one block: the invariant holds at its end.
    b, c = dev_accounts[2], dev_accounts[3]
    sent = h.block([
        h.tx(b, calldata("stake"), value=3 * OGPU),
        h.tx(c, calldata("stake"), value=4 * OGPU),
        h.tx(b, calldata("requestUnstake", OGPU)),
        h.tx(c, calldata("requestUnstake", 5 * OGPU)),  # fails: over c's free stake
    ])
    assert [s.status for s in sent] == [1, 1, 1, 0]
    assert h.view("totalStaked") == MIN_VALIDATOR + 2 * OGPU + 4 * OGPU
    assert h.balance(STAKE) == MIN_VALIDATOR + 5 + 7 * OGPU


# -- the internal API (lock, unlock, slash) over the chain's real state --


class StateHost:
    """`ogpu_node.contracts.host.Host` over a py-evm state: what another native contract's call would
    see, minus gas accounting. A failed call rolls the state back to where it began."""

    def __init__(self, state: Any, caller: bytes = b"\x00" * 20) -> None:
        self.state = state
        self.caller = caller
        self.value = 0
        self.is_static = False
        self.block_number = state.block_number
        self.timestamp = state.timestamp
        self.mix_hash = state.mix_hash
        self.logs: list[tuple[bytes, list[bytes], bytes]] = []
        self.gas = 0

    def sload(self, address: bytes, slot: int) -> int:
        return self.state.get_storage(address, slot)

    def sstore(self, address: bytes, slot: int, value: int) -> None:
        self.state.set_storage(address, slot, value)

    def balance(self, address: bytes) -> int:
        return self.state.get_balance(address)

    def transfer(self, sender: bytes, recipient: bytes, amount: int) -> None:
        if self.state.get_balance(sender) < amount:
            raise Revert("insufficient balance for transfer")
        self.state.delta_balance(sender, -amount)
        self.state.delta_balance(recipient, amount)

    def burn(self, holder: bytes, amount: int) -> None:
        if self.state.get_balance(holder) < amount:
            raise Revert("insufficient balance to burn")
        self.state.delta_balance(holder, -amount)

    def log(self, address: bytes, topics: list[bytes], data: bytes) -> None:
        self.logs.append((address, topics, data))

    def charge(self, gas: int) -> None:
        self.gas += gas

    def run(self, fn: Any, *args: Any) -> Any:
        snapshot = self.state.snapshot()
        first_log = len(self.logs)
        try:
            return fn(self, *args)
        except Revert:
            self.state.revert(snapshot)
            del self.logs[first_log:]
            raise

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        out = [decode_log(*entry) for entry in self.logs]
        self.logs.clear()
        return out


@pytest.fixture
def staked(h, dev_accounts) -> tuple[StakeDriver, StateHost, Stake]:
    """Accounts 1..3 staked through real blocks; a host over the state after the head.

    1: 1500 oGPU, validator + provider, 300 of it unbonding (1200 staked)
    2: 1100 oGPU, validator + provider
    3: 500 oGPU, no role
    """
    v, w, x = dev_accounts[1], dev_accounts[2], dev_accounts[3]
    for who, amount in ((v, 1_500 * OGPU), (w, 1_100 * OGPU), (x, 500 * OGPU)):
        h.send(who, "stake", value=amount)
    for who in (v, w):
        h.send(who, "registerResources", 1, 40_960, 3, "https://gpu")
        h.send(who, "setRandaoTip", RANDAO_TIP)
        h.send(who, "setRoles", 3)
    h.send(v, "requestUnstake", 300 * OGPU)
    state = h.chain.execution.state_at(h.chain.head)
    return h, StateHost(state), Stake(h.chain.genesis.protocol)


def _record(host: StateHost, stake: Stake, who: bytes) -> tuple[int, int, int, int]:
    record = stake.stakeOf(host, who)
    return record.staked, record.locked, record.unbonding, record.roles


def _check_invariant(host: StateHost, stake: Stake, accounts: list[bytes]) -> None:
    records = [stake.stakeOf(host, who) for who in accounts]
    assert host.balance(STAKE) == sum(r.staked + r.unbonding for r in records)
    assert stake.totalStaked(host) == sum(r.staked for r in records)


def test_lock_pledges_only_free_stake_and_locked_stake_cannot_be_unstaked(staked, dev_accounts):
    """Rule: lock(who, amount) raises "Stake: insufficient free stake" beyond staked - locked and emits
    StakeLocked(account, amount, locked); requestUnstake cannot take locked stake; unlock releases at
    most what is locked (a slash may have consumed the pledge) and emits StakeUnlocked."""
    h, host, stake = staked
    v, x = dev_accounts[1].address, dev_accounts[3].address
    with pytest.raises(Revert) as failure:
        host.run(stake.lock, v, 1_200 * OGPU + 1)
    assert failure.value.reason == "Stake: insufficient free stake"
    assert host.logs == []
    host.run(stake.lock, v, 700 * OGPU)
    host.run(stake.lock, x, 500 * OGPU)
    assert host.events() == [
        ("StakeLocked", {"account": v, "amount": 700 * OGPU, "locked": 700 * OGPU}),
        ("StakeLocked", {"account": x, "amount": 500 * OGPU, "locked": 500 * OGPU}),
    ]
    assert stake.freeStake(host, v) == 500 * OGPU
    assert stake.freeStake(host, x) == 0
    with pytest.raises(Revert) as failure:
        host.run(stake.lock, x, 1)
    assert failure.value.reason == "Stake: insufficient free stake"

    # The external requestUnstake, through the dispatcher, as the locked account.
    host.caller = x
    with pytest.raises(Revert) as failure:
        host.run(stake.call, calldata("requestUnstake", 1))
    assert failure.value.reason == "Stake.requestUnstake: amount exceeds free stake"
    host.caller = v  # v keeps the validator role: 200 of its 500 free stake may go
    with pytest.raises(Revert) as failure:
        host.run(stake.call, calldata("requestUnstake", 500 * OGPU))
    assert failure.value.reason == "Stake.requestUnstake: stake would fall below the validator minimum; clear the role first"

    host.run(stake.unlock, x, 200 * OGPU)
    assert host.events() == [("StakeUnlocked", {"account": x, "amount": 200 * OGPU, "locked": 300 * OGPU})]
    host.caller = x
    host.run(stake.call, calldata("requestUnstake", 200 * OGPU))
    assert _record(host, stake, x) == (300 * OGPU, 300 * OGPU, 200 * OGPU, 0)
    host.events()
    host.run(stake.unlock, x, 10**30)  # clamps to what is locked
    assert host.events() == [("StakeUnlocked", {"account": x, "amount": 300 * OGPU, "locked": 0})]
    assert stake.freeStake(host, x) == 300 * OGPU
    _check_invariant(host, stake, [dev_accounts[i].address for i in (1, 2, 3)])


def test_slash_takes_staked_then_unbonding_rewards_burns_clamps_locked_and_drops_roles(staked, dev_accounts):
    """Rule: slash(who, amount, beneficiary, bps) takes up to amount from staked, then unbonding;
    bps/10000 of it goes to the beneficiary, the rest is burned (Stake's balance falls by all of it);
    locked is clamped to what stays staked; a role whose minimum is no longer met is removed, from the
    validator and provider sets too; StakeSlashed and RolesChanged report it."""
    h, host, stake = staked
    v, w, x = (dev_accounts[i].address for i in (1, 2, 3))
    reporter = b"\x5e" * 20
    everyone = [v, w, x]
    supply_before = sum(host.balance(a) for a in (*everyone, reporter, STAKE))
    stake_balance = host.balance(STAKE)
    assert stake_balance == 3_100 * OGPU
    host.run(stake.lock, v, 1_000 * OGPU)
    host.events()

    # v: 1200 staked (1000 locked), 300 unbonding; slash 1400 at 10 %.
    taken = host.run(stake.slash, v, 1_400 * OGPU, reporter, 1_000)
    assert taken == 1_400 * OGPU
    assert host.events() == [
        ("StakeSlashed", {"account": v, "amount": 1_400 * OGPU, "burned": 1_260 * OGPU, "rewarded": 140 * OGPU,
                          "beneficiary": reporter}),
        ("RolesChanged", {"account": v, "roles": 0}),
        ("ValidatorQueued", {"account": v, "status": ValidatorStatus.EXITING}),  # ejected at the next boundary
    ]
    assert _record(host, stake, v) == (0, 0, 100 * OGPU, 0)  # locked clamped to 0
    assert host.balance(reporter) == 140 * OGPU
    assert host.balance(STAKE) == stake_balance - 1_400 * OGPU
    assert stake.validators(host) == [v, w]
    assert stake.providers(host) == [w]
    _check_invariant(host, stake, everyone)

    # w: 1100 staked, 600 locked; slash 200 at 25 %: below the validator minimum, still a provider.
    host.run(stake.lock, w, 600 * OGPU)
    host.events()
    assert host.run(stake.slash, w, 200 * OGPU, reporter, 2_500) == 200 * OGPU
    assert host.events() == [
        ("StakeSlashed", {"account": w, "amount": 200 * OGPU, "burned": 150 * OGPU, "rewarded": 50 * OGPU,
                          "beneficiary": reporter}),
        ("RolesChanged", {"account": w, "roles": 2}),
        ("ValidatorQueued", {"account": w, "status": ValidatorStatus.EXITING}),
    ]
    assert _record(host, stake, w) == (900 * OGPU, 600 * OGPU, 0, 2)  # locked within staked: kept
    assert stake.validators(host) == [v, w]
    assert stake.providers(host) == [w]
    assert host.balance(reporter) == 190 * OGPU

    # x: 500 staked, 450 locked; slash 100 with no reward: all burned, locked clamped to 400.
    host.run(stake.lock, x, 450 * OGPU)
    host.events()
    assert host.run(stake.slash, x, 100 * OGPU, reporter, 0) == 100 * OGPU
    assert host.events() == [
        ("StakeSlashed", {"account": x, "amount": 100 * OGPU, "burned": 100 * OGPU, "rewarded": 0,
                          "beneficiary": reporter}),
    ]
    assert _record(host, stake, x) == (400 * OGPU, 400 * OGPU, 0, 0)
    assert host.balance(reporter) == 190 * OGPU

    # More than there is: everything left (unbonding included) is taken, nothing more.
    assert host.run(stake.slash, v, 10**30, reporter, 10_000) == 100 * OGPU
    assert host.events()[0] == (
        "StakeSlashed", {"account": v, "amount": 100 * OGPU, "burned": 0, "rewarded": 100 * OGPU, "beneficiary": reporter}
    )
    assert _record(host, stake, v) == (0, 0, 0, 0)
    assert host.balance(reporter) == 290 * OGPU
    assert stake.totalStaked(host) == 1_300 * OGPU
    _check_invariant(host, stake, everyone)

    # The next epoch boundary ejects both, churn or not.
    host.timestamp += 1
    host.run(stake.process_epoch)
    assert stake.validators(host) == []
    assert [stake.validatorOf(host, who).status for who in (v, w)] == [ValidatorStatus.NONE] * 2

    burned = 1_260 * OGPU + 150 * OGPU + 100 * OGPU
    assert sum(host.balance(a) for a in (*everyone, reporter, STAKE)) == supply_before - burned
    assert host.balance(STAKE) == stake_balance - 1_400 * OGPU - 200 * OGPU - 100 * OGPU - 100 * OGPU
