"""Blobs and the chain: which blobs blocks reference, uploaders' standing, and the expiry of pending blobs.

A block references a blob when its logs name it: `TaskSubmitted.prescriptionHash` (and through it the
dataset and initial weights the prescription names) and `CheckpointRevealed.checkpointHash`. The
keeper records the references of every block in order, remembering the last one done, so a restart
catches up and no referenced blob is ever taken for pending. Expiry runs only once the references are
caught up with the head, so a blob a block has just referenced is never deleted. After a
reorganization the keeper scans again from where the branches fork (references are idempotent); a
reference from an abandoned block stays, so a blob may be kept longer, never lost early.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from eth_bloom import BloomFilter

from ogpu_node.blobs.ledger import OTHER, PRESCRIPTION, BlobLedger
from ogpu_node.blobs.store import BlobStore
from ogpu_node.blobs.uploads import follow_prescriptions
from ogpu_node.chain import Chain
from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.addresses import STAKE, TASK
from ogpu_node.contracts.layout import StakeEntry
from ogpu_node.contracts.storage import slot_of

log = logging.getLogger("ogpu.blobs")

_TASK_EVENTS = load_abi("Task").events
# topic -> the kind of blob the event's first data word names
_REFERENCING = {
    _TASK_EVENTS["TaskSubmitted"].topic: PRESCRIPTION,
    _TASK_EVENTS["CheckpointRevealed"].topic: OTHER,
}
_SCAN_BATCH = 256  # blocks per ledger transaction while catching up


def _word(topic: Any) -> bytes:
    return topic if isinstance(topic, bytes) else int(topic).to_bytes(32, "big")


def block_references(block: Any) -> list[tuple[bytes, bytes]]:
    """(blob hash, kind) for each blob a committed block's logs reference."""
    if TASK not in BloomFilter(block.bloom):
        return []
    logs: Iterable[tuple[bytes, list[Any], bytes]] = [
        *block.system_logs,
        *((entry.address, entry.topics, entry.data) for receipt in block.receipts for entry in receipt.logs),
    ]
    refs = []
    for address, topics, data in logs:
        if address == TASK and topics:
            kind = _REFERENCING.get(_word(topics[0]))
            if kind is not None and len(data) >= 32:
                refs.append((data[:32], kind))
    return refs


def chain_standing(chain: Chain) -> Any:
    """(balance, staked) of an account at the head of ``chain``: what the upload rules ask."""
    def standing(address: bytes) -> tuple[int, int]:
        head = chain.head
        _, balance, _ = chain.account(head, address)
        return balance, chain.storage_at(head, STAKE, slot_of(StakeEntry.staked.name, address))

    return standing


class BlobKeeper:
    def __init__(self, chain: Chain, store: BlobStore, ledger: BlobLedger, ttl_s: float) -> None:
        self.chain = chain
        self.store = store
        self.ledger = ledger
        self.ttl_s = ttl_s

    def _fork_point(self) -> int:
        """The last scanned block that is still canonical: after a reorganization, where the branches
        fork; -1 to scan from genesis."""
        scanned = self.ledger.scanned
        if scanned is None:
            return -1
        number, block_hash = scanned
        while number >= 0:
            canonical = self.chain.block_by_number(number)
            if canonical is not None and canonical.hash == block_hash:
                return number
            abandoned = self.chain.block_by_hash(block_hash)
            if abandoned is None:
                return -1
            number, block_hash = number - 1, abandoned.header.parent_hash
        return -1

    def caught_up(self) -> bool:
        head = self.chain.head
        return self.ledger.scanned == (head.block_number, head.hash)

    def catch_up(self) -> int:
        """Record the references of every canonical block up to the head; the number of blocks scanned."""
        head = self.chain.head.block_number
        number = self._fork_point()
        done = 0
        while number < head:
            last = min(head, number + _SCAN_BATCH)
            refs, last_hash = [], b""
            for n in range(number + 1, last + 1):
                block = self.chain.block_by_number(n)
                if block is None:  # the head moved back meanwhile: the next round starts again
                    return done
                refs.extend(block_references(block))
                last_hash = block.hash
            follow_prescriptions(self.store, self.ledger, self.ledger.reference(refs, scanned=(last, last_hash)))
            done += last - number
            number = last
        return done

    def sweep(self, now: float) -> list[bytes]:
        """Catch up with the head, then delete the pending blobs older than the ttl; their hashes."""
        self.catch_up()
        expired = []
        for entry in self.ledger.expired(now - self.ttl_s):
            with self.ledger.files_lock:  # not while an upload of the same blob commits
                if self.ledger.expire(entry.blob_hash):
                    self.store.delete(entry.blob_hash)
                    expired.append(entry.blob_hash)
        if expired:
            log.info("expired %d blobs no task referenced within %g s", len(expired), self.ttl_s)
        return expired
