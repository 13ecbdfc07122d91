"""A geth-style transaction pool.

Senders are recovered once, here; the block builder and the import path reuse the recovered objects.
Rejections carry geth's own messages (ethers and web3 match on them).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ogpu_node.execution.codec import check_transaction, decode_transaction
from ogpu_node.execution.errors import InvalidTransaction
from ogpu_node.execution.views import effective_tip

TX_MAX_SIZE = 128 * 1024  # geth's txMaxSize: 4 slots of 32 KiB


class TxRejected(Exception):
    """The pool refused a transaction; the message is geth's."""


@dataclass(frozen=True)
class PoolConfig:
    max_transactions: int = 5120 + 1024  # geth's global slots + global queue
    price_bump_percent: int = 10
    min_tip: int = 0  # wei; --dev accepts zero-tip transactions, as geth --dev does


@dataclass
class _Account:
    nonce: int  # the state's nonce at the head
    balance: int
    txs: dict[int, Any] = field(default_factory=dict)  # nonce -> tx, pending and queued

    def pending_end(self) -> int:
        """First nonce after the contiguous run starting at the state nonce."""
        nonce = self.nonce
        while nonce in self.txs:
            nonce += 1
        return nonce


class TxPool:
    """Holds transactions until a block includes them. Not thread-safe: one owner (the node loop)."""

    def __init__(
        self,
        chain_id: int,
        account_reader: Callable[[bytes], tuple[int, int]],
        head_view: Callable[[], tuple[int, int]],
        config: PoolConfig = PoolConfig(),
    ) -> None:
        """`account_reader(address) -> (nonce, balance)` at the head; `head_view() -> (next base fee, gas limit)`."""
        self.chain_id = chain_id
        self.config = config
        self._read_account = account_reader
        self._head_view = head_view
        self._accounts: dict[bytes, _Account] = {}
        self._by_hash: dict[bytes, tuple[bytes, Any]] = {}
        self._arrival = itertools.count()
        self._arrived: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def get(self, tx_hash: bytes) -> tuple[bytes, Any] | None:
        """(sender, tx) of a transaction in the pool."""
        return self._by_hash.get(tx_hash)

    def _account(self, sender: bytes) -> _Account:
        account = self._accounts.get(sender)
        if account is None:
            nonce, balance = self._read_account(sender)
            account = _Account(nonce, balance)
            self._accounts[sender] = account
        return account

    # -- admission --

    def add_raw(self, raw: bytes) -> bytes:
        """Validate and admit an encoded transaction; returns its hash or raises TxRejected."""
        if len(raw) > TX_MAX_SIZE:
            raise TxRejected("oversized data")
        try:
            tx = decode_transaction(raw)
        except InvalidTransaction as exc:
            raise TxRejected(str(exc)) from None
        return self.add(tx)

    def add(self, tx: Any) -> bytes:
        if tx.hash in self._by_hash:
            raise TxRejected("already known")
        if tx.chain_id is not None and tx.chain_id != self.chain_id:
            raise TxRejected("invalid chain id for signer")
        try:
            check_transaction(tx)
        except InvalidTransaction as exc:
            message = str(exc)
            raise TxRejected(message if "intrinsic gas" in message else "invalid sender") from None
        try:
            sender = tx.sender
        except Exception:  # py-evm raises several types for a bad signature
            raise TxRejected("invalid sender") from None
        base_fee, gas_limit = self._head_view()
        if tx.gas > gas_limit:
            raise TxRejected("exceeds block gas limit")
        max_fee = tx.max_fee_per_gas
        tip = tx.max_priority_fee_per_gas
        if tip > max_fee:
            raise TxRejected("max priority fee per gas higher than max fee per gas")
        if tip < self.config.min_tip:
            raise TxRejected("transaction underpriced")
        if max_fee < base_fee:
            raise TxRejected(
                f"max fee per gas less than block base fee: address 0x{sender.hex()}, "
                f"maxFeePerGas: {max_fee}, baseFee: {base_fee}"
            )
        account = self._account(sender)
        if tx.nonce < account.nonce:
            raise TxRejected(f"nonce too low: next nonce {account.nonce}, tx nonce {tx.nonce}")
        cost = tx.gas * max_fee + tx.value
        if account.balance < cost:
            raise TxRejected(
                f"insufficient funds for gas * price + value: balance {account.balance}, "
                f"tx cost {cost}, overshot {cost - account.balance}"
            )
        old = account.txs.get(tx.nonce)
        if old is not None:
            bump = 100 + self.config.price_bump_percent
            if tx.max_fee_per_gas * 100 < old.max_fee_per_gas * bump or (
                tx.max_priority_fee_per_gas * 100 < old.max_priority_fee_per_gas * bump
            ):
                raise TxRejected("replacement transaction underpriced")
            self._drop(sender, old)
        elif len(self._by_hash) >= self.config.max_transactions:
            self._make_room(tx, base_fee)
        account.txs[tx.nonce] = tx
        self._by_hash[tx.hash] = (sender, tx)
        self._arrived[tx.hash] = next(self._arrival)
        return tx.hash

    def _make_room(self, incoming: Any, base_fee: int) -> None:
        """Evict the cheapest tail transaction (a sender's highest nonce, so no gap opens) if it pays less."""
        cheapest = None
        for sender, account in self._accounts.items():
            if not account.txs:
                continue
            tail = account.txs[max(account.txs)]
            key = (effective_tip(tail, base_fee), -self._arrived[tail.hash])
            if cheapest is None or key < cheapest[0]:
                cheapest = (key, sender, tail)
        if cheapest is None or effective_tip(incoming, base_fee) <= cheapest[0][0]:
            raise TxRejected("transaction underpriced")
        self._drop(cheapest[1], cheapest[2])

    def _drop(self, sender: bytes, tx: Any) -> None:
        account = self._accounts[sender]
        if account.txs.get(tx.nonce) is tx:
            del account.txs[tx.nonce]
        self._by_hash.pop(tx.hash, None)
        self._arrived.pop(tx.hash, None)

    # -- views --

    def next_nonce(self, sender: bytes) -> int:
        """The nonce for the sender's next transaction, counting its pending ones (`pending` tag)."""
        account = self._accounts.get(sender)
        if account is None:
            return self._read_account(sender)[0]
        return account.pending_end()

    def counts(self) -> tuple[int, int]:
        """(pending, queued) transaction counts."""
        pending = sum(a.pending_end() - a.nonce for a in self._accounts.values())
        return pending, len(self._by_hash) - pending

    def has_pending(self) -> bool:
        return any(a.nonce in a.txs for a in self._accounts.values())

    def pending_in_order(self) -> list[Any]:
        """Pending transactions ordered for a block: nonce order per sender, highest tip first across
        senders, earliest arrival on ties (geth's price-and-nonce order)."""
        base_fee, _ = self._head_view()
        heads: list[tuple[int, int, bytes, int]] = []
        for sender, account in self._accounts.items():
            tx = account.txs.get(account.nonce)
            if tx is not None and tx.max_fee_per_gas >= base_fee:
                heads.append((-effective_tip(tx, base_fee), self._arrived[tx.hash], sender, account.nonce))
        heapq.heapify(heads)
        ordered = []
        while heads:
            _, _, sender, nonce = heapq.heappop(heads)
            account = self._accounts[sender]
            ordered.append(account.txs[nonce])
            following = account.txs.get(nonce + 1)
            if following is not None and following.max_fee_per_gas >= base_fee:
                heapq.heappush(
                    heads,
                    (-effective_tip(following, base_fee), self._arrived[following.hash], sender, nonce + 1),
                )
        return ordered

    # -- after a block --

    def on_new_head(self, senders: set[bytes], dropped: list[Any] = ()) -> None:
        """Re-read the accounts a block touched, drop what it included or made invalid.

        `dropped`: transactions the builder found invalid against the state (never includable).
        """
        for tx in dropped:
            entry = self._by_hash.get(tx.hash)
            if entry is not None:
                self._drop(entry[0], tx)
        for sender in senders:
            account = self._accounts.get(sender)
            if account is None:
                continue
            account.nonce, account.balance = self._read_account(sender)
            for nonce in [n for n in account.txs if n < account.nonce]:
                self._drop(sender, account.txs[nonce])
            if not account.txs:
                del self._accounts[sender]
