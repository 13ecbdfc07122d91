"""Head switches: which blocks leave and which join the canonical chain when the head moves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ogpu_node.chain.blocks import StoredBlock


class ChainError(Exception):
    """The datadir or a request does not fit this chain (wrong genesis, unknown block)."""


class FinalizedRevert(ChainError):
    """A head switch would take a finalized block off the canonical chain; nothing was changed."""


@dataclass(frozen=True)
class HeadChange:
    """What one head switch did. `abandoned`: the blocks that left the canonical chain, `adopted`: the
    blocks that joined it, each in chain order (lowest number first), both above `ancestor`, the last
    block the two branches share. A plain extension abandons nothing and adopts one block."""

    old_head: Any  # header
    new_head: Any  # header
    ancestor: Any  # header
    abandoned: tuple[StoredBlock, ...]
    adopted: tuple[StoredBlock, ...]

    @property
    def is_reorg(self) -> bool:
        return bool(self.abandoned)

    @cached_property
    def returned_transactions(self) -> list[Any]:
        """Transactions of abandoned blocks that no adopted block includes, in chain order (so each
        sender's come back in nonce order): they go back to the pool."""
        kept = {tx_hash for block in self.adopted for tx_hash in block.transaction_hashes}
        return [
            block.transaction(index)
            for block in self.abandoned
            for index, tx_hash in enumerate(block.transaction_hashes)
            if tx_hash not in kept
        ]

    @cached_property
    def senders(self) -> set[bytes]:
        """Every sender whose nonce or balance the switch may have changed."""
        return {sender for block in (*self.abandoned, *self.adopted) for sender in block.senders}


def branches(
    old_head: Any, new_head: Any, header_by_hash: Callable[[bytes], Any]
) -> tuple[Any, list[Any], list[Any]]:
    """(ancestor, abandoned headers, adopted headers), both lists lowest number first: step the higher
    of the two tips back to its parent until both stand on one block."""
    abandoned: list[Any] = []
    adopted: list[Any] = []
    old, new = old_head, new_head
    while old.hash != new.hash:
        if old.block_number >= new.block_number:
            abandoned.append(old)
            old = header_by_hash(old.parent_hash)
        else:
            adopted.append(new)
            new = header_by_hash(new.parent_hash)
    abandoned.reverse()
    adopted.reverse()
    return old, abandoned, adopted
