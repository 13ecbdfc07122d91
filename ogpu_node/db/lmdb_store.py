"""One LMDB environment per datadir, written only inside a write session.

py-evm opens several `atomic_batch()` contexts while it imports one block. Every one of them joins the
single LMDB write transaction of the current `write_session()`, which the chain commits once, after the
block's indexes and the head pointer are written: a crash leaves a block fully present or absent.
The write transaction belongs to the thread that opened it; any other thread reads committed data only.

The class satisfies py-evm's `AtomicDatabaseAPI` by duck typing, so this package does not import py-evm.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

import lmdb

# Address space only; LMDB grows the file as data arrives.
DEFAULT_MAP_SIZE = 1 << 40

_DELETED = object()


class NoWriteSession(RuntimeError):
    """A write arrived outside `write_session()`; every write belongs to one atomic session."""


class DatabaseClosed(RuntimeError):
    pass


class DatabaseLocked(RuntimeError):
    """Another process has the database open; two writers would fork the chain."""


class WriteBatch(MutableMapping):
    """Buffered writes of one py-evm `atomic_batch()`, applied to the store only if the batch succeeds."""

    def __init__(self, store: _BaseStore) -> None:
        self._store = store
        self._pending: dict[bytes, object] = {}

    def __getitem__(self, key: bytes) -> bytes:
        value = self._pending.get(key)
        if value is _DELETED:
            raise KeyError(key)
        if value is not None:
            return value  # type: ignore[return-value]
        return self._store[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._pending[key] = _DELETED

    def __contains__(self, key: object) -> bool:
        value = self._pending.get(key)  # type: ignore[call-overload]
        if value is _DELETED:
            return False
        return value is not None or key in self._store

    def exists(self, key: bytes) -> bool:
        return key in self

    def _exists(self, key: bytes) -> bool:
        return key in self

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError("write batches cannot be iterated")

    def __len__(self) -> int:
        raise NotImplementedError("write batches have no length")

    def _apply(self) -> None:
        for key, value in self._pending.items():
            if value is _DELETED:
                self._store.delete(key)
            else:
                self._store[key] = value  # type: ignore[assignment]
        self._pending.clear()


class _BaseStore(MutableMapping):
    @contextmanager
    def atomic_batch(self) -> Iterator[WriteBatch]:
        batch = WriteBatch(self)
        yield batch
        batch._apply()

    def exists(self, key: bytes) -> bool:
        return key in self

    def _exists(self, key: bytes) -> bool:
        return key in self

    def delete(self, key: bytes) -> None:
        try:
            del self[key]
        except KeyError:
            pass

    def __iter__(self) -> Iterator[bytes]:
        raise NotImplementedError("the store is not iterable")

    def __len__(self) -> int:
        raise NotImplementedError("the store has no cheap length")


class LMDBStore(_BaseStore):
    def __init__(self, path: str | Path, map_size: int = DEFAULT_MAP_SIZE, durable: bool = True) -> None:
        """`durable=False` skips the fsync of each commit: a killed process still loses nothing (the
        data is in the OS page cache), an OS crash may lose the last blocks but never corrupts."""
        Path(path).mkdir(parents=True, exist_ok=True)
        # One process per database, as geth's datadir LOCK: LMDB itself would let a second process in.
        self._lock_fd = os.open(Path(path) / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DatabaseLocked(f"{path} is in use by another process") from None
        try:
            self._env: lmdb.Environment | None = lmdb.open(
                str(path), map_size=map_size, max_dbs=0, readahead=False, metasync=durable, sync=durable
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._local = threading.local()

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            raise DatabaseClosed("the database is closed")
        return self._env

    def _write_txn(self) -> lmdb.Transaction | None:
        return getattr(self._local, "txn", None)

    @property
    def in_write_session(self) -> bool:
        return self._write_txn() is not None

    @contextmanager
    def write_session(self) -> Iterator[None]:
        """One LMDB write transaction; nested sessions join the outer one."""
        if self._write_txn() is not None:
            yield
            return
        txn = self.env.begin(write=True)
        self._local.txn = txn
        try:
            yield
        except BaseException:
            txn.abort()
            raise
        else:
            txn.commit()
        finally:
            self._local.txn = None

    def __getitem__(self, key: bytes) -> bytes:
        txn = self._write_txn()
        if txn is not None:
            value = txn.get(key)
        else:
            with self.env.begin() as read_txn:
                value = read_txn.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        txn = self._write_txn()
        if txn is None:
            raise NoWriteSession("database write outside a write session")
        txn.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        txn = self._write_txn()
        if txn is None:
            raise NoWriteSession("database delete outside a write session")
        if not txn.delete(key):
            raise KeyError(key)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            os.close(self._lock_fd)  # closing the descriptor releases the flock
