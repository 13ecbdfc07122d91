"""Blobs across nodes (docs/network.md, blobs_by_hash): a node asked over HTTP for a blob the chain
references and it lacks fetches it from a peer, chunk by chunk, each chunk checked against the blob hash;
a peer serving bytes that do not prove into the hash is scored down and another peer serves it; a blob
the chain does not reference is not fetched (a client cannot make the node download arbitrary bytes)."""

from __future__ import annotations

import os

import pytest
import requests
import trio
from pos_nodes import pos_genesis, start_node, validator_keys, wait_until

from ogpu_node.blobs.ledger import OTHER
from ogpu_node.types.merkle import CHUNK_SIZE, merkle_root


def _get(node, blob_hash: bytes) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{node.http_port}/blobs/0x{blob_hash.hex()}", timeout=60)


@pytest.mark.timeout(120)
async def test_a_referenced_blob_is_fetched_from_a_peer_and_a_corrupt_peer_is_scored_down(tmp_path):
    keys = validator_keys(3, b"blob exchange")
    genesis = pos_genesis(keys, start_in=60)  # no blocks needed: the network alone
    data = os.urandom(17 * CHUNK_SIZE + 1234)  # two responses of 16 chunks
    small = os.urandom(1000)
    blob_hash, small_hash = merkle_root(data), merkle_root(small)
    async with trio.open_nursery() as nursery:
        holder = await start_node(nursery, tmp_path / "holder", genesis, keys[0])
        corrupt = await start_node(nursery, tmp_path / "corrupt", genesis, keys[1])
        boot = (holder.network.host.multiaddr, corrupt.network.host.multiaddr)
        asker = await start_node(nursery, tmp_path / "asker", genesis, keys[2], bootnodes=boot)
        holder.blobs.put(data)
        holder.blobs.put(small)
        # The corrupt peer holds a file under the blob's name whose bytes are not the blob.
        corrupt.blobs.path_of(blob_hash).parent.mkdir(parents=True, exist_ok=True)
        corrupt.blobs.path_of(blob_hash).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        await wait_until(lambda: asker.network.peer_count() == 2, 30, "the asker connected to both peers")

        # Not referenced by the chain: not fetched.
        response = await trio.to_thread.run_sync(_get, asker, small_hash)
        assert response.status_code == 404
        assert not asker.blobs.has(small_hash)

        asker.blob_ledger.reference([(blob_hash, OTHER), (small_hash, OTHER)])
        for _ in range(2):  # whichever peer it asks first, the blob arrives whole
            response = await trio.to_thread.run_sync(_get, asker, blob_hash)
            assert response.status_code == 200
            assert response.content == data
        assert asker.blobs.read(blob_hash) == data
        response = await trio.to_thread.run_sync(_get, asker, small_hash)
        assert response.content == small

        # Asked of the corrupt peer alone: refused at the first chunk, the peer scored down, nothing kept.
        lone = await start_node(nursery, tmp_path / "lone", genesis, None, bootnodes=(corrupt.network.host.multiaddr,))
        await wait_until(lambda: lone.network.peer_count() == 1, 30, "the lone node connected")
        lone.blob_ledger.reference([(blob_hash, OTHER)])
        response = await trio.to_thread.run_sync(_get, lone, blob_hash)
        assert response.status_code == 404
        assert not lone.blobs.has(blob_hash)
        assert lone.network.host.book.score(corrupt.network.host.peer_id, trio.current_time()) < 0
        assert not any((lone.blobs.root / "tmp").iterdir())
        nursery.cancel_scope.cancel()
