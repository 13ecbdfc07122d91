"""Chunk proofs (types/merkle.py): every chunk of blobs of every shape proves into the blob hash, and
nothing else does: another chunk, a changed byte, another index, a cut or padded proof. (A proof does not
bind the chunk count where the path is the same for both counts; the whole blob's hash, checked before
it is stored, does.)"""

import os

import pytest

from ogpu_node.types.merkle import (
    CHUNK_SIZE,
    chunk_count,
    chunk_proof,
    leaf_hash,
    merkle_root,
    tree_levels,
    verify_chunk,
)


def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE,
                                  5 * CHUNK_SIZE + 7, 7 * CHUNK_SIZE, 8 * CHUNK_SIZE, 9 * CHUNK_SIZE + 1])
def test_every_chunk_proves_into_the_blob_hash_and_nothing_else_does(size):
    data = os.urandom(size)
    chunks = _chunks(data)
    count = chunk_count(size)
    assert count == len(chunks)
    levels = tree_levels([leaf_hash(c) for c in chunks])
    root = merkle_root(data)
    assert levels[-1] == [root]
    for index, chunk in enumerate(chunks):
        proof = chunk_proof(levels, index)
        assert verify_chunk(root, index, count, chunk, proof)
        assert not verify_chunk(root, index, count, chunk + b"\0", proof)
        if chunk:
            assert not verify_chunk(root, index, count, bytes([chunk[0] ^ 1]) + chunk[1:], proof)
        assert not verify_chunk(root, index + 1, count, chunk, proof)
        assert not verify_chunk(root, -1, count, chunk, proof)
        assert not verify_chunk(root, index, count, chunk, [*proof, root])
        if proof:
            assert not verify_chunk(root, index, count, chunk, proof[:-1])
        if count > 1:
            other = (index + 1) % count
            assert not verify_chunk(root, other, count, chunks[other], proof) or chunks[other] == chunk


def test_a_chunk_longer_than_a_chunk_is_refused():
    chunk = b"x" * (CHUNK_SIZE + 1)
    assert not verify_chunk(leaf_hash(chunk), 0, 1, chunk, [])
