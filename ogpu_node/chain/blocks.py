"""A committed block as the RPC reads it: decoded lazily, with its receipts, logs and system-call logs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import rlp
from eth_bloom import BloomFilter
from eth_hash.auto import keccak

from ogpu_node.execution.codec import decode_receipt, decode_transaction
from ogpu_node.execution.views import header_view, receipt_view, transaction_view

SYSTEM_ADDRESS = bytes.fromhex("fffffffffffffffffffffffffffffffffffffffe")


def system_tx_hash(block_hash: bytes) -> bytes:
    """The synthetic transaction hash the start-of-block system call's logs are served under:
    keccak("ogpu-system" ‖ block hash), so two branches at one height never share it (DESIGN.md §2)."""
    return keccak(b"ogpu-system" + block_hash)


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

    def encode(self) -> bytes:
        """The block's RLP ([header, transactions, uncles, withdrawals]) from the stored bytes, as a peer
        receives it: a typed transaction is a byte string in it, a legacy one the list it encodes."""
        txs = [raw if raw[0] < 0xC0 else rlp.decode(raw) for raw in self._decoded_body[0]]
        return rlp.encode([self.header, txs, [], []])

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
        return system_tx_hash(self.hash)

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
