"""web3.py helpers shared by the integration tests that drive contracts over a node's RPC."""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_utils import keccak
from txfactory import sign_tx
from web3 import Web3

RECEIPT_TIMEOUT_S = 30
ERROR_SELECTOR = keccak(text="Error(string)")[:4]


def error_data(reason: str) -> bytes:
    """The revert data of `Error(reason)`, as Solidity, Vyper and the native contracts encode it."""
    return ERROR_SELECTOR + encode(["string"], [reason])


def checksum(address: bytes) -> str:
    return Web3.to_checksum_address(address)


def send(w3: Web3, key: Any, gas: int = 1_000_000, **fields: Any) -> Any:
    """Sign an EIP-1559 transaction locally (`txfactory.sign_tx` fields: to, value, data, fees) with the
    sender's pending nonce, send it raw and wait (polling, with a deadline) for its receipt."""
    nonce = w3.eth.get_transaction_count(checksum(key.address), "pending")
    tx_hash = w3.eth.send_raw_transaction(sign_tx(key, nonce, gas=gas, **fields).raw)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02)


def deploy(w3: Web3, key: Any, init_code: bytes, gas: int = 3_000_000) -> str:
    """Deploy `init_code`; returns the new contract's address."""
    receipt = send(w3, key, gas=gas, data=init_code)
    assert receipt["status"] == 1
    return receipt["contractAddress"]
