"""The provider's view of one node: transactions from several threads, views, blobs and events.

Everything goes over JSON-RPC (web3.py) and the blob HTTP endpoint through the client app's
transport (`Client`, whose `send` is safe from the event loop, executor jobs and council duties at
once).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from eth_account import Account
from web3 import Web3

from ogpu_node.apps.client import TASK_ADDRESS, Client, ClientError
from ogpu_node.types.merkle import MerkleHasher

# Whichever transaction lands last runs the protocol's next step: the bid reaching H's first N runs
# the assignment (~185k gas more with 3 bids), the last reveal runs the tally with its payments or
# the slash and re-assignment. An estimate made before the others landed cannot see that, so every
# provider transaction may use this much; only the gas used is paid.
PROTOCOL_GAS = 2_000_000

log = logging.getLogger("ogpu.provider")


@dataclass(frozen=True)
class Event:
    name: str
    args: dict[str, Any]
    block: int
    log_index: int


class ChainClient:
    """A provider's connection: ``client`` (the client app's transport) plus what a provider needs."""

    def __init__(self, rpc_url: str, private_key: bytes, *, timeout: float = 30.0) -> None:
        self.client = Client(rpc_url, private_key, timeout=timeout)
        self.w3 = self.client.w3
        self.account = Account.from_key(private_key)
        self.address: str = self.account.address
        self.stake = self.client.stake
        self.task = self.client.task
        self.bid = self.client.bid
        self._events = {
            Web3.keccak(text=_signature(e)): self.task.events[e["name"]]
            for e in self.task.abi if e["type"] == "event"
        }

    # -- transactions --

    def send(self, what: str, call: Any, value: int = 0) -> Any:
        return self.client.send(what, call, value, min_gas=PROTOCOL_GAS)

    def call(self, what: str, fn: Any) -> Any:
        return self.client.guard(what, fn.call)

    # -- blobs --

    def get_blob(self, blob_hash: bytes, max_bytes: int = 1 << 31) -> bytes:
        """Download a blob and check its Merkle root; ClientError if missing, altered or too big."""
        url = f"{self.client.rpc_url}/blobs/0x{blob_hash.hex()}"

        def get() -> bytes:
            with requests.get(url, stream=True, timeout=self.client.timeout) as response:
                if response.status_code != 200:
                    raise ClientError(f"blob 0x{blob_hash.hex()}: the node answered {response.status_code}")
                hasher, parts = MerkleHasher(), []
                for piece in response.iter_content(1 << 20):
                    hasher.update(piece)
                    parts.append(piece)
                    if hasher.size > max_bytes:
                        raise ClientError(f"blob 0x{blob_hash.hex()} is larger than {max_bytes} bytes")
            if hasher.digest() != blob_hash:
                raise ClientError(f"blob 0x{blob_hash.hex()}: content does not match its hash")
            return b"".join(parts)

        return self.client.guard(f"download of blob 0x{blob_hash.hex()}", get)

    def put_blob(self, name: str, data: bytes) -> bytes:
        return self.client.upload_bytes(name, data)[0]

    # -- events --

    def head(self) -> int:
        return self.client.guard("blockNumber", lambda: self.w3.eth.block_number)

    def timestamp(self) -> int:
        return int(self.client.guard("getBlock", self.w3.eth.get_block, "latest")["timestamp"])

    def task_events(self, first: int, last: int) -> list[Event]:
        """Task's events in blocks first..last, in chain order (system-call logs included)."""
        logs = self.client.guard(
            "getLogs", self.w3.eth.get_logs, {"address": TASK_ADDRESS, "fromBlock": first, "toBlock": last}
        )
        out = []
        for entry in logs:
            event = self._events.get(bytes(entry["topics"][0])) if entry["topics"] else None
            if event is None:
                continue
            decoded = event().process_log(entry)
            out.append(Event(decoded["event"], dict(decoded["args"]), entry["blockNumber"], entry["logIndex"]))
        return out

    def wait_until(self, what: str, predicate: Any, timeout: float, poll: float = 0.3) -> Any:
        """Poll ``predicate()`` until it returns something truthy; ClientError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ClientError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(poll)


def _signature(event: dict[str, Any]) -> str:
    return f"{event['name']}({','.join(_type(i) for i in event['inputs'])})"


def _type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        return "(" + ",".join(_type(c) for c in param["components"]) + ")" + param["type"][5:]
    return param["type"]


__all__ = ["ChainClient", "Event"]
