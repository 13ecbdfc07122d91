"""Blobs between nodes (docs/network.md, `blobs_by_hash`): a node serves the complete blobs it stores,
chunk by chunk with each chunk's Merkle proof, and fetches a blob it lacks from its peers when a local
client asks for it, checking every chunk against the blob hash before writing it, so a bad peer wastes
at most one chunk. Only blobs the chain references are fetched (a task's prescription, the dataset and
weights it names, a revealed checkpoint): a client cannot make the node download arbitrary bytes.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import rlp
import trio

from ogpu_node.blobs import BlobLedger, BlobStore
from ogpu_node.blobs.ledger import PRESCRIPTION
from ogpu_node.blobs.store import BlobError, BlobNotFound
from ogpu_node.blobs.uploads import follow_prescriptions
from ogpu_node.p2p import limits
from ogpu_node.p2p.host import BadMessage, Network, RequestFailed
from ogpu_node.p2p.limits import PeerOffence
from ogpu_node.p2p.wire import FrameError, rlp_items_within
from ogpu_node.types.merkle import CHUNK_SIZE, chunk_count, chunk_proof, leaf_hash, tree_levels, verify_chunk

log = logging.getLogger("ogpu.blobs")

CHUNKS_PER_RESPONSE = 16  # 4 MiB a response: a large blob comes in many requests, resumable, any peer
_TREES_CACHED = 8  # blobs whose Merkle levels are kept for serving their chunks
# Worker threads reading blobs for peers, apart from trio's default limiter (imports, sealing, RPC).
SERVING = trio.CapacityLimiter(2)


class _Download:
    """How far a blob's download got: its size and chunk count once a peer told them, the next chunk."""

    def __init__(self) -> None:
        self.size: int | None = None
        self.count: int | None = None
        self.index = 0


class BlobExchange:
    def __init__(self, store: BlobStore, ledger: BlobLedger, host: Network,
                 catch_up: Callable[[], Any] | None = None) -> None:
        """``catch_up``: records the references of blocks not scanned yet (BlobKeeper.catch_up), so a
        blob a block referenced a moment ago is fetchable at once."""
        self.store = store
        self.ledger = ledger
        self.host = host
        self.catch_up = catch_up
        self._trees: OrderedDict[bytes, list[list[bytes]]] = OrderedDict()
        self._fetching: dict[bytes, trio.Event] = {}

    # -- serving --

    def _levels(self, blob_hash: bytes) -> list[list[bytes]]:
        """The blob's tree, computed from the file once (one pass) and cached; runs in a worker thread."""
        levels = self._trees.get(blob_hash)
        if levels is None:
            leaves = []
            with self.store.open(blob_hash) as file:
                while True:
                    chunk = file.read(CHUNK_SIZE)
                    if not chunk and leaves:
                        break
                    leaves.append(leaf_hash(chunk))
                    if len(chunk) < CHUNK_SIZE:
                        break
            levels = tree_levels(leaves)
            self._trees[blob_hash] = levels
            while len(self._trees) > _TREES_CACHED:
                self._trees.popitem(last=False)
        return levels

    def _chunks(self, blob_hash: bytes, first: int) -> list[bytes]:
        size = self.store.size(blob_hash)
        levels = self._levels(blob_hash)
        count = chunk_count(size)
        frames = [rlp.encode([size, count])]
        with self.store.open(blob_hash) as file:
            file.seek(first * CHUNK_SIZE)
            for index in range(first, min(count, first + CHUNKS_PER_RESPONSE)):
                frames.append(rlp.encode([index, file.read(CHUNK_SIZE), chunk_proof(levels, index)]))
        return frames

    async def serve(self, request: bytes) -> AsyncIterator[bytes]:
        try:
            if not rlp_items_within(request, 3):
                raise ValueError("too many RLP items")
            blob_hash, first = rlp.decode(request)
            first = int.from_bytes(first, "big")
            if len(blob_hash) != 32 or first >= 1 << 32:
                raise ValueError("not rlp([blob hash, first chunk index])")
        except Exception as exc:
            raise BadMessage(f"malformed blob request: {exc}") from None
        try:
            frames = await trio.to_thread.run_sync(self._chunks, bytes(blob_hash), first, limiter=SERVING)
        except BlobNotFound:
            return  # not here: an empty answer, the asker tries another peer
        for frame in frames:
            yield frame

    # -- fetching --

    def wanted(self, blob_hash: bytes) -> bool:
        """Whether the chain references the blob, so the node may fetch it."""
        return self.ledger.kind(blob_hash) is not None

    async def fetch(self, blob_hash: bytes) -> bool:
        """Fetch a referenced blob from peers into the store; True when it is stored (concurrent asks for
        one blob share one download)."""
        if self.store.has(blob_hash):
            return True
        if not self.wanted(blob_hash) and self.catch_up is not None:
            await trio.to_thread.run_sync(self.catch_up)
        if not self.wanted(blob_hash):
            return False
        running = self._fetching.get(blob_hash)
        if running is not None:
            await running.wait()
            return self.store.has(blob_hash)
        done = self._fetching[blob_hash] = trio.Event()
        writer = await trio.to_thread.run_sync(self.store.writer, blob_hash)
        try:
            peers = list(self.host.peers)
            random.shuffle(peers)
            download = _Download()
            for peer in peers:
                if await self._fetch_from(peer, blob_hash, writer, download):
                    await trio.to_thread.run_sync(writer.commit)
                    log.info("blob 0x%s fetched (last chunks from %s)", blob_hash.hex(), peer)
                    if self.ledger.kind(blob_hash) == PRESCRIPTION:  # its dataset and weights are next
                        await trio.to_thread.run_sync(follow_prescriptions, self.store, self.ledger, [blob_hash])
                    return True
            return False
        except BlobError as exc:  # too large for this node, or its disk is full: no peer can help
            log.warning("blob 0x%s not stored: %s", blob_hash.hex(), exc)
            return False
        finally:
            with trio.CancelScope(shield=True):  # a cancelled fetch leaves no temporary file behind
                await trio.to_thread.run_sync(writer.abort)
            del self._fetching[blob_hash]
            done.set()

    async def _fetch_from(self, peer: str, blob_hash: bytes, writer: Any, download: _Download) -> bool:
        """Go on with ``download`` from ``peer``, from the first chunk not written yet: True once every
        chunk is written (the chunks before a bad one are kept: a bad peer wastes one chunk)."""
        try:
            while download.count is None or download.index < download.count:
                index = download.index
                frames = await self.host.request(peer, limits.PROTOCOL_BLOBS_BY_HASH, rlp.encode([blob_hash, index]),
                                                 CHUNKS_PER_RESPONSE + 1)
                if not frames:
                    return False  # it has not got it (or no longer)
                header, *chunks = frames
                download.size, download.count = self._check_header(header, download.size, download.count)
                due = min(CHUNKS_PER_RESPONSE, download.count - index)
                if len(chunks) != due:
                    raise BadMessage(f"{len(chunks)} chunks where {due} were due")
                for frame in chunks:
                    chunk = self._check_chunk(frame, blob_hash, download.index, download.size, download.count)
                    await trio.to_thread.run_sync(writer.write, chunk)
                    download.index += 1
            return True
        except (BadMessage, rlp.DecodingError, ValueError, TypeError) as exc:
            log.warning("blob 0x%s from %s refused: %s", blob_hash.hex(), peer, exc)
            self.host.penalize(peer, PeerOffence.INVALID)
            return False
        except (RequestFailed, FrameError, trio.TooSlowError) as exc:
            log.info("blob 0x%s from %s: %s", blob_hash.hex(), peer, exc)
            return False

    def _check_header(self, frame: bytes, size: int | None, count: int | None) -> tuple[int, int]:
        if not rlp_items_within(frame, 3):
            raise BadMessage("a blob header is rlp([size, chunk count])")
        fields: Any = rlp.decode(frame)
        if not isinstance(fields, list) or len(fields) != 2:
            raise BadMessage("a blob header is rlp([size, chunk count])")
        new_size, new_count = (int.from_bytes(f, "big") for f in fields)
        if new_size > self.store.max_bytes:
            raise BlobError(f"blob of {new_size} bytes, over this node's limit of {self.store.max_bytes}")
        if new_count != chunk_count(new_size) or (size is not None and (new_size, new_count) != (size, count)):
            raise BadMessage("the blob's size and chunk count do not agree")
        return new_size, new_count

    @staticmethod
    def _check_chunk(frame: bytes, blob_hash: bytes, index: int, size: int, count: int) -> bytes:
        if not rlp_items_within(frame, 70):  # index, bytes, and a proof of at most 64 hashes
            raise BadMessage("a blob chunk is rlp([index, bytes, proof])")
        fields: Any = rlp.decode(frame)
        if not isinstance(fields, list) or len(fields) != 3 or not isinstance(fields[2], list):
            raise BadMessage("a blob chunk is rlp([index, bytes, proof])")
        got, chunk, proof = int.from_bytes(fields[0], "big"), bytes(fields[1]), [bytes(p) for p in fields[2]]
        expected = CHUNK_SIZE if index < count - 1 else size - (count - 1) * CHUNK_SIZE
        if got != index or len(chunk) != expected or len(proof) > 64:
            raise BadMessage(f"chunk {got} of {len(chunk)} bytes where chunk {index} of {expected} was due")
        if not verify_chunk(blob_hash, index, count, chunk, proof):
            raise BadMessage(f"chunk {index} does not prove into the blob hash")
        return chunk
