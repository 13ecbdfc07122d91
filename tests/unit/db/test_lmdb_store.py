"""LMDBStore (DESIGN.md §2 Storage): every write belongs to one write session, committed at once or not at all;
py-evm's atomic batches join that session; other threads read committed data only."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from ogpu_node.db import DatabaseClosed, DatabaseLocked, LMDBStore, NoWriteSession


@pytest.fixture
def path(tmp_path):
    return tmp_path / "chaindata"


@pytest.fixture
def store(path):
    s = LMDBStore(path)
    yield s
    s.close()


class Boom(Exception):
    pass


def in_thread(fn):
    """Run `fn` in another thread and return its result (re-raising what it raised)."""
    result: dict[str, object] = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            result["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


# -- writes need a session --


def test_rule_write_outside_session_raises_no_write_session(store):
    with pytest.raises(NoWriteSession):
        store[b"k"] = b"v"
    assert store.get(b"k") is None
    assert not store.in_write_session


def test_rule_delete_outside_session_raises_no_write_session(store):
    with store.write_session():
        store[b"k"] = b"v"
    with pytest.raises(NoWriteSession):
        del store[b"k"]
    with pytest.raises(NoWriteSession):
        store.delete(b"k")
    assert store[b"k"] == b"v"


def test_rule_session_commits_writes_and_reads_its_own(store):
    with store.write_session():
        assert store.in_write_session
        store[b"a"] = b"1"
        store[b"empty"] = b""
        assert store[b"a"] == b"1"
        assert b"a" in store
        assert store.exists(b"empty")
        del store[b"a"]
        assert b"a" not in store
        store[b"a"] = b"2"
    assert not store.in_write_session
    assert store[b"a"] == b"2"
    assert store[b"empty"] == b""
    assert store.get(b"missing") is None
    assert store.get(b"missing", b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        store[b"missing"]


def test_rule_delete_of_missing_key(store):
    with store.write_session():
        with pytest.raises(KeyError):
            del store[b"nope"]
        store.delete(b"nope")  # the lenient form ignores a missing key


def test_rule_exception_in_session_leaves_nothing_written(store):
    with store.write_session():
        store[b"kept"] = b"old"
    with pytest.raises(Boom):
        with store.write_session():
            store[b"kept"] = b"new"
            store[b"fresh"] = b"x"
            del store[b"kept"]
            raise Boom
    assert store[b"kept"] == b"old"
    assert store.get(b"fresh") is None
    # The aborted transaction is gone: a later write outside a session is refused, not buffered.
    assert not store.in_write_session
    with pytest.raises(NoWriteSession):
        store[b"fresh"] = b"y"


def test_rule_base_exception_in_session_aborts_too(store):
    with pytest.raises(KeyboardInterrupt):
        with store.write_session():
            store[b"k"] = b"v"
            raise KeyboardInterrupt
    assert store.get(b"k") is None


# -- nesting --


def test_rule_nested_sessions_join_the_outer_one(store):
    seen_by_other_thread = []
    with store.write_session():
        store[b"outer"] = b"1"
        with store.write_session():
            store[b"inner"] = b"2"
            assert store[b"outer"] == b"1"
        # The inner session ended but committed nothing of its own.
        assert store.in_write_session
        seen_by_other_thread.append(in_thread(lambda: store.get(b"inner")))
    assert seen_by_other_thread == [None]
    assert store[b"outer"] == b"1"
    assert store[b"inner"] == b"2"


def test_rule_exception_through_nested_sessions_aborts_all(store):
    with pytest.raises(Boom):
        with store.write_session():
            store[b"outer"] = b"1"
            with store.write_session():
                store[b"inner"] = b"2"
                raise Boom
    assert store.get(b"outer") is None
    assert store.get(b"inner") is None


def test_rule_inner_exception_caught_by_caller_still_commits_with_outer(store):
    # Joining means there is one transaction: the inner block's writes stand unless the outer aborts.
    with store.write_session():
        try:
            with store.write_session():
                store[b"inner"] = b"2"
                raise Boom
        except Boom:
            pass
        store[b"outer"] = b"1"
    assert store[b"inner"] == b"2"
    assert store[b"outer"] == b"1"


# -- atomic_batch (py-evm's interface) --


def test_rule_atomic_batch_applies_on_success_and_reads_own_writes(store):
    with store.write_session():
        store[b"base"] = b"0"
        store[b"gone"] = b"g"
        with store.atomic_batch() as batch:
            batch[b"new"] = b"1"
            assert batch[b"new"] == b"1"
            assert batch[b"base"] == b"0"  # falls through to the store
            assert b"new" in batch and batch.exists(b"new")
            del batch[b"gone"]
            assert b"gone" not in batch
            with pytest.raises(KeyError):
                batch[b"gone"]
            with pytest.raises(KeyError):
                del batch[b"never"]
            # Nothing reaches the store before the batch ends.
            assert store.get(b"new") is None
            assert store[b"gone"] == b"g"
            batch[b"gone"] = b"back"
            del batch[b"gone"]
        assert store[b"new"] == b"1"
        assert store.get(b"gone") is None
    assert store[b"new"] == b"1"
    assert store.get(b"gone") is None


def test_rule_atomic_batch_applies_nothing_on_exception(store):
    with store.write_session():
        store[b"base"] = b"0"
        with pytest.raises(Boom):
            with store.atomic_batch() as batch:
                batch[b"new"] = b"1"
                del batch[b"base"]
                raise Boom
        assert store.get(b"new") is None
        assert store[b"base"] == b"0"
    assert store.get(b"new") is None
    assert store[b"base"] == b"0"


def test_rule_atomic_batches_join_the_session_and_abort_with_it(store):
    with pytest.raises(Boom):
        with store.write_session():
            with store.atomic_batch() as batch:
                batch[b"first"] = b"1"
            with store.atomic_batch() as batch:
                batch[b"second"] = b"2"
            assert store[b"first"] == b"1"
            raise Boom
    assert store.get(b"first") is None
    assert store.get(b"second") is None


def test_rule_atomic_batch_outside_session_is_refused(store):
    with pytest.raises(NoWriteSession):
        with store.atomic_batch() as batch:
            batch[b"k"] = b"v"
    assert store.get(b"k") is None


# -- threads --


def test_rule_other_threads_see_only_committed_writes(store):
    with store.write_session():
        store[b"k"] = b"committed"

    written = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            with store.write_session():
                store[b"k"] = b"uncommitted"
                store[b"new"] = b"x"
                written.set()
                assert release.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            written.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert written.wait(timeout=30)
        assert not errors
        # This thread has no session: it reads the last commit and may not write into the other's txn.
        assert not store.in_write_session
        assert store[b"k"] == b"committed"
        assert store.get(b"new") is None
        assert b"new" not in store
        with pytest.raises(NoWriteSession):
            store[b"other"] = b"y"
    finally:
        release.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert not errors
    assert store[b"k"] == b"uncommitted"
    assert store[b"new"] == b"x"


# -- lifecycle --


def test_rule_reopen_after_close_keeps_data(path):
    store = LMDBStore(path)
    with store.write_session():
        store[b"k"] = b"v"
        store[b"big"] = bytes(range(256)) * 4096
    store.close()
    store.close()  # idempotent
    with pytest.raises(DatabaseClosed):
        store[b"k"]
    with pytest.raises(DatabaseClosed):
        with store.write_session():
            pass

    reopened = LMDBStore(path)
    try:
        assert reopened[b"k"] == b"v"
        assert reopened[b"big"] == bytes(range(256)) * 4096
    finally:
        reopened.close()


def test_rule_uncommitted_session_is_lost_on_reopen(path):
    store = LMDBStore(path)
    with pytest.raises(Boom):
        with store.write_session():
            store[b"k"] = b"v"
            raise Boom
    store.close()
    reopened = LMDBStore(path)
    try:
        assert reopened.get(b"k") is None
    finally:
        reopened.close()


def test_rule_second_open_of_an_open_database_is_refused(store, path):
    with pytest.raises(DatabaseLocked, match="is in use by another process"):
        LMDBStore(path)
    # The refused open left the first store working.
    with store.write_session():
        store[b"k"] = b"v"
    assert store[b"k"] == b"v"


def test_rule_another_process_cannot_open_the_database_until_it_is_closed(path):
    probe = (
        "import sys\n"
        "from ogpu_node.db import DatabaseLocked, LMDBStore\n"
        "try:\n"
        "    s = LMDBStore(sys.argv[1])\n"
        "except DatabaseLocked as e:\n"
        "    print('locked', e)\n"
        "else:\n"
        "    print('opened', s[b'k'].decode())\n"
        "    s.close()\n"
    )

    def other_process() -> str:
        done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    store = LMDBStore(path)
    with store.write_session():
        store[b"k"] = b"v"
    try:
        assert other_process() == f"locked {path} is in use by another process"
    finally:
        store.close()
    assert other_process() == "opened v"
    # Closing released the lock in this process too.
    LMDBStore(path).close()


def test_rule_store_is_not_iterable(store):
    with pytest.raises(NotImplementedError):
        iter(store)
    with pytest.raises(NotImplementedError):
        len(store)
