"""The hash of a blob: the Merkle root of its fixed-size chunks.

The rule (docs/rpc.md, "Blobs", repeats it):

- The blob is cut into chunks of `CHUNK_SIZE` = 256 KiB; the last chunk may be shorter. A blob of
  n > 0 bytes has ceil(n / CHUNK_SIZE) chunks; the empty blob has one empty chunk.
- leaf  = keccak(0x00 ‖ chunk)
- node  = keccak(0x01 ‖ left ‖ right)
- The tree is built level by level, pairing nodes left to right; a level with an odd count
  promotes its last node unchanged to the next level. The root is the single node left.
- So a one-chunk blob's root is its leaf, and the empty blob's root is keccak(0x00)
  (`EMPTY_ROOT`).

The 0x00/0x01 prefixes keep leaves and inner nodes apart (no second preimage across levels).

`MerkleHasher` computes the root of a stream with bounded memory: at most one partial chunk and one
pending node per tree level. It keeps the full subtrees seen so far like a binary counter; at the
end, folding the pending nodes from the lowest level up (`acc = node(pending, acc)`) gives the same
root as the level-by-level rule, because an odd trailing node is promoted until it meets its pair.
"""

from __future__ import annotations

from collections.abc import Iterable

from eth_hash.auto import keccak  # types may not import ogpu_node.crypto (a sibling layer)

CHUNK_SIZE = 256 * 1024
HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(chunk: bytes) -> bytes:
    return keccak(_LEAF + chunk)


def node_hash(left: bytes, right: bytes) -> bytes:
    return keccak(_NODE + left + right)


EMPTY_ROOT = leaf_hash(b"")


class MerkleHasher:
    """Incremental blob hash: `update` with any slices of the stream, then `digest`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._levels: list[bytes | None] = []  # _levels[k]: a full subtree of 2**k leaves, or None
        self._leaves = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            room = CHUNK_SIZE - len(self._buf)
            if not self._buf and len(view) >= CHUNK_SIZE:  # whole chunk straight from the input
                self._add_leaf(leaf_hash(bytes(view[:CHUNK_SIZE])))
                view = view[CHUNK_SIZE:]
                continue
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) == CHUNK_SIZE:
                self._add_leaf(leaf_hash(bytes(self._buf)))
                self._buf.clear()

    def _add_leaf(self, node: bytes) -> None:
        self._leaves += 1
        level = 0
        while True:
            if level == len(self._levels):
                self._levels.append(node)
                return
            left = self._levels[level]
            if left is None:
                self._levels[level] = node
                return
            self._levels[level] = None
            node = node_hash(left, node)
            level += 1

    def digest(self) -> bytes:
        """The root of everything fed so far (does not consume the state)."""
        pending = [node for node in self._levels if node is not None]
        if self._buf or self._leaves == 0:  # the trailing short chunk, or the empty blob's chunk
            pending.insert(0, leaf_hash(bytes(self._buf)))
        acc = pending[0]
        for node in pending[1:]:
            acc = node_hash(node, acc)
        return acc


def merkle_root(data: bytes | Iterable[bytes]) -> bytes:
    """The blob hash of `data` (bytes, or an iterable of byte slices)."""
    hasher = MerkleHasher()
    if isinstance(data, (bytes, bytearray, memoryview)):
        hasher.update(data)
    else:
        for piece in data:
            hasher.update(piece)
    return hasher.digest()


# -- proofs: one chunk checked against the blob hash, for blobs fetched from peers (docs/network.md) --

def chunk_count(size: int) -> int:
    """How many chunks a blob of ``size`` bytes has (the empty blob has one, empty)."""
    return max(1, -(-size // CHUNK_SIZE))


def tree_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree over ``leaves`` (leaf hashes), the leaves first, the root's level last."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])  # an odd last node is promoted unchanged
        levels.append(above)
    return levels


def chunk_proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    """The sibling hashes from chunk ``index``'s leaf up to the root (none where a node was promoted)."""
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_chunk(root: bytes, index: int, count: int, chunk: bytes, proof: list[bytes]) -> bool:
    """Whether ``chunk`` is chunk ``index`` of the ``count``-chunk blob whose hash is ``root``: the sides
    of the siblings follow from the index and the level sizes, as the tree's rule builds them."""
    if not 0 <= index < count or len(chunk) > CHUNK_SIZE:
        return False
    node, width, used = leaf_hash(chunk), count, 0
    while width > 1:
        if index % 2:
            if used == len(proof):
                return False
            node = node_hash(proof[used], node)
            used += 1
        elif index + 1 < width:
            if used == len(proof):
                return False
            node = node_hash(node, proof[used])
            used += 1
        index //= 2
        width = (width + 1) // 2
    return used == len(proof) and node == root
