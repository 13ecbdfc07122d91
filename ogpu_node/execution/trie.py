"""Root of an ordered Merkle-Patricia trie (transactions, receipts, withdrawals) without a node store.

py-evm builds these roots through a HexaryTrie over a dict, node by node, several times per block; the
roots only need computing once, and the nodes are never read back (bodies and receipts are stored
whole, as geth does), so a direct bottom-up construction is enough.
"""

from __future__ import annotations

import rlp
from eth_hash.auto import keccak

BLANK_ROOT = keccak(rlp.encode(b""))


def _nibbles(key: bytes) -> bytes:
    out = bytearray()
    for byte in key:
        out.append(byte >> 4)
        out.append(byte & 0x0F)
    return bytes(out)


def _hex_prefix(nibbles: bytes, leaf: bool) -> bytes:
    flag = 2 if leaf else 0
    if len(nibbles) % 2:
        packed = bytes([(flag + 1) << 4 | nibbles[0]])
        rest = nibbles[1:]
    else:
        packed = bytes([flag << 4])
        rest = nibbles
    return packed + bytes(rest[i] << 4 | rest[i + 1] for i in range(0, len(rest), 2))


def _reference(node: list) -> object:
    encoded = rlp.encode(node)
    return node if len(encoded) < 32 else keccak(encoded)


def _build(items: list[tuple[bytes, bytes]], depth: int) -> list:
    if len(items) == 1:
        key, value = items[0]
        return [_hex_prefix(key[depth:], leaf=True), value]
    first, last = items[0][0], items[-1][0]
    shared = 0
    limit = min(len(first), len(last)) - depth
    while shared < limit and first[depth + shared] == last[depth + shared]:
        shared += 1
    if shared:
        child = _build(items, depth + shared)
        return [_hex_prefix(first[depth : depth + shared], leaf=False), _reference(child)]
    branch: list = [b""] * 17
    start = 0
    if len(first) == depth:
        branch[16] = items[0][1]
        start = 1
    while start < len(items):
        nibble = items[start][0][depth]
        end = start
        while end < len(items) and items[end][0][depth] == nibble:
            end += 1
        branch[nibble] = _reference(_build(items[start:end], depth + 1))
        start = end
    return branch


def ordered_trie_root(values: list[bytes]) -> bytes:
    """Root of the trie mapping rlp(i) -> values[i]."""
    if not values:
        return BLANK_ROOT
    items = sorted((_nibbles(rlp.encode(i)), value) for i, value in enumerate(values))
    return keccak(rlp.encode(_build(items, 0)))
