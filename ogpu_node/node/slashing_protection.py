"""Slashing protection on disk: the record of what a validator key signed, checked before every
signature (the rules are consensus/protection.py's; docs/consensus.md, "Slashing protection").

One file per key, `<datadir>/validator/slashing-protection-<address>.bin`, bound to the chain's
genesis hash and to the key's address. A small append-only file, not LMDB: a signature needs one
fixed-size record appended and fsynced before it is made, which a plain file does with one write and
one fsync, durable even under a chain database opened without sync; the whole file is read and
checked at every start (a few thousand records at most), so there is no index to keep; and the
datadir's LMDB environment is the chain's, with its own lock and write sessions. When the records
pass 4 × KEEP_RECORDS the file is rewritten, pruned, with `files.atomic_file` (old or new, never a
mix).

Layout: a header (magic ‖ genesis hash ‖ address), then 62-byte records, each
kind ‖ flags ‖ three uint64 ‖ signing root ‖ crc32 of the rest:
`B` a proposal (slot), `A` an attestation (source, target), `W` watermarks (slot, source, target;
flags say which are set). A torn last record, from a crash during its append (so before its fsync
returned, and before any signature over it), is dropped; a damaged record anywhere else is an
error: a validator does not sign on a record it cannot read.

A lock file beside it (`…bin.lock`, flock) keeps one writer: a second node with the same key, or an
import while the node runs, is refused. Export reads without the lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

from ogpu_node.consensus import SigningHistory, SigningRefused
from ogpu_node.consensus.protection import KEEP_RECORDS, NO_FLOOR
from ogpu_node.files import atomic_write

log = logging.getLogger("ogpu.validator")

_MAGIC = b"ogpu-slashing-protection-v1\n"
_HEADER = len(_MAGIC) + 32 + 20
_BODY = struct.Struct(">cBQQQ32s")
_RECORD_SIZE = _BODY.size + 4
_PROPOSAL, _ATTESTATION, _WATERMARKS = b"B", b"A", b"W"
_HAS_BLOCK_FLOOR, _HAS_ATTESTATION_FLOORS = 1, 2
_COMPACT_AT = 4 * KEEP_RECORDS


class SlashingProtectionError(Exception):
    """A record that cannot be used (another chain's or key's, damaged, in use); one line for the user."""


def protection_path(datadir: Path, address: bytes) -> Path:
    return Path(datadir) / "validator" / f"slashing-protection-{address.hex()}.bin"


def protection_files(datadir: Path) -> list[Path]:
    """The slashing-protection records in ``datadir``, by address."""
    return sorted((Path(datadir) / "validator").glob("slashing-protection-*.bin"))


def _record(kind: bytes, flags: int = 0, a: int = 0, b: int = 0, c: int = 0, root: bytes = bytes(32)) -> bytes:
    body = _BODY.pack(kind, flags, a, b, c, root)
    return body + zlib.crc32(body).to_bytes(4, "big")


def _watermarks(history: SigningHistory) -> bytes:
    flags = (_HAS_BLOCK_FLOOR if history.block_floor != NO_FLOOR else 0) | \
            (_HAS_ATTESTATION_FLOORS if history.target_floor != NO_FLOOR else 0)
    return _record(_WATERMARKS, flags, max(history.block_floor, 0), max(history.source_floor, 0),
                   max(history.target_floor, 0))


def _replay(history: SigningHistory, record: bytes) -> bool:
    """Apply one record to ``history``; False when it is not a record this module writes."""
    body, crc = record[:_BODY.size], record[_BODY.size:]
    if zlib.crc32(body).to_bytes(4, "big") != crc:
        return False
    kind, flags, a, b, c, root = _BODY.unpack(body)
    if kind == _PROPOSAL:
        history.add_proposal(a, root)
    elif kind == _ATTESTATION and a <= b:
        history.add_attestation(a, b, root)
    elif kind == _WATERMARKS and b <= c:
        attestations = flags & _HAS_ATTESTATION_FLOORS
        history.raise_floors(a if flags & _HAS_BLOCK_FLOOR else NO_FLOOR, b if attestations else NO_FLOOR,
                             c if attestations else NO_FLOOR)
    else:
        return False
    return True


def _parse(data: bytes, path: Path) -> tuple[bytes, bytes, SigningHistory, int]:
    """(genesis hash, address, history, length of the whole records) of a record file's bytes."""
    if len(data) < _HEADER or not data.startswith(_MAGIC):
        raise SlashingProtectionError(f"{path} is not a slashing-protection record")
    genesis_hash, address = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:_HEADER]
    history = SigningHistory()
    count = (len(data) - _HEADER) // _RECORD_SIZE
    for i in range(count):
        start = _HEADER + i * _RECORD_SIZE
        if not _replay(history, data[start:start + _RECORD_SIZE]):
            if i == count - 1:  # torn by a crash during its append: nothing was signed over it
                return genesis_hash, address, history, start
            raise SlashingProtectionError(f"{path} is damaged at record {i}: restore it from a backup or import "
                                          "an interchange file (`ogpu-node validator slashing-protection import`)")
    return genesis_hash, address, history, _HEADER + count * _RECORD_SIZE


def read_protection(path: Path) -> tuple[bytes, bytes, SigningHistory]:
    """(genesis hash, address, history) of the record at ``path``, read without taking its lock."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SlashingProtectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    genesis_hash, address, history, _ = _parse(data, Path(path))
    return genesis_hash, address, history


class SlashingProtection:
    """The SigningGuard of a node's validator key: each signature is checked against the record, and
    its record is appended and fsynced before the check returns (then the core signs)."""

    def __init__(self, path: Path, lock_fd: int, genesis_hash: bytes, address: bytes, history: SigningHistory,
                 length: int, count: int) -> None:
        self.path = path
        self.genesis_hash = genesis_hash
        self.address = address
        self._history = history
        self._lock_fd = lock_fd
        self._length = length  # bytes of whole records in the file
        self._count = count
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._broken: str | None = None  # why every signature is refused from now on
        self._mutex = threading.Lock()  # proposals are signed in a worker thread

    @classmethod
    def open(cls, datadir: Path, address: bytes, genesis_hash: bytes) -> SlashingProtection:
        """The record of ``address`` on the chain of ``genesis_hash``, created empty if there is none;
        SlashingProtectionError if it is another chain's or key's, damaged, or in use."""
        path = protection_path(datadir, address)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SlashingProtectionError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SlashingProtectionError(f"{path} is in use by another process (a node running with this "
                                              "key?)") from None
            header = _MAGIC + genesis_hash + address
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                atomic_write(path, header)
                data = header
            found_genesis, found_address, history, length = _parse(data, path)
            if found_genesis != genesis_hash:
                raise SlashingProtectionError(f"{path} is the record of the chain with genesis 0x{found_genesis.hex()}, "
                                              f"not this chain's (0x{genesis_hash.hex()})")
            if found_address != address:
                raise SlashingProtectionError(f"{path} is the record of 0x{found_address.hex()}, not 0x{address.hex()}")
            if length < len(data):
                log.warning("slashing protection: dropping a torn last record of %s", path)
                with open(path, "r+b") as f:
                    f.truncate(length)
                    os.fsync(f.fileno())
            guard = cls(path, lock_fd, genesis_hash, address, history, length, (length - _HEADER) // _RECORD_SIZE)
        except OSError as exc:
            os.close(lock_fd)
            raise SlashingProtectionError(f"cannot use {path}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        guard._compact_if_long()
        return guard

    def history(self) -> SigningHistory:
        """A copy of the record as it stands."""
        with self._mutex:
            return self._history.copy()

    # -- SigningGuard --

    def check_and_record_proposal(self, slot: int, signing_root: bytes) -> None:
        with self._mutex:
            self._check(self._history.proposal_refusal(slot, signing_root), "proposal")
            if self._history.blocks.get(slot) != signing_root:  # a re-sign is recorded already
                self._append(_record(_PROPOSAL, 0, slot, 0, 0, signing_root))
                self._history.add_proposal(slot, signing_root)
                self._compact_if_long()

    def check_and_record_attestation(self, source_epoch: int, target_epoch: int, signing_root: bytes) -> None:
        with self._mutex:
            self._check(self._history.attestation_refusal(source_epoch, target_epoch, signing_root), "attestation")
            if self._history.attestations.get(target_epoch) != (source_epoch, signing_root):
                self._append(_record(_ATTESTATION, 0, source_epoch, target_epoch, 0, signing_root))
                self._history.add_attestation(source_epoch, target_epoch, signing_root)
                self._compact_if_long()

    def _check(self, refusal: str | None, what: str) -> None:
        refusal = self._broken or refusal
        if refusal is not None:
            log.warning("slashing protection: %s not signed: %s", what, refusal)
            raise SigningRefused(f"{what} not signed: {refusal}")

    # -- import --

    def merge(self, other: SigningHistory) -> SigningHistory:
        """Take in another record of this key (an import) as watermarks at its highest slot, source and
        target, durably; the record after it."""
        with self._mutex:
            merged = self._history.copy()
            merged.merge(other)
            if merged == self._history:  # nothing above the record: nothing to write
                return merged
            try:
                if self._broken is not None:
                    raise SigningRefused(self._broken)
                self._append(_watermarks(merged))
            except SigningRefused as exc:
                raise SlashingProtectionError(str(exc)) from None
            self._history = merged
            self._compact_if_long()
            return merged.copy()

    # -- the file --

    def _append(self, record: bytes) -> None:
        """Append ``record`` and fsync it; on failure, cut the file back and refuse (SigningRefused)."""
        try:
            if self._fd is None:
                raise OSError(errno.EBADF, "the record is closed")
            if os.write(self._fd, record) != len(record):
                raise OSError(errno.EIO, "short write")
            os.fsync(self._fd)
        except OSError as exc:
            self._cut_back()
            raise SigningRefused(f"the slashing-protection record {self.path} could not be written "
                                 f"({exc.strerror or exc}); nothing was signed") from None
        self._length += len(record)
        self._count += 1

    def _cut_back(self) -> None:
        """Drop a partly written record, so the next append starts on a record boundary."""
        try:
            assert self._fd is not None
            os.ftruncate(self._fd, self._length)
            os.fsync(self._fd)
        except (OSError, AssertionError) as exc:
            self._broken = f"the slashing-protection record {self.path} could not be repaired ({exc}); restart the node"

    def _compact_if_long(self) -> None:
        if self._count > _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file as the pruned history: watermarks, then the records kept."""
        self._history.prune()
        h = self._history
        data = b"".join([_MAGIC, self.genesis_hash, self.address, _watermarks(h),
                         *(_record(_PROPOSAL, 0, slot, 0, 0, root) for slot, root in sorted(h.blocks.items())),
                         *(_record(_ATTESTATION, 0, source, target, 0, root)
                           for target, (source, root) in sorted(h.attestations.items()))])
        try:
            atomic_write(self.path, data)
        except OSError as exc:  # the file as it is stays valid: appends go on, compaction is retried later
            log.warning("slashing protection: cannot compact %s: %s", self.path, exc.strerror or exc)
            return
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._broken = f"the slashing-protection record {self.path} could not be reopened ({exc.strerror or exc})"
            return
        self._length, self._count = len(data), (len(data) - _HEADER) // _RECORD_SIZE

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    def __enter__(self) -> SlashingProtection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
