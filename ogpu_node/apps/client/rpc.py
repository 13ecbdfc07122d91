"""JSON-RPC to one node (web3.py): the native contracts' handles, calls with typed errors, and
transactions signed locally with the client's key (the node holds no unlocked keys)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3

from ogpu_node.apps.client.errors import RECEIPT_TIMEOUT_S, KeyRequired, TransactionFailed, translate
from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.crypto import Keypair
from ogpu_node.crypto.blob_auth import sign_upload

T = TypeVar("T")

STAKE_ADDRESS = to_checksum_address(addresses.STAKE)
TASK_ADDRESS = to_checksum_address(addresses.TASK)
BID_ADDRESS = to_checksum_address(addresses.BID)
SLASHING_ADDRESS = to_checksum_address(addresses.SLASHING)


def contract_abi(name: str) -> list[dict[str, Any]]:
    """The JSON ABI of native contract ``name`` (`Task`, `Stake`, `Bid`, `Slashing`), as web3 takes it."""
    raw = json.loads((ABI_DIR / f"{name}.json").read_text())
    return raw["abi"] if isinstance(raw, dict) else raw


class Rpc:
    """One node at ``rpc_url``; ``private_key`` is needed only to send transactions."""

    def __init__(self, rpc_url: str, private_key: bytes | None = None, *, timeout: float = 30.0) -> None:
        self.rpc_url = rpc_url.rstrip("/")
        self.timeout = timeout
        self.w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": timeout}))
        self.account = Account.from_key(private_key) if private_key is not None else None
        self.task = self.w3.eth.contract(address=TASK_ADDRESS, abi=contract_abi("Task"))
        self.bid = self.w3.eth.contract(address=BID_ADDRESS, abi=contract_abi("Bid"))
        self.stake = self.w3.eth.contract(address=STAKE_ADDRESS, abi=contract_abi("Stake"))
        self._nonce_lock = threading.Lock()
        self._chain_id: int | None = None

    def guard(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn``; transport and node failures become typed ClientErrors naming ``what``."""
        return translate(what, self.rpc_url, fn, *args, **kwargs)

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        """A contract view's raw result (``fn`` a bound contract function: ``task.functions.taskCount()``)."""
        return self.guard(what, fn.call, *args)

    def address(self) -> str:
        """The checksummed address of the client's key."""
        if self.account is None:
            raise KeyRequired("a key is needed to send transactions")
        return self.account.address

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.guard("eth_chainId", lambda: self.w3.eth.chain_id)
        return self._chain_id

    def sign_blob_upload(self, blob_hash: bytes, size: int) -> str:
        """The `Authorization` header that admits this blob's upload, signed by the client's key."""
        if self.account is None:
            raise KeyRequired("a key is needed to upload blobs (the node charges uploads to a funded account)")
        return sign_upload(Keypair.from_private_key(bytes(self.account.key)), self.chain_id(), blob_hash, size)

    def head(self) -> int:
        return self.guard("eth_blockNumber", lambda: self.w3.eth.block_number)

    def get_logs(self, what: str, query: dict[str, Any]) -> list[Any]:
        return self.guard(what, self.w3.eth.get_logs, query)

    def send(self, what: str, call: Any, value: int = 0, min_gas: int = 0) -> Any:
        """Sign ``call`` locally, send it, wait for its receipt; Reverted if its estimate reverts,
        TransactionFailed if it is mined failing. ``min_gas`` is a floor on the gas limit for calls whose
        cost the estimate cannot foresee. Safe from several threads: nonces are taken under a lock,
        receipts awaited outside it."""
        sender = self.address()
        account = self.account
        assert account is not None

        def submit() -> bytes:
            params = {"from": sender, "value": value}
            # Headroom over the estimate: transactions landing in the same block (another bid on the
            # same task) can make this one touch fresh storage and cost more than estimated alone.
            gas = call.estimate_gas(params)
            tx = call.build_transaction({
                **params, "gas": max(min_gas, gas * 5 // 4 + 20_000), "chainId": self.chain_id(),
                "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
            })
            return self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)

        with self._nonce_lock:
            tx_hash = self.guard(what, submit)
        receipt = self.guard(what, self.w3.eth.wait_for_transaction_receipt, tx_hash, timeout=RECEIPT_TIMEOUT_S,
                             poll_latency=0.2)
        if receipt["status"] != 1:
            raise TransactionFailed(what, bytes(receipt["transactionHash"]))
        return receipt


__all__ = ["BID_ADDRESS", "SLASHING_ADDRESS", "STAKE_ADDRESS", "TASK_ADDRESS", "Rpc", "contract_abi"]
