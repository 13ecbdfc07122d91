"""Who may upload a blob, and how much (docs/rpc.md, "Blobs").

An upload carries a signature over (chain id, blob hash, size) (`crypto/blob_auth.py`). The signer
must hold a stake or at least `min_balance` at the head: the network's own Sybil cost, as anyone who
submits a task or bids already pays gas and stake. Its pending bytes (uploaded, not yet referenced by
a task) are bounded by `quota`, every account's together by `pending_max`; a pending blob expires
`ttl_s` after its upload (`keeper.py`). Refusals say which rule, with the figures, and store nothing.

Synchronous; the HTTP layer calls it from worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ogpu_node.blobs.ledger import OTHER, PRESCRIPTION, BlobLedger, LedgerFull, Reservation
from ogpu_node.blobs.store import BlobError, BlobStore, BlobWriter
from ogpu_node.crypto.blob_auth import SCHEME, upload_signer
from ogpu_node.crypto.signatures import InvalidSignature
from ogpu_node.types.prescription import MAX_PRESCRIPTION_BYTES, InvalidPrescription, parse

ETHER = 10**18

# An account's standing at the head: (balance in wei, staked in wei).
Standing = Callable[[bytes], tuple[int, int]]


@dataclass(frozen=True)
class UploadLimits:
    min_balance: int = ETHER  # --blob.min-balance: an unstaked uploader holds at least this
    quota: int = 4 << 30  # --blob.quota: pending bytes per account
    pending_max: int = 16 << 30  # --blob.pending-max: pending bytes of every account together
    ttl_s: float = 24 * 3600.0  # --blob.ttl: a blob no task references by then is deleted


class UploadRefused(BlobError):
    """An upload the rules refuse: `status` is the HTTP answer, `details` go into its JSON body."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


class UploadGate:
    def __init__(self, store: BlobStore, ledger: BlobLedger, chain_id: int, standing: Standing,
                 limits: UploadLimits = UploadLimits()) -> None:
        self.store = store
        self.ledger = ledger
        self.chain_id = chain_id
        self._standing = standing
        self.limits = limits

    def admit(self, blob_hash: bytes, size: int, authorization: bytes | str | None) -> Reservation:
        """The uploader's reservation for this blob, or UploadRefused: 401 unsigned or badly signed,
        403 neither staked nor funded, 429 over its quota, 507 over the node-wide pending cap."""
        if not authorization:
            raise UploadRefused(401, f"a blob upload must be signed: Authorization: {SCHEME} 0x<signature over "
                                     "the chain id, blob hash and size> (docs/rpc.md, Blobs)")
        try:
            uploader = upload_signer(authorization, self.chain_id, blob_hash, size)
        except InvalidSignature as exc:
            raise UploadRefused(401, f"bad upload signature: {exc}") from None
        account = "0x" + uploader.hex()
        balance, staked = self._standing(uploader)
        if staked == 0 and balance < self.limits.min_balance:
            raise UploadRefused(
                403, f"account {account} may not upload blobs: it has no stake and holds {balance} wei, "
                     f"less than the {self.limits.min_balance} wei uploads need",
                account=account, balance=balance, min_balance=self.limits.min_balance)
        if self.store.has(blob_hash) or self.ledger.kind(blob_hash) is not None:
            return Reservation(uploader, 0)  # stored or referenced already: it costs no one more
        held = self.ledger.reserve(uploader, size, self.limits.quota, self.limits.pending_max)
        if held == "quota":
            pending = self.ledger.pending_of(uploader)
            raise UploadRefused(
                429, f"upload quota of {account} exceeded: {pending} bytes of its blobs wait for a task "
                     f"to reference them, the quota is {self.limits.quota}; they count until referenced "
                     f"or expired ({self.limits.ttl_s:g} s after upload)",
                account=account, pending=pending, quota=self.limits.quota)
        if held == "node":
            raise UploadRefused(
                507, f"the node holds {self.ledger.pending_total} bytes of blobs no task references, its cap is "
                     f"{self.limits.pending_max}; retry when they are referenced or expire",
                pending=self.ledger.pending_total, pending_max=self.limits.pending_max)
        return held

    def commit(self, writer: BlobWriter, reservation: Reservation) -> tuple[bytes, int, bool]:
        """`writer.commit()`, recording a new blob in the ledger before it becomes visible, so a crash
        never leaves a blob file no one is charged for; (hash, size, created)."""
        def record(blob_hash: bytes, size: int) -> None:
            try:
                self.ledger.add_pending(reservation, blob_hash, int(time.time()))
            except LedgerFull as exc:
                raise UploadRefused(507, str(exc)) from None

        with self.ledger.files_lock:  # not while expiry deletes the same blob
            return writer.commit(record)

    def release(self, reservation: Reservation) -> None:
        self.ledger.release(reservation)

    def stored(self, blob_hash: bytes) -> None:
        """After a commit: a prescription the chain already references gets its blobs referenced too
        (a task may be submitted before its prescription reaches this node)."""
        if self.ledger.kind(blob_hash) == PRESCRIPTION:
            follow_prescriptions(self.store, self.ledger, [blob_hash])


def prescription_blobs(store: BlobStore, blob_hash: bytes) -> list[bytes]:
    """The dataset and initial (or, for a stream, served) weights a stored prescription names; none if it
    is absent, too large or not a valid prescription (the task then fails for its providers, not here)."""
    try:
        if store.size(blob_hash) > MAX_PRESCRIPTION_BYTES:
            return []
        p = parse(store.read(blob_hash))
    except (BlobError, InvalidPrescription, ValueError):
        return []
    dataset = p.D.blob if p.D is not None else None  # a stream has no dataset
    return [h for h in (dataset, p.M.initial_weights) if h is not None]


def follow_prescriptions(store: BlobStore, ledger: BlobLedger, prescriptions: list[bytes]) -> None:
    """Reference the blobs named by referenced prescriptions."""
    refs = [(h, OTHER) for p in prescriptions for h in prescription_blobs(store, p)]
    if refs:
        ledger.reference(refs)
