"""Canonical chain over one LMDB store.

A block is written in one write session: its state nodes (by execution), header, body with senders,
receipts, the transaction index, the canonical number, then the head pointer; LMDB commits it at once.
Readers see committed blocks only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import rlp
from eth_bloom import BloomFilter
from eth_hash.auto import keccak

from ogpu_node.config import GenesisConfig
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_receipt, decode_transaction, encode_transaction
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.execution.state import BlockAttributes, ExecutedBlock, Execution
from ogpu_node.execution.views import header_view, receipt_view, transaction_view

log = logging.getLogger("ogpu.chain")

_GENESIS_KEY = b"ogpu:genesis"
_BODY = b"ogpu:body:"
_RECEIPTS = b"ogpu:rcpt:"
_TX_INDEX = b"ogpu:txi:"
_SYSTEM_LOGS = b"ogpu:sys:"
SYSTEM_ADDRESS = bytes.fromhex("fffffffffffffffffffffffffffffffffffffffe")


def system_tx_hash(number: int) -> bytes:
    """The synthetic transaction hash the start-of-block system call's logs are served under."""
    return keccak(b"ogpu-system" + number.to_bytes(32, "big"))


class ChainError(Exception):
    """The datadir or a request does not fit this chain (wrong genesis, unknown block)."""


@dataclass
class StoredBlock:
    """A committed block, decoded lazily: RPC reads often need only the header."""

    header: Any
    _body: bytes
    _receipts: bytes
    _system_logs: bytes | None = None

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def number(self) -> int:
        return self.header.block_number

    @cached_property
    def _decoded_body(self) -> tuple[list[bytes], list[bytes]]:
        encoded_txs, senders = rlp.decode(self._body)
        return encoded_txs, senders

    @property
    def transaction_count(self) -> int:
        return len(self._decoded_body[0])

    @cached_property
    def size(self) -> int:
        """Length of the block's RLP ([header, transactions, uncles, withdrawals]), from stored bytes."""

        def list_length(payload: int) -> int:
            return payload + (1 if payload < 56 else 1 + (payload.bit_length() + 7) // 8)

        def item_length(raw: bytes) -> int:  # a typed transaction is wrapped as a byte string
            return len(raw) if raw[0] >= 0xC0 else len(rlp.encode(raw))

        txs = list_length(sum(item_length(raw) for raw in self._decoded_body[0]))
        return list_length(len(rlp.encode(self.header)) + txs + 1 + 1)

    @cached_property
    def transaction_hashes(self) -> list[bytes]:
        # The encoding stored is the one hashed (RLP for legacy, type ‖ payload for typed).
        return [keccak(raw) for raw in self._decoded_body[0]]

    def transaction(self, index: int) -> Any:
        cache = self.__dict__.setdefault("_transaction_cache", {})
        if index not in cache:
            cache[index] = decode_transaction(self._decoded_body[0][index])
        return cache[index]

    @cached_property
    def transactions(self) -> list[Any]:
        return [self.transaction(index) for index in range(self.transaction_count)]

    @property
    def senders(self) -> list[bytes]:
        return self._decoded_body[1]

    @cached_property
    def receipts(self) -> list[Any]:
        return [decode_receipt(raw) for raw in rlp.decode(self._receipts)]

    @cached_property
    def system_logs(self) -> list[tuple[bytes, list[bytes], bytes]]:
        if self._system_logs is None:
            return []
        return [(address, list(topics), data) for address, topics, data in rlp.decode(self._system_logs)]

    @property
    def system_tx_hash(self) -> bytes:
        return system_tx_hash(self.number)

    @cached_property
    def _system_bloom(self) -> int:
        bloom = BloomFilter()
        for address, topics, _ in self.system_logs:
            bloom.add(address)
            for topic in topics:
                bloom.add(topic)
        return int(bloom)

    @cached_property
    def bloom(self) -> int:
        """The header's bloom, plus the system call's logs (which no receipt root covers)."""
        return self.header.bloom | self._system_bloom

    @cached_property
    def system_receipt_json(self) -> dict[str, Any] | None:
        """A receipt for the system call: status 1, no gas, its logs first in the block."""
        if not self.system_logs:
            return None
        index = self.transaction_count  # after the real transactions, as Bor's state-sync receipts
        logs = [
            {
                "address": address, "topics": topics, "data": data, "blockHash": self.hash,
                "blockNumber": self.number, "transactionHash": self.system_tx_hash,
                "transactionIndex": index, "logIndex": i, "removed": False,
            }
            for i, (address, topics, data) in enumerate(self.system_logs)
        ]
        return {
            "transactionHash": self.system_tx_hash, "type": 0, "from": SYSTEM_ADDRESS, "to": None,
            "status": 1, "cumulativeGasUsed": 0, "gasUsed": 0, "effectiveGasPrice": 0,
            "contractAddress": None, "logsBloom": self._system_bloom.to_bytes(256, "big"), "logs": logs,
            "blockHash": self.hash, "blockNumber": self.number, "transactionIndex": index,
        }

    def logs_json(self) -> list[dict[str, Any]]:
        """Every log of the block in order: the system call's, then each transaction's."""
        system = self.system_receipt_json
        out = list(system["logs"]) if system else []
        for receipt in self.receipts_json:
            out.extend(receipt["logs"])
        return out

    def header_json(self) -> dict[str, Any]:
        return header_view(self.header)

    def transaction_json(self, index: int) -> dict[str, Any]:
        view = transaction_view(self.transaction(index), self.senders[index])
        view.update(blockHash=self.hash, blockNumber=self.number, transactionIndex=index)
        if view["type"] == 2 or view["type"] == 4:
            tx = self.transaction(index)
            view["gasPrice"] = min(tx.max_fee_per_gas, self.header.base_fee_per_gas + tx.max_priority_fee_per_gas)
        return view

    @cached_property
    def _first_log_index(self) -> list[int]:
        """Block-wide index of each transaction's first log (the system call's logs come first)."""
        out, next_index = [], len(self.system_logs)
        for receipt in self.receipts:
            out.append(next_index)
            next_index += len(receipt.logs)
        return out

    def receipt_json(self, index: int) -> dict[str, Any]:
        """One transaction's receipt, decoding only that transaction (RPC polls them one by one)."""
        receipts = self.receipts
        previous = receipts[index - 1].gas_used if index else 0
        log_index = self._first_log_index[index]
        tx = self.transaction(index)
        view = receipt_view(receipts[index], tx, self.senders[index], previous, self.header.base_fee_per_gas)
        view.update(blockHash=self.hash, blockNumber=self.number, transactionIndex=index)
        for offset, entry in enumerate(view["logs"]):
            entry.update(
                blockHash=self.hash, blockNumber=self.number, transactionHash=tx.hash,
                transactionIndex=index, logIndex=log_index + offset, removed=False,
            )
        return view

    @cached_property
    def receipts_json(self) -> list[dict[str, Any]]:
        return [self.receipt_json(index) for index in range(self.transaction_count)]


class Chain:
    """The canonical chain of one datadir. Deterministic and synchronous: services call it."""

    def __init__(self, store: LMDBStore, genesis: GenesisConfig, cache_blocks: int = 256) -> None:
        self.store = store
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.execution = Execution(store, genesis)
        self._cache: OrderedDict[bytes, StoredBlock] = OrderedDict()
        self._cache_size = cache_blocks
        stored = store.get(_GENESIS_KEY)
        expected = self.execution.genesis_block
        if stored is None:
            with store.write_session():
                self.execution.write_genesis_state()
                self._write_block(expected, (), ())
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

    # -- writes --

    def _write_block(
        self, block: Any, receipts: Sequence[Any], senders: Sequence[bytes], system_logs: Sequence[Any] = ()
    ) -> None:
        header = block.header
        execution = self.execution
        execution.write_header(header)
        self.store[_BODY + header.hash] = rlp.encode(
            [[encode_transaction(tx) for tx in block.transactions], list(senders)]
        )
        self.store[_RECEIPTS + header.hash] = rlp.encode([r.encode() for r in receipts])
        number = rlp.encode(header.block_number)
        for index, tx in enumerate(block.transactions):
            self.store[_TX_INDEX + tx.hash] = rlp.encode([header.hash, number, index])
        if system_logs:
            self.store[_SYSTEM_LOGS + header.hash] = rlp.encode([list(entry) for entry in system_logs])
            self.store[_TX_INDEX + system_tx_hash(header.block_number)] = rlp.encode(
                [header.hash, number, len(block.transactions)]
            )
        execution.write_canonical(header.block_number, header.hash)
        execution.write_head(header.hash)

    def _commit(self, executed: ExecutedBlock) -> None:
        self._write_block(executed.block, executed.receipts, executed.senders, executed.system_logs)

    def build_block(self, attrs: BlockAttributes, transactions: Sequence[Any]) -> ExecutedBlock:
        """Execute `transactions` on the head (leaving out those that do not fit) and commit the block.

        On a full disk this raises StoreFull and the chain stays as it was: nothing is committed, the
        head moves only after the commit, caches hold committed blocks only, and py-evm's state
        caches live in the VM of this one call. A retry once space is back builds the block anew."""
        with self.store.write_session():
            executed = self.execution.execute(self.head, attrs, transactions, building=True)
            self._commit(executed)
        self.head = executed.header
        return executed

    def import_block(self, block: Any) -> ExecutedBlock:
        """Import a block built elsewhere on top of the head; InvalidBlock, or StoreFull on a full disk,
        leaves the store and the head unchanged."""
        if block.header.parent_hash != self.head.hash:
            raise InvalidBlock(f"block {block.header.block_number} does not extend the head")
        with self.store.write_session():
            executed = self.execution.import_block(self.head, block)
            self._commit(executed)
        self.head = executed.header
        return executed

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

    def block_by_hash(self, block_hash: bytes) -> StoredBlock | None:
        cached = self._cache.get(block_hash)
        if cached is not None:
            self._cache.move_to_end(block_hash)
            return cached
        header = self.execution.header_by_hash(block_hash)
        body = self.store.get(_BODY + block_hash)
        if header is None or body is None:
            return None
        block = StoredBlock(header, body, self.store[_RECEIPTS + block_hash], self.store.get(_SYSTEM_LOGS + block_hash))
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
