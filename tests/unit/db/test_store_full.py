"""LMDBStore on a full disk (issue 10): a write session that finds no room fails with StoreFull and leaves
the store exactly at its last commit; once space is back the next session commits, with no reopen by the
caller, even when LMDB's failed meta-page write put the environment in MDB_PANIC."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from smallfs import fill, small_tmpfs

from ogpu_node.db import LMDBStore, NoWriteSession, StoreFull

ROOT = Path(__file__).resolve().parents[3]
SHIM_SOURCE = Path(__file__).with_name("enospc_meta_shim.c")


@pytest.fixture
def fs(tmp_path):
    with small_tmpfs(tmp_path / "fs", "8m") as mounted:
        yield mounted


def write_many(store: LMDBStore, prefix: bytes, count: int, size: int = 1000) -> None:
    with store.write_session():
        for i in range(count):
            store[prefix + i.to_bytes(4, "big")] = bytes([i % 251]) * size


def test_rule_commit_on_full_disk_raises_store_full_and_keeps_the_last_commit(fs):
    store = LMDBStore(fs / "db", durable=False)
    try:
        with store.write_session():
            store[b"kept"] = b"old"
        filler = fill(fs, leave=256 * 1024)
        with pytest.raises(StoreFull) as caught:
            with store.write_session():
                store[b"kept"] = b"new"
                del store[b"kept"]
                for i in range(3000):  # ~3 MiB: more than the free space
                    store[b"big" + i.to_bytes(4, "big")] = b"x" * 1000
        assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
        assert "out of disk space" in str(caught.value)
        assert store[b"kept"] == b"old"
        assert store.get(b"big\x00\x00\x00\x00") is None
        assert not store.in_write_session
        with pytest.raises(NoWriteSession):  # the failed transaction is gone, not left open
            store[b"kept"] = b"stray"

        filler.unlink()
        write_many(store, b"big", 3000)
        assert store[b"big\x00\x00\x0b\xb7"] == bytes([2999 % 251]) * 1000
        assert store[b"kept"] == b"old"
    finally:
        store.close()
    reopened = LMDBStore(fs / "db", durable=False)
    try:
        assert reopened[b"kept"] == b"old"
        assert reopened[b"big\x00\x00\x00\x07"] == bytes([7]) * 1000
    finally:
        reopened.close()


def test_rule_every_session_fails_while_the_disk_stays_full(fs):
    store = LMDBStore(fs / "db")  # durable: fsync and meta sync on every commit
    try:
        write_many(store, b"a", 10)
        filler = fill(fs)
        for _ in range(3):
            with pytest.raises(StoreFull):
                write_many(store, b"b", 1000)
        assert store.get(b"b\x00\x00\x00\x00") is None
        assert store[b"a\x00\x00\x00\x09"] == bytes([9]) * 1000
        filler.unlink()
        write_many(store, b"b", 1000)
        assert store[b"b\x00\x00\x03\xe7"] == bytes([999 % 251]) * 1000
    finally:
        store.close()


def test_rule_map_full_is_store_full_and_fails_the_whole_session(tmp_path):
    # LMDB's map is a size limit of its own; a put beyond it fails at once, which shows the rule that a
    # caller who catches StoreFull inside the session still cannot commit the rest of it.
    store = LMDBStore(tmp_path / "db", map_size=1 << 20)
    try:
        with store.write_session():
            store[b"kept"] = b"old"
        with pytest.raises(StoreFull):
            with store.write_session():
                store[b"kept"] = b"new"
                try:
                    for i in range(10_000):
                        store[i.to_bytes(4, "big")] = b"x" * 1000
                except StoreFull:
                    pass
                store[b"after"] = b"caught"
        assert store[b"kept"] == b"old"
        assert store.get(b"after") is None and store.get(b"\x00\x00\x00\x00") is None
        with store.write_session():  # a session that fits commits as before
            store[b"kept"] = b"newer"
        assert store[b"kept"] == b"newer"
    finally:
        store.close()


# -- MDB_PANIC: a failed meta-page write. On a tmpfs the meta pages are never reallocated, so the failure
# -- is injected below LMDB: a preloaded pwrite() refuses offsets in the first two pages with ENOSPC.

@pytest.fixture
def meta_shim(tmp_path) -> tuple[dict[str, str], Path]:
    """(environment that preloads the shim, the flag file that arms it)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("injecting a failed meta-page write needs a C compiler for the pwrite() shim")
    shim = tmp_path / "shim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl"], check=True)
    flag = tmp_path / "fail-meta"
    return dict(os.environ, LD_PRELOAD=str(shim), ENOSPC_META_FLAG=str(flag)), flag


PANIC_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    from ogpu_node.db import LMDBStore, StoreFull

    path, flag = sys.argv[1], sys.argv[2]
    store = LMDBStore(path, durable=False)
    with store.write_session():
        store[b"kept"] = b"old"
    stop, seen, errors = threading.Event(), [], []

    def read_all_along():
        while not stop.is_set():
            try:
                seen.append(store[b"kept"])
            except Exception as exc:
                errors.append(repr(exc))

    reader = threading.Thread(target=read_all_along, daemon=True)
    reader.start()
    open(flag, "w").close()
    try:
        with store.write_session():
            store[b"kept"] = b"new"
        print("commit succeeded")
    except StoreFull as exc:
        print("store full:", exc)
    os.remove(flag)
    print("read", store[b"kept"])
    with store.write_session():
        store[b"kept"] = b"after"
    print("read", store[b"kept"])
    stop.set()
    reader.join()
    print("reader errors", errors[:3])
    print("reader saw", sorted(set(seen)))
    store.close()
    """
)


def test_rule_meta_page_failure_panics_lmdb_and_the_store_reopens_it(tmp_path, meta_shim):
    env, flag = meta_shim
    result = subprocess.run(
        [sys.executable, "-c", PANIC_SCRIPT, str(tmp_path / "db"), str(flag)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("store full:") and "No space left on device" in lines[0]
    # Reads in another thread went on through the panic and the reopen, and never saw the failed write.
    assert lines[1:4] == ["read b'old'", "read b'after'", "reader errors []"]
    assert lines[4] in ("reader saw [b'old']", "reader saw [b'after', b'old']")


def test_meta_shim_really_panics_plain_lmdb(tmp_path, meta_shim):
    """The injected failure is the real thing: without the store's reopen, LMDB refuses every
    transaction after it (this guards the test above against a shim that injects nothing)."""
    env, flag = meta_shim
    script = textwrap.dedent(
        """
        import os, sys, lmdb
        env = lmdb.open(sys.argv[1], map_size=1 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            txn.put(b"k", b"1")
        open(sys.argv[2], "w").close()
        try:
            with env.begin(write=True) as txn:
                txn.put(b"k", b"2")
        except lmdb.DiskError:
            print("commit: DiskError")
        os.remove(sys.argv[2])
        try:
            env.begin().abort()
        except lmdb.PanicError:
            print("then: PanicError")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "db"), str(flag)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["commit: DiskError", "then: PanicError"]
