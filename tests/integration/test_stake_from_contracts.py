"""Stake (0x…1000) as contracts and web3.py see it, against a real `ogpu-node run --dev` process.

A Vyper contract (tests/contracts/StakeUser.vy) stakes and reads its stake through an interface (a
CALL to a function that returns nothing, so Vyper's EXTCODESIZE check must pass: Stake's code is
0xfe), and forwards calldata to Stake with DELEGATECALL and STATICCALL, which Stake must refuse for
state changes; a hand-assembled contract tries CALLCODE. web3.py decodes Stake's events from real
receipts with the ABI in contracts/Stake.json and reports Stake's revert reasons. Every transaction
is signed locally and sent with eth_sendRawTransaction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from contracts.compile import compile_contract
from contracts.web3tx import checksum, deploy, error_data, send
from eth_abi import decode, encode
from txfactory import CHAIN_ID
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from ogpu_node.config import DEV_GENESIS
from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.types.protocol import BPS, Role
from ogpu_node.types.signing import BlockProposal, SignedProposal

ROOT = Path(__file__).resolve().parents[2]
STAKE_ABI = json.loads((ABI_DIR / "Stake.json").read_text())
SLASHING_ABI = json.loads((ABI_DIR / "Slashing.json").read_text())
STAKE, SLASHING = checksum(addresses.STAKE), checksum(addresses.SLASHING)
OGPU = 10**18
MIN_VALIDATOR = 1_000 * OGPU
DELEGATE_REFUSED = "Stake: only CALL and STATICCALL may reach a native contract"






def stake_record(stake: Any, who: str) -> tuple[int, int, int, int, int]:
    return tuple(stake.functions.stakeOf(who).call())


@pytest.fixture
def w3(dev_node) -> Web3:
    return Web3(Web3.HTTPProvider(dev_node.http_url, request_kwargs={"timeout": 30}))


@pytest.fixture
def stake(w3) -> Any:
    return w3.eth.contract(address=STAKE, abi=STAKE_ABI)


@pytest.fixture
def user(w3, dev_accounts) -> Any:
    compiled = compile_contract("StakeUser")
    address = deploy(w3, dev_accounts[1], compiled.bytecode)
    return w3.eth.contract(address=address, abi=compiled.abi)


def call_user(w3: Web3, key: Any, user: Any, function: str, *args: Any, value: int = 0, gas: int = 500_000) -> Any:
    return send(w3, key, gas=gas, to=user.address, value=value, data=bytes.fromhex(user.encode_abi(function, args=list(args))[2:]))


# Roles go into ABI arguments as `Role.X.value`: web3's encoder rebuilds an int subclass from a map, which IntFlag refuses.
def stake_call(stake: Any, function: str, *args: Any) -> bytes:
    return bytes.fromhex(stake.encode_abi(function, args=list(args))[2:])


# -- CALL and STATICCALL through an interface --


def test_contract_stakes_through_the_interface_and_reads_its_stake_by_staticcall(w3, stake, user, dev_accounts):
    """Rule: a contract reaches Stake with a plain CALL (msg.sender = the contract) even for a function
    that returns nothing, because Stake's code (0xfe) passes the caller's EXTCODESIZE check; its views
    answer a STATICCALL."""
    key = dev_accounts[1]
    assert w3.eth.get_code(STAKE) == b"\xfe"
    receipt = call_user(w3, key, user, "stake", value=MIN_VALIDATOR)
    assert receipt["status"] == 1
    (staked,) = stake.events.Staked().process_receipt(receipt)
    assert staked["address"] == STAKE
    assert dict(staked["args"]) == {"account": user.address, "amount": MIN_VALIDATOR, "total": MIN_VALIDATOR}
    assert tuple(user.functions.my_stake().call()) == (MIN_VALIDATOR, 0, 0, 0, 0)
    assert stake_record(stake, user.address) == (MIN_VALIDATOR, 0, 0, 0, 0)
    assert stake_record(stake, checksum(key.address)) == (0, 0, 0, 0, 0)
    assert user.functions.total_staked().call() == MIN_VALIDATOR
    assert w3.eth.get_balance(STAKE) == MIN_VALIDATOR
    assert w3.eth.get_balance(user.address) == 0

    # Without Stake's code byte the same call fails in the caller, before reaching Stake.
    request = {"from": checksum(key.address), "to": user.address, "value": hex(OGPU),
               "data": user.encode_abi("stake", args=[])}
    response = w3.provider.make_request("eth_call", [request, "latest", {STAKE: {"code": "0x"}}])
    assert response["error"]["message"] == "execution reverted"
    assert w3.provider.make_request("eth_call", [request, "latest"])["result"] == "0x"

    call_user(w3, key, user, "set_randao_tip", b"\x07" * 32)
    roles = call_user(w3, key, user, "set_roles", Role.VALIDATOR.value)
    (changed,) = stake.events.RolesChanged().process_receipt(roles)
    assert dict(changed["args"]) == {"account": user.address, "roles": Role.VALIDATOR}
    assert stake.functions.validators().call() == []  # queued: the next block is its epoch boundary
    send(w3, key, gas=21_000, to=key.address)
    assert stake.functions.validators().call() == [user.address]
    assert tuple(user.functions.my_stake().call()) == (MIN_VALIDATOR, 0, 0, 0, Role.VALIDATOR)


def test_delegatecall_to_stake_is_refused_and_changes_nothing(w3, stake, user, dev_accounts):
    """Rule: DELEGATECALL would run Stake with the caller's msg.sender and msg.value; Stake reverts
    Error("Stake: only CALL and STATICCALL may reach a native contract") and nothing changes, neither
    for the EOA behind the call nor for the forwarding contract."""
    key = dev_accounts[2]
    eoa = checksum(key.address)
    send(w3, key, to=STAKE, value=MIN_VALIDATOR, data=stake_call(stake, "stake"))
    call_user(w3, key, user, "stake", value=MIN_VALIDATOR)
    before = (stake_record(stake, eoa), stake_record(stake, user.address), w3.eth.get_balance(STAKE))
    assert before == ((MIN_VALIDATOR, 0, 0, 0, 0), (MIN_VALIDATOR, 0, 0, 0, 0), 2 * MIN_VALIDATOR)

    for data, value in ((stake_call(stake, "setRoles", Role.VALIDATOR.value), 0), (stake_call(stake, "stake"), 5 * OGPU)):
        assert user.functions.delegate(data).call({"from": eoa, "value": value}) == [False, error_data(DELEGATE_REFUSED)]
        receipt = call_user(w3, key, user, "delegate", data, value=value)
        assert receipt["status"] == 1
        (forwarded,) = user.events.Forwarded().process_receipt(receipt)
        assert (forwarded["args"]["success"], forwarded["args"]["response"]) == (False, error_data(DELEGATE_REFUSED))
        assert [entry["address"] for entry in receipt["logs"]] == [user.address]  # no Stake event
    assert (stake_record(stake, eoa), stake_record(stake, user.address), w3.eth.get_balance(STAKE)) == before
    assert stake.functions.validators().call() == []
    assert w3.eth.get_balance(user.address) == 5 * OGPU  # the forwarded value stayed with the contract

    # With revert_on_failure the outer call reverts with Stake's reason.
    with pytest.raises(ContractLogicError) as failure:
        user.functions.delegate_or_revert(stake_call(stake, "setRoles", Role.VALIDATOR.value)).call({"from": eoa})
    assert failure.value.message == f"execution reverted: {DELEGATE_REFUSED}"
    assert failure.value.data == "0x" + error_data(DELEGATE_REFUSED).hex()
    reverted = call_user(w3, key, user, "delegate_or_revert", stake_call(stake, "setRoles", Role.VALIDATOR.value), gas=200_000)
    assert reverted["status"] == 0 and reverted["logs"] == []
    assert (stake_record(stake, eoa), stake_record(stake, user.address), w3.eth.get_balance(STAKE)) == before


def test_staticcall_to_a_state_changing_function_is_refused(w3, stake, user, dev_accounts):
    """Rule: under STATICCALL a state-changing Stake function reverts
    Error("Stake.<fn>: state change in a static call"); a view answers."""
    key = dev_accounts[3]
    eoa = checksum(key.address)
    call_user(w3, key, user, "stake", value=MIN_VALIDATOR)
    before = stake_record(stake, user.address)
    refused = error_data("Stake.setRoles: state change in a static call")
    assert user.functions.static(stake_call(stake, "setRoles", Role.VALIDATOR.value)).call({"from": eoa}) == [False, refused]
    receipt = call_user(w3, key, user, "static", stake_call(stake, "setRoles", Role.VALIDATOR.value))
    (forwarded,) = user.events.Forwarded().process_receipt(receipt)
    assert (forwarded["args"]["success"], forwarded["args"]["response"]) == (False, refused)
    assert [entry["address"] for entry in receipt["logs"]] == [user.address]

    unstake = error_data("Stake.requestUnstake: state change in a static call")
    assert user.functions.static(stake_call(stake, "requestUnstake", 1)).call({"from": eoa}) == [False, unstake]
    success, response = user.functions.static(stake_call(stake, "stakeOf", user.address)).call({"from": eoa})
    assert success is True
    assert decode(["uint256", "uint256", "uint256", "uint64", "uint8"], response) == before

    with pytest.raises(ContractLogicError) as failure:
        user.functions.static_or_revert(stake_call(stake, "setRoles", Role.VALIDATOR.value)).call({"from": eoa})
    assert failure.value.message == "execution reverted: Stake.setRoles: state change in a static call"
    assert stake_record(stake, user.address) == before == (MIN_VALIDATOR, 0, 0, 0, 0)
    assert stake.functions.validators().call() == []


def _callcode_contract() -> bytes:
    """Init code of a contract whose runtime CALLCODEs Stake with its calldata and callvalue and returns
    the success word followed by the return data:

        CALLDATACOPY(0, 0, CALLDATASIZE)
        ok = CALLCODE(GAS, 0x1000, CALLVALUE, 0, CALLDATASIZE, 0, 0)
        MSTORE(0, ok); RETURNDATACOPY(32, 0, RETURNDATASIZE); RETURN(0, 32 + RETURNDATASIZE)
    """
    runtime = bytes.fromhex(
        "36" "6000" "6000" "37"  # CALLDATASIZE PUSH1 0 PUSH1 0 CALLDATACOPY
        "6000" "6000" "36" "6000" "34" "611000" "5a" "f2"  # retSize retOffset argsSize argsOffset value addr gas CALLCODE
        "6000" "52"  # PUSH1 0 MSTORE
        "3d" "6000" "6020" "3e"  # RETURNDATASIZE PUSH1 0 PUSH1 32 RETURNDATACOPY
        "3d" "6020" "01" "6000" "f3"  # RETURNDATASIZE PUSH1 32 ADD PUSH1 0 RETURN
    )
    # PUSH1 len DUP1 PUSH1 11 PUSH1 0 CODECOPY PUSH1 0 RETURN, then the runtime.
    init = bytes([0x60, len(runtime), 0x80, 0x60, 11, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3])
    assert len(init) == 11
    return init + runtime


def test_callcode_to_stake_is_refused_and_stakes_nothing(w3, stake, dev_accounts):
    """Rule: CALLCODE (Stake's code run with the caller's storage and value) reverts with Stake's
    DELEGATECALL/CALLCODE reason; the caller sees success 0 and nothing is staked for anyone."""
    key = dev_accounts[4]
    eoa = checksum(key.address)
    caller = deploy(w3, key, _callcode_contract())
    total, stake_balance = stake.functions.totalStaked().call(), w3.eth.get_balance(STAKE)
    data = stake_call(stake, "stake")
    out = w3.eth.call({"from": eoa, "to": caller, "value": 7 * OGPU, "data": data})
    assert out[:32] == (0).to_bytes(32, "big")
    assert out[32:] == error_data(DELEGATE_REFUSED)

    receipt = send(w3, key, to=caller, value=7 * OGPU, data=data)
    assert receipt["status"] == 1
    assert receipt["logs"] == []
    assert stake_record(stake, caller) == (0, 0, 0, 0, 0)
    assert stake_record(stake, eoa) == (0, 0, 0, 0, 0)
    assert stake.functions.totalStaked().call() == total
    assert w3.eth.get_balance(STAKE) == stake_balance
    assert w3.eth.get_balance(caller) == 7 * OGPU
    # A plain CALL would have staked: the contract's code is not the reason it failed.
    assert w3.eth.call({"from": eoa, "to": STAKE, "value": 7 * OGPU, "data": data}) == b""


# -- web3.py and the JSON ABI --


@pytest.fixture
def w3_no_delay(node_factory, tmp_path) -> Web3:
    """A dev node whose genesis has unbondingDelay 0, so a withdrawal can follow its request."""
    genesis = json.loads((DEV_GENESIS).read_text())
    genesis["config"]["ogpu"]["unbondingDelay"] = 0
    path = tmp_path / "genesis-no-delay.json"
    path.write_text(json.dumps(genesis))
    node = node_factory("--genesis", str(path))
    return Web3(Web3.HTTPProvider(node.http_url, request_kwargs={"timeout": 30}))


def test_web3_decodes_every_stake_event_from_real_receipts(w3_no_delay, dev_accounts):
    """Rule: Stake's logs follow contracts/Stake.json: web3.py's process_receipt decodes Staked,
    ResourcesRegistered, RolesChanged, UnstakeRequested and Withdrawn from real receipts with the
    documented arguments, and the balances move by exactly the amounts they report."""
    w3 = w3_no_delay
    stake = w3.eth.contract(address=STAKE, abi=STAKE_ABI)
    key = dev_accounts[5]
    me = checksum(key.address)
    assert stake.functions.params().call() == [MIN_VALIDATOR, 100 * OGPU, 0]
    # eth_estimateGas is enough for the transaction (a cold first stake: 68 901, DESIGN.md gas model).
    estimate = stake.functions.stake().estimate_gas({"from": me, "value": 250 * OGPU})
    assert 68_901 <= estimate <= 68_901 * 1.015
    start = w3.eth.get_balance(me)
    receipts = []

    def tx(function: str, *args: Any, value: int = 0) -> Any:
        receipt = send(w3, key, to=STAKE, value=value, data=stake_call(stake, function, *args))
        assert receipt["status"] == 1
        assert all(entry["address"] == STAKE for entry in receipt["logs"])
        receipts.append(receipt)
        return receipt

    def only(event: str, receipt: Any) -> dict[str, Any]:
        (decoded,) = getattr(stake.events, event)().process_receipt(receipt)
        assert decoded["event"] == event
        assert decoded["transactionHash"] == receipt["transactionHash"]
        return dict(decoded["args"])

    first = tx("stake", value=250 * OGPU)
    assert first["gasUsed"] == 68_901
    assert only("Staked", first) == {"account": me, "amount": 250 * OGPU, "total": 250 * OGPU}
    assert only("ResourcesRegistered", tx("registerResources", 1, 81_920, 12, "https://gpu.example:8443")) == {
        "account": me, "deviceKind": 1, "memoryMiB": 81_920, "throughputScore": 12,
        "endpoint": "https://gpu.example:8443",
    }
    assert only("RolesChanged", tx("setRoles", Role.PROVIDER.value)) == {"account": me, "roles": Role.PROVIDER}
    assert stake.functions.providers().call() == [me]
    assert only("RolesChanged", tx("setRoles", 0)) == {"account": me, "roles": 0}
    request = tx("requestUnstake", 100 * OGPU)
    released_at = w3.eth.get_block(request["blockNumber"])["timestamp"]  # + unbondingDelay 0
    assert only("UnstakeRequested", request) == {"account": me, "amount": 100 * OGPU, "releaseTime": released_at}
    assert stake_record(stake, me) == (150 * OGPU, 0, 100 * OGPU, released_at, 0)
    assert w3.eth.call({"from": me, "to": STAKE, "data": stake_call(stake, "withdraw")}) == encode(["uint256"], [100 * OGPU])
    assert only("Withdrawn", tx("withdraw")) == {"account": me, "amount": 100 * OGPU}
    assert stake_record(stake, me) == (150 * OGPU, 0, 0, 0, 0)
    assert tuple(stake.functions.resourcesOf(me).call()) == (1, 81_920, 12, "https://gpu.example:8443")
    assert stake.functions.totalStaked().call() == 150 * OGPU
    assert w3.eth.get_balance(STAKE) == 150 * OGPU
    fees = sum(r["gasUsed"] * r["effectiveGasPrice"] for r in receipts)
    assert w3.eth.get_balance(me) == start - 150 * OGPU - fees
    # No receipt carries a log process_receipt would miss: one Stake event per transaction.
    assert [len(r["logs"]) for r in receipts] == [1] * 6


def test_web3_decodes_stake_slashed_from_a_slashing_report_receipt(w3, stake, dev_accounts):
    """Rule: when Slashing punishes a double proposal through Stake's internal slash, the receipt
    carries Stake's StakeSlashed(account, amount, burned, rewarded, beneficiary) and RolesChanged,
    decoded by web3.py from contracts/Stake.json; the reporter's share is paid, the rest burned."""
    validator, reporter = dev_accounts[7], dev_accounts[8]
    v, r = checksum(validator.address), checksum(reporter.address)
    ogpu = json.loads((DEV_GENESIS).read_text())["config"]["ogpu"]
    penalty_bps, share_bps = ogpu["consensusPenaltyBps"], ogpu["reporterShareBps"]
    send(w3, validator, to=STAKE, value=2 * MIN_VALIDATOR, data=stake_call(stake, "stake"))
    send(w3, validator, to=STAKE, data=stake_call(stake, "setRandaoTip", b"\x07" * 32))
    send(w3, validator, to=STAKE, data=stake_call(stake, "setRoles", Role.VALIDATOR.value))
    send(w3, validator, gas=21_000, to=validator.address)  # the next block is the epoch boundary under --dev
    assert stake.functions.validators().call() == [v]

    genesis_hash = bytes(w3.eth.get_block(0)["hash"])

    def signed_proposal(block_hash: bytes) -> bytes:
        message = BlockProposal(5, block_hash)
        return SignedProposal(message, validator.sign_hash(message.signing_root(CHAIN_ID, genesis_hash))).encode()

    slashing = w3.eth.contract(address=SLASHING, abi=SLASHING_ABI)
    data = bytes.fromhex(
        slashing.encode_abi("reportDoubleProposal", args=[signed_proposal(b"\x01" * 32), signed_proposal(b"\x02" * 32)])[2:]
    )
    reporter_before, stake_before = w3.eth.get_balance(r), w3.eth.get_balance(STAKE)
    total = stake.functions.totalStaked().call()
    receipt = send(w3, reporter, to=SLASHING, data=data)
    assert receipt["status"] == 1
    # The larger of the lone share and the correlation penalty (3 × its stake against the total).
    exposure = 2 * MIN_VALIDATOR
    taken = max(exposure * penalty_bps // BPS, exposure * min(3 * exposure, total) // total)
    rewarded = taken * share_bps // BPS
    # The receipt also holds RolesChanged and Slashing's ConsensusOffence: each decoder skips the others.
    (slashed,) = stake.events.StakeSlashed().process_receipt(receipt, errors=DISCARD)
    assert slashed["address"] == STAKE
    assert dict(slashed["args"]) == {
        "account": v, "amount": taken, "burned": taken - rewarded, "rewarded": rewarded, "beneficiary": SLASHING,
    }
    (ejected,) = stake.events.RolesChanged().process_receipt(receipt, errors=DISCARD)
    assert (ejected["address"], dict(ejected["args"])) == (STAKE, {"account": v, "roles": 0})
    assert stake_record(stake, v) == (2 * MIN_VALIDATOR - taken, 0, 0, 0, 0)
    assert stake.functions.validators().call() == [v]  # ejected at the next epoch boundary
    send(w3, validator, gas=21_000, to=validator.address)
    assert stake.functions.validators().call() == []
    assert stake.functions.totalStaked().call() == 2 * MIN_VALIDATOR - taken
    assert w3.eth.get_balance(STAKE) == stake_before - taken
    # Slashing passes the reward on: half to the reporter, half to the block's proposer.
    assert w3.eth.get_balance(r) == (reporter_before + rewarded - rewarded // 2
                                     - receipt["gasUsed"] * receipt["effectiveGasPrice"])


def test_reverting_stake_calls_raise_contract_logic_error_with_the_reason(w3, stake, dev_accounts):
    """Rule: a Stake call that breaks a rule fails in eth_call and eth_estimateGas with code 3 and
    Error(reason) data, which web3.py raises as ContractLogicError("execution reverted: <reason>")."""
    me = checksum(dev_accounts[6].address)
    cases = [
        (stake.functions.requestUnstake(1), {}, "Stake.requestUnstake: amount exceeds free stake"),
        (stake.functions.stake(), {}, "Stake.stake: no value sent"),
        (stake.functions.withdraw(), {}, "Stake.withdraw: nothing to withdraw"),
        (stake.functions.setRoles(8), {}, "Stake.setRoles: unknown role bits"),
        (stake.functions.registerResources(9, 1, 1, ""), {}, "Stake.registerResources: unknown device kind"),
        (stake.functions.totalStaked(), {"value": 1}, "Stake.totalStaked: function is not payable"),
    ]
    for function, extra, reason in cases:
        with pytest.raises(ContractLogicError) as failure:
            function.call({"from": me, **extra})
        assert failure.value.message == f"execution reverted: {reason}"
        assert failure.value.data == "0x" + error_data(reason).hex()
        with pytest.raises(ContractLogicError) as failure:
            function.estimate_gas({"from": me, **extra})
        assert failure.value.message == f"execution reverted: {reason}"
    response = w3.provider.make_request(
        "eth_call", [{"from": me, "to": STAKE, "data": "0x" + stake_call(stake, "setRoles", Role.VALIDATOR.value).hex()}, "latest"]
    )
    assert response["error"] == {
        "code": 3, "message": "execution reverted: Stake.setRoles: stake below the validator minimum",
        "data": "0x" + error_data("Stake.setRoles: stake below the validator minimum").hex(),
    }
