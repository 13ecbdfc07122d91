"""A geth-style transaction pool.

Senders are recovered once, here; the block builder and the import path reuse the recovered objects.
Rejections carry geth's own messages (ethers and web3 match on them), checked in geth's order:
stateless checks first (size, type, chain id, gas limit, fees, signature, intrinsic gas), then the
sender's state (nonce, balance), then the pool's own rules (replacement, capacity).

A sender's transactions are *pending* from its state nonce up to the first gap, and *queued* after
it; filling the gap promotes the queued ones. When the pool is full, a newcomer must pay a higher
effective tip than the cheapest evictable transaction, which is some sender's highest nonce (so no
gap opens in the middle of a sender's run).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from ogpu_node.crypto.signatures import is_canonical_rs
from ogpu_node.execution.codec import (
    BLOB_TX_TYPE,
    MAX_INITCODE_SIZE,
    SET_CODE_TRANSACTION_TYPE,
    check_transaction,
    decode_transaction,
    floor_data_gas,
    recover_sender,
)
from ogpu_node.execution.errors import InvalidTransaction
from ogpu_node.execution.views import effective_tip

TX_MAX_SIZE = 128 * 1024  # geth's txMaxSize: 4 slots of 32 KiB
MAX_NONCE = (1 << 64) - 1  # EIP-2681: a nonce is below 2^64 - 1, so it can always be incremented
_HEAD_STATE_CACHE = 16_384  # accounts whose head state is kept between blocks


class TxRejected(Exception):
    """The pool refused a transaction; the message is geth's."""


@dataclass(frozen=True)
class PoolConfig:
    max_transactions: int = 5120 + 1024  # geth's global slots + global queue
    price_bump_percent: int = 10
    min_tip: int = 0  # wei; --dev accepts zero-tip transactions, as geth --dev does


def _cost(tx: Any) -> int:
    """The most a transaction can take from its sender: gas * fee cap + value (geth's tx.Cost())."""
    return tx.gas * tx.max_fee_per_gas + tx.value


@dataclass
class _Account:
    nonce: int  # the state's nonce at the head
    balance: int
    txs: dict[int, Any] = field(default_factory=dict)  # nonce -> tx, pending and queued
    cost: int = 0  # sum of _cost over txs

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
        self._accounts: dict[bytes, _Account] = {}  # only senders with transactions in the pool
        self._head_state: dict[bytes, tuple[int, int]] = {}  # (nonce, balance) reads at this head
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

    def _read_state(self, address: bytes) -> tuple[int, int]:
        """(nonce, balance) at the head, read once per head (on_new_head forgets them)."""
        state = self._head_state.get(address)
        if state is None:
            if len(self._head_state) >= _HEAD_STATE_CACHE:  # an idle chain has no new head to clear it
                self._head_state.clear()
            state = self._head_state[address] = self._read_account(address)
        return state

    def _fresh_account(self, sender: bytes) -> _Account:
        """The sender's entry with nonce and balance as of the head (a block may have paid it or
        included its transactions since); not stored until a transaction is admitted."""
        nonce, balance = self._read_state(sender)
        account = self._accounts.get(sender)
        if account is None:
            return _Account(nonce, balance)
        account.balance = balance
        if nonce != account.nonce:
            account.nonce = nonce
            for stale in [n for n in account.txs if n < nonce]:
                self._drop(sender, account.txs[stale])
        return account

    # -- admission --

    def add_raw(self, raw: bytes, *, protected_only: bool = False) -> bytes:
        """Validate and admit an encoded transaction; returns its hash or raises TxRejected.
        `protected_only`: refuse a legacy transaction signed without a chain id, which could be
        replayed on any chain (geth refuses them over RPC unless --rpc.allow-unprotected-txs)."""
        if len(raw) > TX_MAX_SIZE:
            raise TxRejected(f"oversized data: transaction size {len(raw)}, limit {TX_MAX_SIZE}")
        try:
            tx = decode_transaction(raw)
        except InvalidTransaction as exc:
            raise TxRejected(str(exc)) from None
        except Exception:  # untrusted bytes: py-evm raises other types for unknown type bytes
            if raw[0] >= 0xC0:
                raise TxRejected("rlp: invalid transaction encoding") from None
            raise TxRejected("transaction type not supported") from None
        if protected_only and tx.chain_id is None:
            raise TxRejected("only replay-protected (EIP-155) transactions allowed over RPC")
        return self.add(tx)

    def add(self, tx: Any, *, returning: bool = False) -> bytes:
        """Validate and admit a decoded transaction; returns its hash or raises TxRejected.
        `returning`: it comes back from a block a head switch abandoned; as geth, it may then wait
        below the base fee (pending once the fee falls) instead of being refused."""
        if tx.hash in self._by_hash:
            raise TxRejected("already known")
        sender = self._validate(tx, returning)
        base_fee, _ = self._head_view()
        account = self._fresh_account(sender)
        self._validate_against_state(tx, sender, account)
        old = account.txs.get(tx.nonce)
        if old is not None:
            self._check_replacement(old, tx)
            self._drop(sender, old)
        elif len(self._by_hash) >= self.config.max_transactions:
            self._make_room(tx, base_fee)
        account.txs[tx.nonce] = tx
        account.cost += _cost(tx)
        self._accounts[sender] = account
        self._by_hash[tx.hash] = (sender, tx)
        self._arrived[tx.hash] = next(self._arrival)
        return tx.hash

    def _validate(self, tx: Any, returning: bool = False) -> bytes:
        """geth's ValidateTransaction: checks that need no state. Returns the recovered sender."""
        size = len(tx.encode())
        if size > TX_MAX_SIZE:
            raise TxRejected(f"oversized data: transaction size {size}, limit {TX_MAX_SIZE}")
        kind = tx.type_id
        if kind == BLOB_TX_TYPE:
            raise TxRejected("transaction type not supported")
        if tx.chain_id is not None and tx.chain_id != self.chain_id:
            raise TxRejected("invalid chain id for signer")
        if not tx.to:
            if kind == SET_CODE_TRANSACTION_TYPE:
                raise TxRejected("EIP-7702 transaction cannot be used to create contract")
            if len(tx.data) > MAX_INITCODE_SIZE:
                raise TxRejected(f"max initcode size exceeded: code size {len(tx.data)}, limit {MAX_INITCODE_SIZE}")
        if kind == SET_CODE_TRANSACTION_TYPE and not tx.authorization_list:
            raise TxRejected("EIP-7702 transaction with empty auth list")
        if tx.nonce >= MAX_NONCE:  # before py-evm's field checks, which would call it a bad signature
            raise TxRejected(f"nonce has max value: nonce {tx.nonce}")
        base_fee, gas_limit = self._head_view()
        if tx.gas > gas_limit:
            raise TxRejected("exceeds block gas limit")
        max_fee, tip = tx.max_fee_per_gas, tx.max_priority_fee_per_gas
        if tip > max_fee:
            raise TxRejected("max priority fee per gas higher than max fee per gas")
        # Intrinsic gas before the signature: py-evm checks it only for legacy transactions, inside
        # validate(), with a message that would read as a bad signature.
        intrinsic = tx.intrinsic_gas
        if tx.gas < intrinsic:
            raise TxRejected(f"intrinsic gas too low: gas {tx.gas}, minimum needed {intrinsic}")
        floor = floor_data_gas(tx.data)
        if tx.gas < floor:
            raise TxRejected(f"insufficient gas for floor data gas cost: gas {tx.gas}, minimum needed {floor}")
        # EIP-2 low-s rule for every type (py-evm checks it for none), so a signature has one form.
        if not is_canonical_rs(tx.r, tx.s):
            raise TxRejected("invalid sender: invalid transaction v, r, s values")
        try:
            check_transaction(tx)
            sender = recover_sender(tx)
        except Exception:  # InvalidTransaction, or one of the several types py-evm raises for a bad signature
            raise TxRejected("invalid sender") from None
        if tip < self.config.min_tip:
            raise TxRejected(f"transaction underpriced: gas tip cap {tip}, minimum needed {self.config.min_tip}")
        if max_fee < base_fee and not returning:
            raise TxRejected(
                f"max fee per gas less than block base fee: address {to_checksum_address(sender)}, "
                f"maxFeePerGas: {max_fee}, baseFee: {base_fee}"
            )
        return sender

    @staticmethod
    def _validate_against_state(tx: Any, sender: bytes, account: _Account) -> None:
        """geth's ValidateTransactionWithState: nonce, then balance including the sender's other pooled
        transactions (so a sender cannot queue more than it can pay for)."""
        if tx.nonce < account.nonce:
            raise TxRejected(f"nonce too low: next nonce {account.nonce}, tx nonce {tx.nonce}")
        balance, cost = account.balance, _cost(tx)
        if balance < cost:
            raise TxRejected(
                f"insufficient funds for gas * price + value: balance {balance}, "
                f"tx cost {cost}, overshot {cost - balance}"
            )
        old = account.txs.get(tx.nonce)
        spent = account.cost - (0 if old is None else _cost(old))
        if balance < spent + cost:
            raise TxRejected(
                f"insufficient funds for gas * price + value: balance {balance}, "
                f"queued cost {spent}, tx cost {cost}, overshot {spent + cost - balance}"
            )

    def _check_replacement(self, old: Any, new: Any) -> None:
        """geth: both the fee cap and the tip must rise, each by at least price_bump_percent."""
        bump = 100 + self.config.price_bump_percent
        fee_floor = old.max_fee_per_gas * bump // 100
        tip_floor = old.max_priority_fee_per_gas * bump // 100
        if (
            new.max_fee_per_gas <= old.max_fee_per_gas
            or new.max_priority_fee_per_gas <= old.max_priority_fee_per_gas
            or new.max_fee_per_gas < fee_floor
            or new.max_priority_fee_per_gas < tip_floor
        ):
            raise TxRejected("replacement transaction underpriced")

    def _make_room(self, incoming: Any, base_fee: int) -> None:
        """Evict the cheapest tail transaction (a sender's highest nonce, so no gap opens), newest first
        on a tie, if the incoming one pays a strictly higher effective tip; else reject it."""
        cheapest = None
        for sender, account in self._accounts.items():
            tail = account.txs[max(account.txs)]
            key = (effective_tip(tail, base_fee), -self._arrived[tail.hash])
            if cheapest is None or key < cheapest[0]:
                cheapest = (key, sender, tail)
        if cheapest is None or effective_tip(incoming, base_fee) <= cheapest[0][0]:
            raise TxRejected("transaction underpriced")
        self._drop(cheapest[1], cheapest[2])

    def _drop(self, sender: bytes, tx: Any) -> None:
        account = self._accounts.get(sender)
        if account is not None and account.txs.get(tx.nonce) is tx:
            del account.txs[tx.nonce]
            account.cost -= _cost(tx)
            if not account.txs:
                del self._accounts[sender]
        self._by_hash.pop(tx.hash, None)
        self._arrived.pop(tx.hash, None)

    # -- views --

    def next_nonce(self, sender: bytes) -> int:
        """The nonce for the sender's next transaction, counting its pending ones (`pending` tag)."""
        account = self._accounts.get(sender)
        if account is None:
            return self._read_state(sender)[0]
        return account.pending_end()

    def counts(self) -> tuple[int, int]:
        """(pending, queued) transaction counts."""
        pending = sum(a.pending_end() - a.nonce for a in self._accounts.values())
        return pending, len(self._by_hash) - pending

    def has_pending(self) -> bool:
        """Whether a block built now would include something (a pending tx paying the base fee)."""
        base_fee, _ = self._head_view()
        for account in self._accounts.values():
            tx = account.txs.get(account.nonce)
            if tx is not None and tx.max_fee_per_gas >= base_fee:
                return True
        return False

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

    def on_new_head(self, senders: Iterable[bytes], dropped: Iterable[Any] = ()) -> None:
        """Call after every change of head: forget the state read at the old head, re-read the senders
        the block touched, drop what it included or made invalid.

        `dropped`: transactions the builder found invalid against the state (never includable).
        """
        self._head_state.clear()
        for tx in dropped:
            entry = self._by_hash.get(tx.hash)
            if entry is not None:
                self._drop(entry[0], entry[1])
        for sender in senders:
            if sender in self._accounts:
                self._fresh_account(sender)

    def on_reorg(self, returned: Iterable[Any], senders: Iterable[bytes]) -> list[bytes]:
        """Call after a head switch: forget the old head's state, re-read the `senders` of every
        abandoned and adopted block (dropping what the new branch included), and take back the
        `returned` transactions (abandoned blocks' ones the new branch lacks), in chain order so each
        sender's come in nonce order. One the new state refuses (its nonce used by another
        transaction, funds gone) is dropped, as geth drops it. Returns the hashes taken back."""
        self.on_new_head(senders)
        taken: list[bytes] = []
        for tx in returned:
            try:
                taken.append(self.add(tx, returning=True))
            except TxRejected:
                continue
        return taken
