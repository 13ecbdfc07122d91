"""eth_call and eth_estimateGas over real HTTP on `ogpu-node run --dev`: reverts as geth reports them
(code 3 with the reason and raw data, or -32000 without data), state overrides, historical state,
and estimates that are exact for transfers and sufficient for contract calls.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import vyper
from contracts.web3tx import error_data as revert_data
from contracts.web3tx import send
from web3 import Web3
from web3.exceptions import ContractLogicError

CONTRACT = Path(__file__).resolve().parents[1] / "unit" / "contracts_revert" / "Reverter.vy"
GWEI = 10**9
OGPU = 10**18
PANIC_SELECTOR = bytes.fromhex("4e487b71")
EMPTY = Web3.to_checksum_address("0x" + "ab" * 20)  # never has code or balance


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    return vyper.compile_code(CONTRACT.read_text(), output_formats=["abi", "bytecode", "bytecode_runtime"])


def rpc(url: str, method: str, *params: Any) -> dict[str, Any]:
    """The whole JSON-RPC response object (result or error)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def result(url: str, method: str, *params: Any) -> Any:
    response = rpc(url, method, *params)
    assert "error" not in response, response
    return response["result"]


def error_data(reason: str) -> str:
    return "0x" + revert_data(reason).hex()


class Deployed:
    """Reverter.vy deployed on a fresh dev node by dev account 0."""

    def __init__(self, node: Any, accounts: list[Any], compiled: dict[str, Any]) -> None:
        self.url = node.http_url
        self.w3 = Web3(Web3.HTTPProvider(self.url))
        self.accounts = accounts
        self.compiled = compiled
        self.sender = Web3.to_checksum_address(accounts[0].address)
        receipt = self.transact(data=bytes.fromhex(compiled["bytecode"][2:]), gas=3_000_000)
        assert receipt["status"] == 1
        self.address = receipt["contractAddress"]
        self.contract = self.w3.eth.contract(self.address, abi=compiled["abi"])

    def calldata(self, function: str, *args: Any) -> str:
        return self.contract.encode_abi(function, list(args))

    def transact(self, *, to: str | None = None, data: bytes | str = b"", gas: int, key: int = 0) -> Any:
        return send(self.w3, self.accounts[key], gas=gas, to=to, data=data)

    def call(self, function: str, *args: Any, block: Any = "latest", **extra: Any) -> dict[str, Any]:
        return rpc(self.url, "eth_call", {"from": self.sender, "to": self.address,
                                         "input": self.calldata(function, *args)}, block, *extra.values())

    def estimate(self, function: str, *args: Any) -> dict[str, Any]:
        return rpc(self.url, "eth_estimateGas", {"from": self.sender, "to": self.address,
                                                 "input": self.calldata(function, *args)})


@pytest.fixture
def deployed(dev_node, dev_accounts, compiled) -> Deployed:
    return Deployed(dev_node, dev_accounts, compiled)


def word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


# -- reverts --


def test_revert_with_reason_is_code_3_with_the_reason_and_raw_data(deployed):
    for response in (deployed.call("fail_with_reason"), deployed.estimate("fail_with_reason")):
        assert response["error"] == {
            "code": 3, "message": "execution reverted: always fails", "data": error_data("always fails"),
        }
    for response in (deployed.call("set_value", 100), deployed.estimate("set_value", 100)):
        assert response["error"] == {
            "code": 3, "message": "execution reverted: value too large", "data": error_data("value too large"),
        }


def test_revert_without_data_is_minus_32000_execution_reverted(deployed):
    for function, args in (("fail_without_data", ()), ("require_zero", (1,))):
        for response in (deployed.call(function, *args), deployed.estimate(function, *args)):
            assert response["error"] == {"code": -32000, "message": "execution reverted"}
    assert deployed.call("require_zero", 0)["result"] == word(0)


def test_panic_and_custom_error_reverts_keep_their_data(deployed):
    # Runtime code that reverts with Panic(0x11), and one that reverts with a bare custom selector.
    panic_code = "0x7f" + PANIC_SELECTOR.hex() + "00" * 28 + "600052" + "6011600452" + "60246000fd"
    custom_code = "0x63deadbeef60e01b60005260046000fd"
    overrides = {EMPTY: {"code": panic_code}}
    response = rpc(deployed.url, "eth_call", {"to": EMPTY}, "latest", overrides)
    assert response["error"] == {
        "code": 3, "message": "execution reverted: arithmetic underflow or overflow",
        "data": "0x" + PANIC_SELECTOR.hex() + (0x11).to_bytes(32, "big").hex(),
    }
    response = rpc(deployed.url, "eth_call", {"to": EMPTY}, "latest", {EMPTY: {"code": custom_code}})
    assert response["error"] == {"code": 3, "message": "execution reverted", "data": "0xdeadbeef"}


def test_web3_raises_contract_logic_error_with_the_reason(deployed):
    with pytest.raises(ContractLogicError) as info:
        deployed.contract.functions.fail_with_reason().call()
    assert info.value.message == "execution reverted: always fails"
    assert info.value.data == error_data("always fails")
    with pytest.raises(ContractLogicError) as info:
        deployed.contract.functions.set_value(100).estimate_gas({"from": deployed.sender})
    assert info.value.message == "execution reverted: value too large"


# -- state overrides and history --


def test_state_overrides_apply_to_the_call_only(deployed):
    url, contract = deployed.url, deployed.address
    # balance
    balance_call = {"to": contract, "input": deployed.calldata("balance_of", EMPTY)}
    assert result(url, "eth_call", balance_call, "latest") == word(0)
    assert result(url, "eth_call", balance_call, "latest", {EMPTY: {"balance": hex(5 * OGPU)}}) == word(5 * OGPU)
    # a value transfer needs the balance; the override provides it
    transfer = {"from": EMPTY, "to": deployed.sender, "value": hex(OGPU)}
    assert rpc(url, "eth_call", transfer, "latest")["error"] == {
        "code": -32000,
        "message": f"insufficient funds for gas * price + value: address {EMPTY} "
                   f"have 0 want {OGPU}",
    }
    assert result(url, "eth_call", transfer, "latest", {EMPTY: {"balance": hex(2 * OGPU)}}) == "0x"
    # code + stateDiff: the contract's runtime at an empty address, its `value` slot (0) preset
    value_call = {"to": EMPTY, "input": deployed.calldata("value")}
    code = deployed.compiled["bytecode_runtime"]
    assert result(url, "eth_call", value_call, "latest") == "0x"
    assert result(url, "eth_call", value_call, "latest", {EMPTY: {"code": code, "stateDiff": {word(0): word(42)}}}) \
        == word(42)
    # stateDiff on the deployed contract changes one slot; `state` replaces the whole storage
    assert deployed.transact(to=contract, data=deployed.calldata("set_value", 9), gas=100_000)["status"] == 1
    slot_call = {"to": contract, "input": deployed.calldata("value")}
    assert result(url, "eth_call", slot_call, "latest", {contract: {"stateDiff": {word(0): word(77)}}}) == word(77)
    assert result(url, "eth_call", slot_call, "latest", {contract: {"state": {word(1): word(1)}}}) == word(0)
    # nothing persisted
    assert result(url, "eth_call", slot_call, "latest") == word(9)
    assert result(url, "eth_getCode", EMPTY, "latest") == "0x"
    assert result(url, "eth_getBalance", EMPTY, "latest") == "0x0"


def test_call_at_an_older_block_sees_that_blocks_state(deployed):
    contract = deployed.address
    first = deployed.transact(to=contract, data=deployed.calldata("set_value", 5), gas=100_000)
    second = deployed.transact(to=contract, data=deployed.calldata("set_value", 7), gas=100_000)
    assert second["blockNumber"] > first["blockNumber"]
    assert deployed.call("value", block=hex(first["blockNumber"]))["result"] == word(5)
    assert deployed.call("value", block=hex(second["blockNumber"]))["result"] == word(7)
    assert deployed.call("value")["result"] == word(7)
    assert deployed.call("value", block={"blockHash": first["blockHash"].to_0x_hex()})["result"] == word(5)
    # before deployment there is no code: the call returns nothing
    assert deployed.call("value", block="0x0")["result"] == "0x"
    assert rpc(deployed.url, "eth_call", {"to": contract}, "0xffff")["error"] == {
        "code": -32000, "message": "header not found",
    }


# -- estimates --


def test_estimate_of_a_plain_transfer_is_exactly_21000(deployed):
    for fields in (
        {"from": deployed.sender, "to": EMPTY, "value": hex(OGPU)},
        {"from": deployed.sender, "to": EMPTY, "value": "0x1", "maxFeePerGas": hex(10 * GWEI),
         "maxPriorityFeePerGas": hex(GWEI)},
        {"to": EMPTY},
    ):
        assert result(deployed.url, "eth_estimateGas", fields) == hex(21_000)


def test_estimate_reports_unaffordable_transfers(deployed):
    fields = {"from": EMPTY, "to": deployed.sender, "value": "0x1", "maxFeePerGas": hex(10 * GWEI)}
    assert rpc(deployed.url, "eth_estimateGas", fields)["error"] == {
        "code": -32000, "message": "insufficient funds for transfer",
    }


def test_sending_with_exactly_the_estimate_succeeds(deployed):
    contract = deployed.address
    # a second Reverter, called through `forward`
    receipt = deployed.transact(data=bytes.fromhex(deployed.compiled["bytecode"][2:]), gas=3_000_000)
    target = receipt["contractAddress"]
    cases = [  # (function, args, whether the estimate is the gas used exactly)
        ("set_value", (5,), True),  # zero -> non-zero store
        ("set_value", (0,), False),  # non-zero -> zero: a refund the estimate must not count on
        ("fill", (40,), True),  # 40 fresh slots
        ("forward", (target, 3), False),  # a nested call that needs its 63/64 share
    ]
    for function, args, exact in cases:
        data = deployed.calldata(function, *args)
        estimate = int(result(deployed.url, "eth_estimateGas",
                              {"from": deployed.sender, "to": contract, "input": data}), 16)
        receipt = deployed.transact(to=contract, data=data, gas=estimate)
        assert receipt["status"] == 1, (function, estimate)
        assert receipt["gasUsed"] == estimate if exact else receipt["gasUsed"] < estimate
    assert deployed.call("value")["result"] == word(0)
    assert rpc(deployed.url, "eth_call", {"to": target, "input": deployed.calldata("value")}, "latest")["result"] \
        == word(3)


def test_pre_execution_failures_use_geths_words(deployed):
    url, sender = deployed.url, deployed.sender
    base_fee = int(result(url, "eth_getBlockByNumber", "pending", False)["baseFeePerGas"], 16)
    for method in ("eth_call", "eth_estimateGas"):
        assert rpc(url, method, {"from": sender, "to": EMPTY, "gas": hex(20_000)}, "latest")["error"] == {
            "code": -32000, "message": "intrinsic gas too low: have 20000, want 21000",
        }
    assert rpc(url, "eth_call", {"from": sender, "to": EMPTY, "gasPrice": hex(base_fee - 1)}, "latest")["error"] == {
        "code": -32000,
        "message": f"max fee per gas less than block base fee: address {sender}, maxFeePerGas: {base_fee - 1}, "
                   f"baseFee: {base_fee}",
    }
    assert result(url, "eth_call", {"from": sender, "to": EMPTY, "gasPrice": hex(base_fee)}, "latest") == "0x"
    assert rpc(url, "eth_call", {"from": sender, "to": EMPTY, "maxFeePerGas": hex(GWEI),
                                 "maxPriorityFeePerGas": hex(2 * GWEI)}, "latest")["error"] == {
        "code": -32000,
        "message": f"max priority fee per gas higher than max fee per gas: address {sender}, "
                   f"maxPriorityFeePerGas: {2 * GWEI}, maxFeePerGas: {GWEI}",
    }
    # calldata under the EIP-7623 floor: 100 non-zero bytes need 21000 + 100 * 4 * 10 = 25000
    data = "0x" + "01" * 100
    assert rpc(url, "eth_call", {"to": EMPTY, "input": data, "gas": hex(24_999)}, "latest")["error"] == {
        "code": -32000, "message": "insufficient gas for floor data gas cost: have 24999, want 25000",
    }
    assert result(url, "eth_estimateGas", {"to": EMPTY, "input": data}) == hex(25_000)
