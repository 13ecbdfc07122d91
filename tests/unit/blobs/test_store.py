"""Blob hashing (Merkle root of chunks) and the content-addressed BlobStore."""

from __future__ import annotations

import shutil
import threading

import pytest

from ogpu_node.blobs import (
    CHUNK_SIZE,
    EMPTY_ROOT,
    BlobHashMismatch,
    BlobNotFound,
    BlobStore,
    BlobStoreFull,
    BlobTooLarge,
    MerkleHasher,
    merkle_root,
    parse_hash,
)
from ogpu_node.crypto import keccak
from ogpu_node.types.merkle import leaf_hash, node_hash


def reference_root(data: bytes) -> bytes:
    """The rule of merkle.py's docstring, level by level, with no cleverness."""
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    level = [keccak(b"\x00" + chunk) for chunk in chunks]
    while len(level) > 1:
        nxt = [keccak(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def blob(size: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


# -- hashing --


def test_known_vectors():
    # keccak(0x00), the well-known hash of one zero byte
    assert EMPTY_ROOT.hex() == "bc36789e7a1e281436464229828f817d6612f7b477d66591ff96a9e064bcc98a"
    assert merkle_root(b"") == EMPTY_ROOT
    assert merkle_root(b"ogpu").hex() == "cc13ab1181b64bdc52d26d69492840a231187a0f6748614366d8622a7ce6127c"
    data = bytes(i % 251 for i in range(3 * CHUNK_SIZE + 5))
    assert merkle_root(data).hex() == "67edc9a742e008533b09daa7275370025a4a07d55ab055266233af740e06e2a9"


def test_roots_by_chunk_count():
    a, b, c = b"a" * CHUNK_SIZE, b"b" * CHUNK_SIZE, b"c" * 10
    assert merkle_root(a) == leaf_hash(a)  # one full chunk: the leaf
    assert merkle_root(c) == leaf_hash(c)  # one short chunk
    assert merkle_root(a + b) == node_hash(leaf_hash(a), leaf_hash(b))
    # three chunks: the odd third leaf is promoted, then paired with the first pair's node
    assert merkle_root(a + b + c) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    # a chunk boundary is exact: a full chunk is not followed by an empty one
    assert merkle_root(a) != node_hash(leaf_hash(a), leaf_hash(b""))


@pytest.mark.parametrize("chunks", [4, 5, 6, 7, 9, 13])
def test_many_chunks_match_reference(chunks):
    for extra in (0, 1, CHUNK_SIZE - 1):
        data = blob((chunks - 1) * CHUNK_SIZE + extra + (1 if extra == 0 else 0), seed=chunks)
        assert merkle_root(data) == reference_root(data)


def test_streaming_equals_one_shot():
    data = blob(5 * CHUNK_SIZE + 12345)
    expected = merkle_root(data)
    for step in (1000, 65536, CHUNK_SIZE, CHUNK_SIZE + 7, 3 * CHUNK_SIZE):
        hasher = MerkleHasher()
        for i in range(0, len(data), step):
            hasher.update(data[i : i + step])
        assert hasher.digest() == expected
        assert hasher.size == len(data)
    assert merkle_root(iter([data[:10], b"", data[10:]])) == expected


def test_different_content_or_length_different_root():
    data = blob(2 * CHUNK_SIZE + 1)
    assert merkle_root(data) != merkle_root(data[:-1])
    assert merkle_root(data) != merkle_root(data[:-1] + b"\xff")
    assert merkle_root(b"\x00") != merkle_root(b"")


# -- store --


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", max_bytes=4 * CHUNK_SIZE)


def stored_files(store: BlobStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def test_put_get_layout(store):
    data = blob(2 * CHUNK_SIZE + 99)
    blob_hash, size = store.put_stream(iter([data[:1000], data[1000:]]))
    assert (blob_hash, size) == (merkle_root(data), len(data))
    assert store.has(blob_hash) and store.size(blob_hash) == len(data)
    hex_hash = blob_hash.hex()
    assert stored_files(store) == [f"{hex_hash[:2]}/{hex_hash}"]
    with store.open(blob_hash) as f:
        assert f.read() == data
    # idempotent: storing it again (with its hash) changes nothing
    assert store.put(data, expected_hash=blob_hash) == (blob_hash, len(data))
    assert stored_files(store) == [f"{hex_hash[:2]}/{hex_hash}"]


def test_empty_blob(store):
    assert store.put(b"") == (EMPTY_ROOT, 0)
    assert store.read(EMPTY_ROOT) == b""


def test_missing_blob(store):
    missing = b"\x11" * 32
    assert not store.has(missing)
    with pytest.raises(BlobNotFound):
        store.open(missing)
    with pytest.raises(BlobNotFound):
        store.size(missing)
    assert store.delete(missing) is False


def test_delete(store):
    blob_hash, _ = store.put(b"x" * 100)
    with store.open(blob_hash) as f:
        assert store.delete(blob_hash) is True
        assert f.read() == b"x" * 100  # an open reader keeps its file
    assert not store.has(blob_hash)


def test_mismatch_rejected_leaves_nothing(store):
    data = blob(CHUNK_SIZE + 10)
    good = merkle_root(data)
    with pytest.raises(BlobHashMismatch) as info:
        store.put(data[:-1], expected_hash=good)  # truncated upload
    assert info.value.expected == good and info.value.actual == merkle_root(data[:-1])
    with pytest.raises(BlobHashMismatch):
        store.put(data[:-1] + b"\x00", expected_hash=good)  # altered upload
    assert stored_files(store) == [] and not store.has(good)


def test_stream_failure_leaves_nothing(store):
    def broken():
        yield b"abc"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.put_stream(broken())
    assert stored_files(store) == []


def test_size_cap(store):
    assert store.put(b"\x01" * store.max_bytes)[1] == store.max_bytes  # the cap itself fits
    with pytest.raises(BlobTooLarge):
        store.put_stream([b"\x02" * store.max_bytes, b"\x02"])
    assert len(stored_files(store)) == 1


def test_stale_temp_files_removed_on_open(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()
    writer.write(b"partial")  # a crash here leaves the temporary file
    assert stored_files(store)
    BlobStore(tmp_path / "blobs")
    assert stored_files(store) == []


def test_concurrent_puts_of_same_blob(store):
    data = blob(3 * CHUNK_SIZE + 1)
    expected = merkle_root(data)
    results, errors = [], []
    barrier = threading.Barrier(8)

    def put() -> None:
        try:
            barrier.wait()
            results.append(
                store.put_stream((data[i : i + 65536] for i in range(0, len(data), 65536)), expected)
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [(expected, len(data))] * 8
    assert store.read(expected) == data
    assert stored_files(store) == [f"{expected.hex()[:2]}/{expected.hex()}"]


def test_parse_hash():
    h = b"\xab" * 32
    assert (
        parse_hash("0x" + h.hex()) == h == parse_hash(h.hex().upper()) == parse_hash(b"0x" + h.hex().encode())
    )
    for bad in ("", "0x", "0x" + "ab" * 31, "0x" + "zz" * 32, "ab" * 33):
        with pytest.raises(ValueError):
            parse_hash(bad)


def test_a_write_that_would_cross_the_free_disk_floor_is_refused_and_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path / "blobs", min_free_bytes=0)
    writer = store.writer()
    writer.write(b"first part")
    store.min_free_bytes = shutil.disk_usage(tmp_path).free + (1 << 40)
    with pytest.raises(BlobStoreFull, match=r"^not enough free disk for blobs: \d+ bytes free, the node keeps \d+$"):
        writer.write(b"second part")
    assert [p for p in store.root.rglob("*") if p.is_file()] == []
    with pytest.raises(BlobStoreFull):
        store.put(b"anything")
    store.min_free_bytes = 0
    assert store.put(b"anything")[1] == 8
