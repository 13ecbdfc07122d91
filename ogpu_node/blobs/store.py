"""Content-addressed blob files in the datadir: `<root>/<hh>/<hash hex>`.

A blob is named by its Merkle root (`merkle.py`). Writes go to a temporary file under `<root>/tmp`
while the stream is hashed; only a blob whose hash matches the expected one (when given) and whose
size is within the cap is fsynced and renamed into place, so a reader never sees a partial blob and
a rejected upload leaves nothing behind. Concurrent writers of one blob each write their own
temporary file; the rename is atomic and the contents are identical, so either one wins.

Synchronous and free of any event loop: the RPC layer runs these calls in worker threads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ogpu_node.files import fsync_dir
from ogpu_node.types.merkle import HASH_SIZE, MerkleHasher

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB per blob
# Free space the store always leaves on its filesystem: the chain's database shares it, and a block
# that cannot be written must never be the first thing to find the disk full.
DEFAULT_MIN_FREE_BYTES = 256 << 20
_TMP = "tmp"


class BlobError(Exception):
    """Base of every blob store error."""


class BlobNotFound(BlobError, KeyError):
    def __init__(self, blob_hash: bytes) -> None:
        super().__init__(f"blob 0x{blob_hash.hex()} not found")
        self.blob_hash = blob_hash

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BlobTooLarge(BlobError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"blob larger than the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes


class BlobStoreFull(BlobError):
    def __init__(self, free: int, min_free: int) -> None:
        super().__init__(f"not enough free disk for blobs: {free} bytes free, the node keeps {min_free}")
        self.free = free
        self.min_free = min_free


class BlobHashMismatch(BlobError):
    def __init__(self, expected: bytes, actual: bytes, size: int) -> None:
        super().__init__(f"hash mismatch: expected 0x{expected.hex()}, got 0x{actual.hex()} ({size} bytes)")
        self.expected = expected
        self.actual = actual
        self.size = size


def parse_hash(text: str | bytes) -> bytes:
    """`0x`-prefixed (or bare) 64 hex digits -> 32 bytes; ValueError otherwise."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(digits) != 2 * HASH_SIZE:
        raise ValueError(f"a blob hash is 32 bytes (64 hex digits), got {text!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"a blob hash is 32 bytes (64 hex digits), got {text!r}") from None


def _check_hash(blob_hash: bytes) -> None:
    if not isinstance(blob_hash, bytes) or len(blob_hash) != HASH_SIZE:
        raise ValueError("a blob hash is 32 bytes")


class BlobWriter:
    """One upload in progress: `write` slices, then `commit` (or `abort`). From `BlobStore.writer`."""

    def __init__(self, store: BlobStore, expected_hash: bytes | None) -> None:
        if expected_hash is not None:
            _check_hash(expected_hash)
        self._store = store
        self._expected = expected_hash
        self._hasher = MerkleHasher()
        fd, name = tempfile.mkstemp(dir=store.root / _TMP, prefix="put-")
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    @property
    def size(self) -> int:
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise BlobError("writer is closed")
        if self._hasher.size + len(data) > self._store.max_bytes:
            self.abort()
            raise BlobTooLarge(self._store.max_bytes)
        try:
            self._store.check_free(len(data))
        except BlobStoreFull:
            self.abort()
            raise
        try:
            self._file.write(data)
        except BaseException:
            self.abort()
            raise
        self._hasher.update(data)

    def commit(self, on_verified: Callable[[bytes, int], None] | None = None) -> tuple[bytes, int, bool]:
        """Verify, fsync and move into place: (hash, size, created). Idempotent for a stored blob.
        ``on_verified(hash, size)`` runs before a new blob becomes visible; if it raises, nothing is
        stored."""
        if self._file is None:
            raise BlobError("writer is closed")
        try:
            blob_hash = self._hasher.digest()
            size = self._hasher.size
            if self._expected is not None and blob_hash != self._expected:
                raise BlobHashMismatch(self._expected, blob_hash, size)
            final = self._store.path_of(blob_hash)
            if final.exists():
                self.abort()
                return blob_hash, size, False
            if on_verified is not None:
                on_verified(blob_hash, size)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            final.parent.mkdir(exist_ok=True)
            os.replace(self._tmp, final)
            fsync_dir(final.parent)
            return blob_hash, size, True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file; safe to call more than once."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after commit (the temporary file is gone)


class BlobStore:
    def __init__(self, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must not be negative")
        self.root = Path(path)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        tmp = self.root / _TMP
        tmp.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads cut short by a crash; the store is owned by one node process.
        for stale in tmp.iterdir():
            stale.unlink(missing_ok=True)

    def check_free(self, incoming: int = 0) -> None:
        """Raise BlobStoreFull unless writing ``incoming`` more bytes leaves the free-space floor."""
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise BlobStoreFull(free, self.min_free_bytes)

    def path_of(self, blob_hash: bytes) -> Path:
        _check_hash(blob_hash)
        hex_hash = blob_hash.hex()
        return self.root / hex_hash[:2] / hex_hash

    def writer(self, expected_hash: bytes | None = None) -> BlobWriter:
        self.check_free()
        return BlobWriter(self, expected_hash)

    def put_stream(self, stream: Iterable[bytes], expected_hash: bytes | None = None) -> tuple[bytes, int]:
        """Store the concatenation of `stream`; (hash, size). Raises BlobHashMismatch, BlobTooLarge,
        BlobStoreFull."""
        with self.writer(expected_hash) as writer:
            for piece in stream:
                writer.write(piece)
            blob_hash, size, _ = writer.commit()
        return blob_hash, size

    def put(self, data: bytes, expected_hash: bytes | None = None) -> tuple[bytes, int]:
        return self.put_stream([data], expected_hash)

    def has(self, blob_hash: bytes) -> bool:
        return self.path_of(blob_hash).is_file()

    def size(self, blob_hash: bytes) -> int:
        try:
            return self.path_of(blob_hash).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(blob_hash) from None

    def open(self, blob_hash: bytes) -> BinaryIO:
        """A binary file positioned at the start of the blob; the caller closes it."""
        try:
            return open(self.path_of(blob_hash), "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise BlobNotFound(blob_hash) from None

    def read(self, blob_hash: bytes) -> bytes:
        with self.open(blob_hash) as f:
            return f.read()

    def delete(self, blob_hash: bytes) -> bool:
        """Remove a blob; False if it was not there. A reader that has it open keeps reading."""
        try:
            self.path_of(blob_hash).unlink()
        except FileNotFoundError:
            return False
        return True
