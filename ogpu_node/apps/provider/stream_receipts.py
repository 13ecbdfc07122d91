"""The provider's stream receipts: the highest client-signed receipt per (task, terms version) and what
of it is settled, in the datadir (`streams/receipts.json`, written whole), so a receipt is settled
once, even across restarts; and who signed a receipt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ogpu_node.apps.provider.stream_ws import Receipt
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.files import atomic_write
from ogpu_node.jsontext import loads_bounded
from ogpu_node.types.signing import StreamReceipt

log = logging.getLogger("ogpu.provider")

MAX_BOOK_BYTES = 16 << 20

@dataclass
class Held:
    units: int  # the highest cumulative units received
    signature: bytes
    settled: int = 0  # what the chain has paid up to
    retry_at: float = 0.0  # monotonic; not kept across restarts


class ReceiptBook:
    """The highest receipt per (task, terms version) and the units settled of it, read from `path`.
    Changes are in memory until `save` (or `encode`, for a caller that writes off its event loop);
    each method that changes something says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[tuple[int, int], Held] = {}
        try:
            with open(path, "rb") as f:
                doc = loads_bounded(f.read(MAX_BOOK_BYTES + 1), max_bytes=MAX_BOOK_BYTES)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # a damaged book: the chain's settledUnits still bounds payment
            log.error("receipt book %s is unreadable (%s): starting empty", path, exc)
            return
        for entry in doc.get("receipts", []):
            try:
                key = (int(entry["task"]), int(entry["version"]))
                self.held[key] = Held(int(entry["units"]), bytes.fromhex(entry["signature"]), int(entry["settled"]))
            except (KeyError, ValueError, TypeError):
                log.error("receipt book %s: skipping a malformed entry", path)

    def offer(self, task_id: int, version: int, units: int, signature: bytes) -> bool:
        """Keep the receipt if it is higher than the one held; whether it was kept."""
        held = self.held.get((task_id, version))
        if held is not None and units <= held.units:
            return False
        settled = 0 if held is None else held.settled
        self.held[(task_id, version)] = Held(units, signature, settled)
        return True

    def due(self, now: float, tasks: set[int] | None = None) -> list[tuple[int, int, Held]]:
        """(task, version, receipt) whose units exceed what is settled, not held back; of `tasks` if given."""
        return [(t, v, h) for (t, v), h in sorted(self.held.items())
                if h.units > h.settled and h.retry_at <= now and (tasks is None or t in tasks)]

    def settled(self, task_id: int, version: int, units: int) -> bool:
        held = self.held.get((task_id, version))
        if held is None or units <= held.settled:
            return False
        held.settled = units
        return True

    def hold_back(self, task_id: int, version: int, until: float) -> None:
        held = self.held.get((task_id, version))
        if held is not None:
            held.retry_at = until

    def forget(self, task_id: int) -> bool:
        if not any(t == task_id for t, _ in self.held):
            return False
        self.held = {key: h for key, h in self.held.items() if key[0] != task_id}
        return True

    def encode(self) -> bytes:
        doc = {"receipts": [{"task": t, "version": v, "units": h.units, "signature": h.signature.hex(),
                             "settled": h.settled} for (t, v), h in sorted(self.held.items())]}
        return json.dumps(doc).encode()

    def save(self) -> None:
        atomic_write(self.path, self.encode())


def receipt_signer(receipt: Receipt, provider: bytes, chain_id: int, genesis_hash: bytes) -> bytes | None:
    """Who signed the receipt for `provider` (None if the signature does not recover)."""
    message = StreamReceipt(receipt.task_id, provider, receipt.units, receipt.version)
    try:
        return recover_signer(message.signing_root(chain_id, genesis_hash), receipt.signature)
    except InvalidSignature:
        return None


__all__ = ["Held", "ReceiptBook", "receipt_signer"]
