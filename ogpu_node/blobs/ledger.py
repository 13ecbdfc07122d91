"""Who uploaded which blob, and which blobs the chain references (docs/rpc.md, "Blobs").

A blob is *pending* from its upload until a block references it (a task's prescription, the dataset
and weights that prescription names, a revealed checkpoint); a pending blob is charged to its
uploader's quota and to the node-wide pending cap, and expires if nothing references it in time. A
*referenced* blob is kept and charged to no one. The ledger is its own small LMDB environment beside
the blob files, so a crash loses neither side:

  `p` ‖ hash -> uploader (20) ‖ charge (8) ‖ uploaded at, unix seconds (8)   pending blobs
  `r` ‖ hash -> kind (1: `p` a prescription, `-` any other blob)             referenced blobs
  `scanned`  -> the last block whose references are recorded: number (8) ‖ hash (32)

Totals per account live in memory (rebuilt at start from the `p` entries) with the bytes of uploads
in flight reserved on top, so concurrent uploads cannot overshoot a quota together. Thread-safe:
uploads commit in worker threads while the node records references.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lmdb

CHARGE_UNIT = 4096  # a pending blob costs at least one filesystem block, so tiny blobs cannot be free
_PENDING = b"p"
_REFERENCED = b"r"
_SCANNED = b"scanned"
PRESCRIPTION = b"p"
OTHER = b"-"
_MAP_SIZE = 1 << 34  # address space only
T = TypeVar("T")


def charge_of(size: int) -> int:
    """What a pending blob of ``size`` bytes counts against quotas: rounded up to whole 4 KiB units."""
    return max(1, -(-size // CHARGE_UNIT)) * CHARGE_UNIT


class LedgerFull(Exception):
    """The ledger could not be written: the disk is full (the upload is refused, nothing changes)."""


@dataclass(frozen=True)
class Pending:
    blob_hash: bytes
    uploader: bytes
    charge: int
    uploaded_at: int


def _pending(blob_hash: bytes, value: bytes) -> Pending:
    """A `p` entry's value: uploader (20) ‖ charge (8) ‖ uploaded at (8)."""
    return Pending(blob_hash, value[:20], int.from_bytes(value[20:28], "big"), int.from_bytes(value[28:36], "big"))


@dataclass
class Reservation:
    """Bytes held for one upload in flight; `BlobLedger.release` gives them back (idempotent)."""

    account: bytes
    charge: int
    released: bool = False


class BlobLedger:
    def __init__(self, path: Path | str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=0, readahead=False)
        self._lock = threading.Lock()
        self._by_account: dict[bytes, int] = {}
        self.pending_total = 0
        # Serializes a blob file's appearance (upload commit) with its removal (expiry).
        self.files_lock = threading.Lock()
        for entry in self._each_pending():
            self._add(entry.uploader, entry.charge)

    def close(self) -> None:
        self._env.close()

    # -- totals --

    def _add(self, account: bytes, amount: int) -> None:
        left = self._by_account.get(account, 0) + amount
        if left:
            self._by_account[account] = left
        else:
            self._by_account.pop(account, None)
        self.pending_total += amount

    def pending_of(self, account: bytes) -> int:
        """Bytes charged to ``account``: its pending blobs and its uploads in flight."""
        with self._lock:
            return self._by_account.get(account, 0)

    def reserve(self, account: bytes, size: int, quota: int, node_cap: int) -> Reservation | str:
        """Hold the charge of an upload of ``size`` bytes, or say which limit it would pass
        (`"quota"` or `"node"`)."""
        charge = charge_of(size)
        with self._lock:
            if self._by_account.get(account, 0) + charge > quota:
                return "quota"
            if self.pending_total + charge > node_cap:
                return "node"
            self._add(account, charge)
        return Reservation(account, charge)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            if not reservation.released:
                reservation.released = True
                self._add(reservation.account, -reservation.charge)

    # -- records --

    def _write(self, action: Callable[[lmdb.Transaction], T]) -> T:
        """``action`` in one write transaction; its result."""
        try:
            with self._env.begin(write=True) as txn:
                return action(txn)
        except lmdb.Error as exc:  # ENOSPC and map-full alike: refuse, the store stays as it was
            raise LedgerFull(f"the blob ledger cannot be written: {exc}") from None

    def kind(self, blob_hash: bytes) -> bytes | None:
        """`PRESCRIPTION` or `OTHER` when a block references the blob; None otherwise."""
        with self._env.begin() as txn:
            return txn.get(_REFERENCED + blob_hash)

    def add_pending(self, reservation: Reservation, blob_hash: bytes, now: int) -> bool:
        """Record a new upload as pending, keeping its reservation as its charge; False (the
        reservation released) when the blob is referenced or already pending, as it costs no more."""
        def add(txn: lmdb.Transaction) -> bool:
            if txn.get(_REFERENCED + blob_hash) is not None or txn.get(_PENDING + blob_hash) is not None:
                return False
            value = reservation.account + reservation.charge.to_bytes(8, "big") + now.to_bytes(8, "big")
            txn.put(_PENDING + blob_hash, value)
            return True

        try:
            added = self._write(add)
        except LedgerFull:
            self.release(reservation)
            raise
        if not added:
            self.release(reservation)
            return False
        with self._lock:
            reservation.released = True  # the charge now belongs to the pending entry
        return True

    def reference(self, refs: Iterable[tuple[bytes, bytes]], scanned: tuple[int, bytes] | None = None) -> list[bytes]:
        """Mark blobs referenced by the chain, (hash, kind) each, freeing their pending charges, and
        (in the same transaction) record block ``scanned`` as done. Returns the prescriptions newly
        referenced (the dataset and weights they name are next)."""
        freed: list[Pending] = []
        prescriptions: list[bytes] = []

        def mark(txn: lmdb.Transaction) -> None:
            for blob_hash, kind in refs:
                if txn.get(_REFERENCED + blob_hash) is not None:
                    continue
                txn.put(_REFERENCED + blob_hash, kind)
                if kind == PRESCRIPTION:
                    prescriptions.append(blob_hash)
                value = txn.pop(_PENDING + blob_hash)
                if value is not None:
                    freed.append(_pending(blob_hash, value))
            if scanned is not None:
                txn.put(_SCANNED, scanned[0].to_bytes(8, "big") + scanned[1])

        self._write(mark)
        with self._lock:
            for entry in freed:
                self._add(entry.uploader, -entry.charge)
        return prescriptions

    def _each_pending(self) -> Iterator[Pending]:
        with self._env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_PENDING):
                return
            for key, value in cursor:
                if not key.startswith(_PENDING) or len(key) != 33:
                    return
                yield _pending(key[1:], value)

    def expired(self, uploaded_before: float, limit: int = 10_000) -> list[Pending]:
        """Up to ``limit`` pending blobs uploaded before ``uploaded_before`` (unix seconds)."""
        found = []
        for entry in self._each_pending():
            if entry.uploaded_at < uploaded_before:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    def expire(self, blob_hash: bytes) -> bool:
        """Forget a pending blob (its file is deleted by the caller, after); False if it is not pending
        any more (a block referenced it meanwhile)."""
        value = self._write(lambda txn: txn.pop(_PENDING + blob_hash))
        if value is None:
            return False
        entry = _pending(blob_hash, value)
        with self._lock:
            self._add(entry.uploader, -entry.charge)
        return True

    @property
    def scanned(self) -> tuple[int, bytes] | None:
        """The last block whose references are recorded, (number, hash); None before the first."""
        with self._env.begin() as txn:
            value = txn.get(_SCANNED)
        return None if value is None else (int.from_bytes(value[:8], "big"), value[8:])
