"""The provider's view of one node: transactions from several threads, typed views, blobs and events.

Everything goes over JSON-RPC (web3.py) and the blob HTTP endpoint through the client app's
transport (`Client`, whose `send` is safe from the event loop, executor jobs and council duties at
once). Views are read as records (`task_record(id).state`, `checkpoint(id, k).phase_ends`), never
by position; failures are the client's typed errors (`Reverted`, `NodeUnreachable` …).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from web3.logs import DISCARD

from ogpu_node.apps.client import TASK_ADDRESS, Client, ClientError
from ogpu_node.apps.client.rpc import SLASHING_ADDRESS, contract_abi
from ogpu_node.contracts.abi import load_abi
from ogpu_node.types.records import (
    BidsRecord,
    CheckpointRecord,
    ProgressRecord,
    ResourcesRecord,
    StakeRecord,
    StreamRecord,
    TaskRecord,
    TermsRecord,
)
from ogpu_node.types.streams import stream_fault_id

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
        self.address: str = self.client.account.address  # type: ignore[union-attr]  # a key is given
        self.stake = self.client.stake
        self.task = self.client.task
        self.bid = self.client.bid
        self.views = self.client.views
        self.slashing = self.w3.eth.contract(address=SLASHING_ADDRESS, abi=contract_abi("Slashing"))
        self._events = {event.topic: self.task.events[name] for name, event in load_abi("Task").events.items()}

    # -- transactions --

    def send(self, what: str, call: Any, value: int = 0) -> Any:
        return self.client.send(what, call, value, min_gas=PROTOCOL_GAS)

    def call(self, what: str, fn: Any) -> Any:
        """A view's raw result; prefer the typed views below."""
        return self.client.guard(what, fn.call)

    # -- typed views (records of types/records.py) --

    def task_count(self) -> int:
        return self.views.task_count()

    def task_record(self, task_id: int) -> TaskRecord:
        return self.views.task(task_id)

    def terms(self, task_id: int) -> TermsRecord:
        return self.views.terms(task_id)

    def progress(self, task_id: int) -> ProgressRecord:
        return self.views.progress(task_id)

    def checkpoint(self, task_id: int, k: int) -> CheckpointRecord:
        return self.views.checkpoint(task_id, k)

    def bids(self, task_id: int) -> BidsRecord:
        return self.views.bids(task_id)

    def stream(self, task_id: int) -> StreamRecord:
        return self.views.stream(task_id)

    def subscribers(self, task_id: int) -> list[str]:
        """Bid.subscribersOf, as lower-case 0x addresses."""
        found = self.call(f"subscribersOf {task_id}", self.bid.functions.subscribersOf(task_id))
        return [str(a).lower() for a in found]

    def settled_units(self, task_id: int, version: int) -> int:
        """Task.settledUnits of this provider under terms version ``version``."""
        return int(self.call(f"settledUnits {task_id}", self.task.functions.settledUnits(task_id, self.address, version)))

    def fault_punished(self, task_id: int, request_id: bytes, offender: bytes) -> bool:
        """Slashing.isPunished of a stream fault's evidence id (types.streams.stream_fault_id)."""
        evidence = stream_fault_id(task_id, request_id, offender)
        return bool(self.call("isPunished", self.slashing.functions.isPunished(evidence)))

    def receipt_paid(self, receipt: Any) -> int:
        """Wei paid by the ReceiptSettled events of a transaction receipt."""
        events = self.task.events.ReceiptSettled().process_receipt(receipt, errors=DISCARD)
        return sum(int(e["args"]["amount"]) for e in events)

    def collateral_for(self, task_id: int, price: int) -> int:
        """What a bid at ``price`` locks (Bid.collateralFor: at least the task's collateral floor)."""
        return int(self.call("collateralFor", self.bid.functions.collateralFor(task_id, price)))

    def stake_of(self, account: str | None = None) -> StakeRecord:
        """Stake.stakeOf of ``account`` (default: this provider)."""
        return self.views.stake_of(account or self.address)

    def resources_of(self, account: str | None = None) -> ResourcesRecord:
        return self.views.resources_of(account or self.address)

    # -- blobs --

    def get_blob(self, blob_hash: bytes, max_bytes: int = 1 << 31) -> bytes:
        return self.client.fetch_blob(blob_hash, max_bytes)

    def put_blob(self, name: str, data: bytes) -> bytes:
        return self.client.upload_bytes(name, data)[0]

    # -- events --

    def head(self) -> int:
        return self.client.guard("blockNumber", lambda: self.w3.eth.block_number)

    def chain_id(self) -> int:
        return self.client.rpc.chain_id()

    def genesis_hash(self) -> bytes:
        """Block 0's hash: with the chain id, what every signed stream message binds."""
        return bytes(self.client.guard("getBlock 0", self.w3.eth.get_block, 0)["hash"])

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


__all__ = ["ChainClient", "Event"]
