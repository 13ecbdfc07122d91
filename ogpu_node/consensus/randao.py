"""RANDAO reveals from a hash chain (docs/consensus.md, "Duties"; DESIGN.md §2).

A validator registers `tip = H^N(secret)`. Its reveal for epoch `e` is `H^(N-1-e)(secret)`, the only
value `x` with `H^(e+1)(x) = tip`, so a proposer has no reveal to choose among: it can only withhold
its block.
"""

from __future__ import annotations

from ogpu_node.crypto import keccak

_CHECKPOINT_EVERY = 1024


def hash_times(value: bytes, times: int) -> bytes:
    for _ in range(times):
        value = keccak(value)
    return value


def next_mix(mix: bytes, reveal: bytes) -> bytes:
    return keccak(mix + reveal)


def reveal_matches(reveal: bytes, epoch: int, known_epoch: int, known_value: bytes) -> bool:
    """Whether ``reveal`` is the reveal for ``epoch``, given a known point of the same chain: the reveal
    of ``known_epoch`` (< epoch), or the tip as known_epoch = -1."""
    return len(reveal) == 32 and epoch > known_epoch and hash_times(reveal, epoch - known_epoch) == known_value


class HashChain:
    """A validator's own chain: reveals on demand, from every 1024th value kept in memory, so a reveal
    costs at most 1024 hashes after one pass of N at start."""

    def __init__(self, secret: bytes, length: int) -> None:
        if len(secret) != 32:
            raise ValueError("a RANDAO secret is 32 bytes")
        self.length = length
        self._kept: dict[int, bytes] = {}  # depth (hashes applied to the secret) -> value
        value = secret
        for depth in range(length + 1):
            if depth % _CHECKPOINT_EVERY == 0:
                self._kept[depth] = value
            if depth < length:
                value = keccak(value)
        self.tip = value

    def reveal(self, epoch: int) -> bytes:
        if not 0 <= epoch < self.length:
            raise ValueError(f"the RANDAO hash chain has no reveal for epoch {epoch} (length {self.length})")
        depth = self.length - 1 - epoch
        base = depth - depth % _CHECKPOINT_EVERY
        return hash_times(self._kept[base], depth - base)
