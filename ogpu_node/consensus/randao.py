"""RANDAO reveals from a hash chain (docs/consensus.md, "Duties"; DESIGN.md §2).

A validator registers `tip = H^N(secret)`. Its reveal for epoch `e` is `H^(N-1-e)(secret)`, the only
value `x` with `H^(e+1)(x) = tip`, so a proposer has no reveal to choose among: it can only withhold
its block.
"""

from __future__ import annotations

from ogpu_node.crypto import keccak

CHECKPOINT_EVERY = 1024


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
            if depth % CHECKPOINT_EVERY == 0:
                self._kept[depth] = value
            if depth < length:
                value = keccak(value)
        self.tip = value

    @classmethod
    def from_checkpoints(cls, length: int, checkpoints: list[bytes], tip: bytes) -> HashChain:
        """The chain from its `checkpoints()` (as a node keeps them on disk), without the N hashes of a
        fresh build; ValueError unless they are a chain of ``length`` ending at ``tip``."""
        depths = range(0, length + 1, CHECKPOINT_EVERY)
        if len(checkpoints) != len(depths) or any(len(c) != 32 for c in checkpoints):
            raise ValueError(f"a chain of length {length} keeps {len(depths)} checkpoints of 32 bytes")
        if hash_times(checkpoints[-1], length - depths[-1]) != tip:
            raise ValueError("the checkpoints do not end at the tip")
        chain = cls.__new__(cls)
        chain.length, chain.tip = length, tip
        chain._kept = dict(zip(depths, checkpoints, strict=True))
        return chain

    def checkpoints(self) -> list[bytes]:
        """Every 1024th value from the secret (the first), in order: enough to rebuild the chain."""
        return [self._kept[depth] for depth in sorted(self._kept)]

    @property
    def secret(self) -> bytes:
        return self._kept[0]

    def reveal(self, epoch: int) -> bytes:
        if not 0 <= epoch < self.length:
            raise ValueError(f"the RANDAO hash chain has no reveal for epoch {epoch} (length {self.length})")
        depth = self.length - 1 - epoch
        base = depth - depth % CHECKPOINT_EVERY
        return hash_times(self._kept[base], depth - base)
