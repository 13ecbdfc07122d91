"""The block tree of one LMDB store and its canonical chain.

Every valid block is stored by hash (header, body with senders, receipts, system-call logs) with the
state it leaves, whether or not it is canonical: py-evm's state trie nodes are content-addressed, so a
block executes on any known parent's state. The canonical chain is three indexes written together
with the head pointer: number → hash, transaction hash → (block, index), and the head itself. A block
import writes one block and, if it becomes the head, those indexes, in one LMDB write transaction; a
head switch (`set_head`) rewrites the indexes of every abandoned and adopted block and the head in one
write transaction too, so a crash leaves the old head or the new one, never a mix. Readers see
committed data only.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import rlp

from ogpu_node.chain.blocks import SYSTEM_ADDRESS, StoredBlock, system_tx_hash
from ogpu_node.chain.head import ChainError, FinalizedRevert, HeadChange, branches
from ogpu_node.config import GenesisConfig
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import encode_transaction
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.execution.state import BlockAttributes, ExecutedBlock, Execution

__all__ = ["SYSTEM_ADDRESS", "Chain", "ChainError", "FinalizedRevert", "HeadChange", "StoredBlock", "system_tx_hash"]

log = logging.getLogger("ogpu.chain")

_GENESIS_KEY = b"ogpu:genesis"
_BODY = b"ogpu:body:"
_RECEIPTS = b"ogpu:rcpt:"
_TX_INDEX = b"ogpu:txi:"
_SYSTEM_LOGS = b"ogpu:sys:"


class Chain:
    """The block tree and canonical chain of one datadir. Deterministic and synchronous: services call
    it, block production and head switches from worker threads (LMDB runs one writer at a time)."""

    def __init__(self, store: LMDBStore, genesis: GenesisConfig, cache_blocks: int = 256) -> None:
        self.store = store
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.execution = Execution(store, genesis)
        self._cache: OrderedDict[bytes, StoredBlock] = OrderedDict()
        self._cache_size = cache_blocks
        # Writers are serialized by LMDB's one write transaction and read the head inside it; this lock
        # only orders the updates of `head` after their commits.
        self._head_lock = threading.Lock()
        # Blocks at or below this number never leave the canonical chain (the node sets it from its
        # finalized checkpoint; genesis is always final).
        self.finalized_number = 0
        stored = store.get(_GENESIS_KEY)
        expected = self.execution.genesis_block
        if stored is None:
            with store.write_session():
                self.execution.write_genesis_state()
                self._store_block(expected, (), ())
                self._index(expected.header, [], False)
                self.execution.write_head(expected.hash)
                # The chain id is not in the genesis hash, yet it changes every signature: keep both.
                store[_GENESIS_KEY] = rlp.encode([expected.hash, genesis.chain_id])
            log.info("wrote genesis block %s", expected.hash.hex())
        else:
            stored_hash, stored_chain_id = rlp.decode(stored)
            if stored_hash != expected.hash:
                raise ChainError(
                    f"the datadir holds a chain with genesis 0x{stored_hash.hex()}, "
                    f"not this genesis (0x{expected.hash.hex()})"
                )
            if int.from_bytes(stored_chain_id, "big") != genesis.chain_id:
                raise ChainError(
                    f"the datadir holds chain id {int.from_bytes(stored_chain_id, 'big')}, "
                    f"not {genesis.chain_id}"
                )
        self.genesis_hash = expected.hash
        self.head = self.execution.header_by_hash(self.execution.head_hash())

    # -- writes (inside one write session each) --

    def _store_block(
        self, block: Any, receipts: Sequence[Any], senders: Sequence[bytes], system_logs: Sequence[Any] = ()
    ) -> None:
        """Keep a block by hash, canonical or not."""
        header = block.header
        self.execution.write_header(header)
        self.store[_BODY + header.hash] = rlp.encode(
            [[encode_transaction(tx) for tx in block.transactions], list(senders)]
        )
        self.store[_RECEIPTS + header.hash] = rlp.encode([r.encode() for r in receipts])
        if system_logs:
            self.store[_SYSTEM_LOGS + header.hash] = rlp.encode([list(entry) for entry in system_logs])

    def _index(self, header: Any, tx_hashes: Iterable[bytes], has_system_logs: bool) -> None:
        """Make a block the canonical one at its number: number → hash and its transactions' lookups."""
        number = rlp.encode(header.block_number)
        index = -1
        for index, tx_hash in enumerate(tx_hashes):
            self.store[_TX_INDEX + tx_hash] = rlp.encode([header.hash, number, index])
        if has_system_logs:
            self.store[_TX_INDEX + system_tx_hash(header.hash)] = rlp.encode([header.hash, number, index + 1])
        self.execution.write_canonical(header.block_number, header.hash)

    def _unindex(self, block: StoredBlock) -> None:
        """Remove an abandoned block's transaction lookups (its number's entry is overwritten or cut)."""
        for tx_hash in block.transaction_hashes:
            self.store.delete(_TX_INDEX + tx_hash)
        if block.system_logs:
            self.store.delete(_TX_INDEX + block.system_tx_hash)

    def _extend(self, executed: ExecutedBlock) -> None:
        """Store a block whose parent is the head and make it the head."""
        self._store_block(executed.block, executed.receipts, executed.senders, executed.system_logs)
        self._index(executed.header, [tx.hash for tx in executed.block.transactions], bool(executed.system_logs))
        self.execution.write_head(executed.header.hash)

    def _stored_head(self) -> Any:
        """The head pointer's header as this thread sees the store (its write transaction, if any)."""
        return self.execution.header_by_hash(self.execution.head_hash())

    def _refresh_head(self) -> None:
        """After a commit: `head` follows the store (two writers may finish in either order). Inside
        a caller's outer write session nothing is committed yet: `head` stays, readers keep the
        committed one, and that caller sets it once its session commits."""
        if self.store.in_write_session:
            return
        with self._head_lock:
            self.head = self._stored_head()

    def _switch(self, old_head: Any, new_head: Any) -> HeadChange:
        """Rewrite the canonical indexes and the head for `new_head`'s branch (in the caller's session)."""
        ancestor, left, joined = branches(old_head, new_head, self.execution.header_by_hash)
        if left and left[0].block_number <= self.finalized_number:
            raise FinalizedRevert(
                f"switching the head to block {new_head.block_number} (0x{new_head.hash.hex()}) would revert "
                f"block {left[0].block_number}, at or below finalized block {self.finalized_number}"
            )
        abandoned = tuple(self._load_block(header.hash) for header in left)
        adopted = tuple(self._load_block(header.hash) for header in joined)
        for block in abandoned:
            self._unindex(block)
        for block in adopted:
            self._index(block.header, block.transaction_hashes, bool(block.system_logs))
        for number in range(new_head.block_number + 1, old_head.block_number + 1):
            self.execution.write_canonical(number, None)  # the new branch is shorter
        self.execution.write_head(new_head.hash)
        return HeadChange(old_head, new_head, ancestor, abandoned, adopted)

    def build_block(self, attrs: BlockAttributes, transactions: Sequence[Any]) -> ExecutedBlock:
        """Execute `transactions` on the head (leaving out those that do not fit) and commit the block
        as the new head.

        On a full disk this raises StoreFull and the chain stays as it was: nothing is committed, the
        head moves only after the commit, caches hold committed blocks only, and py-evm's state
        caches live in the VM of this one call. A retry once space is back builds the block anew."""
        with self.store.write_session():
            executed = self.execution.execute(self._stored_head(), attrs, transactions, building=True)
            self._extend(executed)
        self._refresh_head()
        return executed

    def import_block(self, block: Any, *, as_head: bool = False, settlement: tuple[tuple[bytes, int], ...] = ()) -> ExecutedBlock:
        """Execute a block built elsewhere on its parent's state (any known block) and store it.

        The head stays where it is unless `as_head`: then the block becomes the head in the same write
        transaction, as `set_head` would make it (use `set_head` to learn what a switch changed).
        `settlement`: under proof of stake, what consensus derived for the block's system call.
        InvalidBlock (an unknown parent, a block that does not reproduce its header), FinalizedRevert,
        or StoreFull on a full disk, leave the store and the head unchanged."""
        header = block.header
        parent = self.execution.header_by_hash(header.parent_hash)
        if parent is None:
            raise InvalidBlock(f"block {header.block_number}: unknown parent 0x{header.parent_hash.hex()}")
        with self.store.write_session():
            executed = self.execution.import_block(parent, block, settlement)
            head = self._stored_head()
            if as_head and parent.hash == head.hash:
                self._extend(executed)
            else:
                self._store_block(executed.block, executed.receipts, executed.senders, executed.system_logs)
                if as_head:
                    self._switch(head, executed.header)
        if as_head:
            self._refresh_head()
        return executed

    def set_head(self, block_hash: bytes) -> HeadChange:
        """Make the known block `block_hash` the head: its branch becomes the canonical chain.

        One write transaction rewrites the number index, the transaction lookups of every abandoned and
        adopted block, and the head pointer. Returns what changed, for the services (pool, filters,
        subscriptions). ChainError for an unknown block; FinalizedRevert, changing nothing, for a
        switch that would take a block at or below `finalized_number` off the canonical chain."""
        new_head = self.execution.header_by_hash(block_hash)
        if new_head is None:
            raise ChainError(f"unknown block 0x{block_hash.hex()}")
        with self.store.write_session():
            old_head = self._stored_head()
            if new_head.hash == old_head.hash:
                return HeadChange(old_head, old_head, old_head, (), ())
            change = self._switch(old_head, new_head)
        self._refresh_head()
        if change.abandoned:
            log.info(
                "reorganized head number=%d hash=0x%s ancestor=%d dropped=%d added=%d",
                new_head.block_number, new_head.hash.hex(), change.ancestor.block_number,
                len(change.abandoned), len(change.adopted),
            )
        return change

    def has_block(self, block_hash: bytes) -> bool:
        """Whether the block was imported (canonical or not): blocks extend it and heads switch to it."""
        return self.store.get(_BODY + block_hash) is not None

    # -- reads (committed data only) --

    def header_by_number(self, number: int) -> Any | None:
        if number < 0 or number > self.head.block_number:
            return None
        block_hash = self.execution.canonical_hash(number)
        return None if block_hash is None else self.execution.header_by_hash(block_hash)

    def header_by_hash(self, block_hash: bytes) -> Any | None:
        return self.execution.header_by_hash(block_hash)

    def is_canonical(self, header: Any) -> bool:
        return self.execution.canonical_hash(header.block_number) == header.hash

    def _load_block(self, block_hash: bytes) -> StoredBlock | None:
        """A stored block, read past the cache (the writer thread must not reorder it under readers)."""
        header = self.execution.header_by_hash(block_hash)
        body = self.store.get(_BODY + block_hash)
        if header is None or body is None:
            return None
        return StoredBlock(header, body, self.store[_RECEIPTS + block_hash], self.store.get(_SYSTEM_LOGS + block_hash))

    def block_by_hash(self, block_hash: bytes) -> StoredBlock | None:
        """A block by hash, canonical or not (eth_getBlockByHash serves side blocks, as geth does)."""
        cached = self._cache.get(block_hash)
        if cached is not None:
            self._cache.move_to_end(block_hash)
            return cached
        block = self._load_block(block_hash)
        if block is None:
            return None
        self._cache[block_hash] = block
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return block

    def block_by_number(self, number: int) -> StoredBlock | None:
        header = self.header_by_number(number)
        return None if header is None else self.block_by_hash(header.hash)

    def bloom_of(self, header: Any) -> int:
        """The bloom to pre-check log queries against (header bloom + system logs)."""
        if self.store.get(_SYSTEM_LOGS + header.hash) is None:
            return header.bloom
        return self.block_by_hash(header.hash).bloom

    def receipt_json(self, tx_hash: bytes) -> dict[str, Any] | None:
        """The receipt of a transaction, or of a block's system call by its synthetic hash."""
        location = self.transaction_location(tx_hash)
        if location is None:
            return None
        block, index = location
        if index == block.transaction_count:
            return block.system_receipt_json
        return block.receipt_json(index)

    def transaction_location(self, tx_hash: bytes) -> tuple[StoredBlock, int] | None:
        raw = self.store.get(_TX_INDEX + tx_hash)
        if raw is None:
            return None
        block_hash, _, index = rlp.decode(raw)
        block = self.block_by_hash(block_hash)
        if block is None or not self.is_canonical(block.header):
            return None
        return block, int.from_bytes(index, "big")

    def account(self, header: Any, address: bytes) -> tuple[int, int, bytes]:
        """(nonce, balance, code) after `header`."""
        return self.execution.account(header, address)

    def storage_at(self, header: Any, address: bytes, slot: int) -> int:
        return self.execution.storage_at(header, address, slot)
