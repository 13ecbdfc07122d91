"""One LMDB environment per datadir, written only inside a write session.

py-evm opens several `atomic_batch()` contexts while it imports one block. Every one of them joins the
single LMDB write transaction of the current `write_session()`, which the chain commits once, after the
block's indexes and the head pointer are written: a crash leaves a block fully present or absent.
The write transaction belongs to the thread that opened it; any other thread reads committed data only.

A full disk fails the whole session with `StoreFull` and leaves the store at its last commit: LMDB reports
ENOSPC as `DiskError` from `commit` (pages are written there), or from `put` when a large transaction
spills dirty pages; writing again once space is back just works. If the write that failed was the meta
page, LMDB marks the environment fatal (MDB_PANIC: every later transaction, reads included, fails until
it is reopened), so the store reopens it, once no other thread is inside it.

The class satisfies py-evm's `AtomicDatabaseAPI` by duck typing, so this package does not import py-evm.
"""

from __future__ import annotations

import errno
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


class StoreFull(OSError):
    """No room on disk (or in LMDB's map) for a write session: nothing of it was written; a later
    session succeeds once space is freed."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno.ENOSPC, f"the chain database is out of disk space ({detail})")


def _translated(exc: lmdb.Error) -> Exception:
    """StoreFull for LMDB's out-of-space errors (DiskError is its ENOSPC), `exc` itself otherwise."""
    if isinstance(exc, (lmdb.DiskError, lmdb.MapFullError)):
        return StoreFull(str(exc))
    return exc


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
        self._path = Path(path)
        self._map_size = map_size
        self._durable = durable
        self._path.mkdir(parents=True, exist_ok=True)
        # One process per database, as geth's datadir LOCK: LMDB itself would let a second process in.
        self._lock_fd = os.open(self._path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DatabaseLocked(f"{path} is in use by another process") from None
        try:
            self._env: lmdb.Environment | None = self._open_env()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False
        self._local = threading.local()
        # py-lmdb drops the GIL inside LMDB calls, so closing the environment while another thread is
        # in one of its transactions would free memory under it: a reopen waits until `_users` is 0.
        self._lock = threading.Lock()  # taken directly on the hot read path (cheaper than the Condition)
        self._guard = threading.Condition(self._lock)
        self._users = 0
        self._reopening = False

    def _open_env(self) -> lmdb.Environment:
        # Never writemap: a write into a mapped page of a full tmpfs is a SIGBUS, not an error.
        return lmdb.open(
            str(self._path), map_size=self._map_size, max_dbs=0, readahead=False,
            metasync=self._durable, sync=self._durable,
        )

    # -- the environment, shared by threads, replaced after MDB_PANIC --

    def _enter(self) -> lmdb.Environment:
        """Mark this thread inside the environment until `_leave`, and return it."""
        with self._lock:
            env = self._env
            if env is not None and not self._reopening and not self._closed:
                self._users += 1
                return env
        with self._guard:
            while self._reopening:
                self._guard.wait()
            if self._closed:
                raise DatabaseClosed("the database is closed")
            if self._env is None:  # an earlier reopen failed: try again
                self._reopen_locked(None)
            self._users += 1
            return self._env  # type: ignore[return-value]

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if not self._users and (self._reopening or self._closed):
                self._guard.notify_all()

    def _reopen_locked(self, dead: lmdb.Environment | None) -> None:
        """Replace `dead` with a fresh environment on the same files, which hold the last commit.
        Holds the guard; the calling thread is not inside the environment."""
        if self._env is not dead:
            return  # another thread reopened it already
        self._reopening = True
        try:
            while self._users:
                self._guard.wait()
            if dead is not None:
                self._env = None
                dead.close()
            try:
                self._env = self._open_env()
            except lmdb.Error as exc:
                raise _translated(exc) from None
        finally:
            self._reopening = False
            self._guard.notify_all()

    def _begin(self, write: bool) -> lmdb.Transaction:
        """Enter the environment and begin a transaction there; the caller `_leave`s after it ends."""
        env = self._enter()
        try:
            return env.begin(write=write)
        except lmdb.PanicError:
            self._leave()
        except lmdb.Error as exc:
            self._leave()
            raise _translated(exc) from None
        except BaseException:
            self._leave()
            raise
        with self._guard:
            self._reopen_locked(env)
        env = self._enter()
        try:
            return env.begin(write=write)
        except BaseException:
            self._leave()
            raise

    def _recover_if_panicked(self) -> None:
        """After a failed commit: reopen the environment if the failure left it in MDB_PANIC."""
        env = self._enter()
        try:
            env.begin().abort()
            return
        except lmdb.PanicError:
            pass
        except lmdb.Error:
            return  # another failure: the session's own error says more
        finally:
            self._leave()
        try:
            with self._guard:
                self._reopen_locked(env)
        except (OSError, lmdb.Error):
            pass  # the environment stays closed; the next transaction tries to reopen it

    # -- sessions --

    def _write_txn(self) -> lmdb.Transaction | None:
        return getattr(self._local, "txn", None)

    @property
    def in_write_session(self) -> bool:
        return self._write_txn() is not None

    @contextmanager
    def write_session(self) -> Iterator[None]:
        """One LMDB write transaction; nested sessions join the outer one. On a full disk the session
        fails with StoreFull, even where a caller caught it inside, and nothing of it is written."""
        if self._write_txn() is not None:
            yield
            return
        txn = self._begin(write=True)
        self._local.txn = txn
        self._local.full = None
        failure: lmdb.Error | None = None
        try:
            try:
                yield
            except BaseException:
                txn.abort()
                raise
            finally:
                self._local.txn = None
            if self._local.full is not None:  # LMDB's transaction is unusable after a failed write
                txn.abort()
                raise self._local.full
            try:
                txn.commit()  # a failed commit has aborted the transaction
            except lmdb.Error as exc:
                failure = exc
        finally:
            self._leave()
        if failure is not None:
            self._recover_if_panicked()
            raise _translated(failure) from None

    def _write_failed(self, exc: lmdb.Error) -> Exception:
        if self._local.full is not None:  # LMDB refuses every write after the one that found no room
            return self._local.full
        translated = _translated(exc)
        if isinstance(translated, StoreFull):
            self._local.full = translated
        return translated

    # -- reads and writes --

    def __getitem__(self, key: bytes) -> bytes:
        txn = self._write_txn()
        if txn is not None:
            value = txn.get(key)
        else:
            with self._begin(write=False) as read_txn:
                value = read_txn.get(key)
            self._leave()
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
        try:
            txn.put(key, value)
        except lmdb.Error as exc:  # ENOSPC when LMDB spills the dirty pages of a large transaction
            raise self._write_failed(exc) from None

    def __delitem__(self, key: bytes) -> None:
        txn = self._write_txn()
        if txn is None:
            raise NoWriteSession("database delete outside a write session")
        try:
            deleted = txn.delete(key)
        except lmdb.Error as exc:
            raise self._write_failed(exc) from None
        if not deleted:
            raise KeyError(key)

    def close(self) -> None:
        """Close once no other thread is inside (waiting at most a few seconds for stragglers)."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._guard.wait_for(lambda: not self._users, timeout=10)
            if self._env is not None:
                self._env.close()
                self._env = None
            os.close(self._lock_fd)  # closing the descriptor releases the flock
