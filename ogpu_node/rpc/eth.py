"""The eth_*, net_* and web3_* methods over a Chain and a TxPool (sans-IO: plain calls, JSON values).
Those that report on the p2p network (net_listening, net_peerCount, eth_syncing) are in net.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_hash.auto import keccak

from ogpu_node import CLIENT_VERSION
from ogpu_node.chain import Chain, StoredBlock
from ogpu_node.execution.calls import CallRequest, InvalidOverride, call, estimate_gas
from ogpu_node.execution.errors import CallFailed, ExecutionReverted
from ogpu_node.execution.views import transaction_view
from ogpu_node.rpc import params as p
from ogpu_node.rpc.calls import CallLimits, CallRunner
from ogpu_node.rpc.jsonrpc import EXECUTION_REVERTED, SERVER_ERROR, InvalidParams, RpcError
from ogpu_node.txpool import TxPool, TxRejected

DEFAULT_TIP = 1_000_000_000  # suggested priority fee, as anvil and geth --dev
MAX_FEE_HISTORY = 1024


class EthApi:
    def __init__(
        self,
        chain: Chain,
        pool: TxPool,
        on_transaction: Callable[[bytes], None],
        *,
        call_limits: CallLimits = CallLimits(),
        allow_unprotected_txs: bool = False,
        refuse_writes: Callable[[], str | None] = lambda: None,
        checkpoint_root: Callable[[str], bytes | None] = lambda tag: None,
    ) -> None:
        self.chain = chain
        self.pool = pool
        self.on_transaction = on_transaction
        self.calls = CallRunner(call_limits)
        self.allow_unprotected_txs = allow_unprotected_txs  # geth's --rpc.allow-unprotected-txs
        self.refuse_writes = refuse_writes  # why the node takes no transactions now (a full disk), or None
        # The block "safe" or "finalized" names: proof of stake's justified and finalized checkpoints;
        # None in --dev, where a block is final once sealed and both tags name the head.
        self.checkpoint_root = checkpoint_root

    def methods(self) -> dict[str, Callable[..., Any]]:
        names = [n for n in dir(self) if n.startswith(("eth_", "net_", "web3_"))]
        return {n: getattr(self, n) for n in names}

    # -- block resolution --

    def _header(self, block_id: tuple[str, Any]) -> Any:
        """The header a parsed block parameter (`p.block_id`) names; -32000 when there is none."""
        kind, *rest = block_id
        chain = self.chain
        if kind == "tag":
            root = self.checkpoint_root(rest[0]) if rest[0] in ("safe", "finalized") else None
            if root is not None:
                header = chain.header_by_hash(root)
            else:
                header = chain.header_by_number(0) if rest[0] == "earliest" else chain.head
        elif kind == "number":
            header = chain.header_by_number(rest[0])
        else:
            header = chain.header_by_hash(rest[0])
            if header is not None and rest[1] and not chain.is_canonical(header):
                raise RpcError(SERVER_ERROR, f"hash 0x{rest[0].hex()} is not currently canonical")
        if header is None:
            raise RpcError(SERVER_ERROR, "header not found")
        return header

    def _stored(self, block_id: tuple[str, Any]) -> StoredBlock | None:
        """The block a parsed block parameter names, or None: methods answer null for a missing block."""
        try:
            return self.chain.block_by_hash(self._header(block_id).hash)
        except RpcError:
            return None

    def _block_json(self, block: StoredBlock | None, full: bool) -> Any:
        if block is None:
            return None
        view = block.header_json()
        view["size"] = block.size
        view["uncles"] = []
        view["withdrawals"] = []
        view["totalDifficulty"] = 0
        if full:
            view["transactions"] = [block.transaction_json(i) for i in range(block.transaction_count)]
        else:
            view["transactions"] = block.transaction_hashes
        return p.to_json(view)

    def _pending_block_json(self, full: bool) -> Any:
        head = self.chain.head
        txs = self.pool.pending_in_order()
        return p.to_json({
            "number": head.block_number + 1,
            "hash": None,
            "parentHash": head.hash,
            "nonce": None,
            "miner": None,
            "timestamp": head.timestamp + 1,
            "gasLimit": head.gas_limit,
            "gasUsed": 0,
            "baseFeePerGas": self.next_base_fee(),
            "transactions": [tx.hash for tx in txs],
            "uncles": [],
        })

    def next_base_fee(self) -> int:
        return _base_fee_after(self.chain.head)

    # -- web3 / net --

    def web3_clientVersion(self, ctx: Any) -> str:
        return CLIENT_VERSION

    def web3_sha3(self, ctx: Any, value: Any) -> str:
        return "0x" + keccak(p.data(value)).hex()

    def net_version(self, ctx: Any) -> str:
        return str(self.chain.chain_id)

    # -- chain --

    def eth_chainId(self, ctx: Any) -> str:
        return hex(self.chain.chain_id)

    def eth_blockNumber(self, ctx: Any) -> str:
        return hex(self.chain.head.block_number)

    def eth_accounts(self, ctx: Any) -> list[str]:
        return []

    def eth_getBlockByNumber(self, ctx: Any, block: Any, full: Any = False) -> Any:
        block_id, full = p.block_id(block), p.boolean(full, "full transactions flag")
        if block_id == ("tag", "pending"):
            return self._pending_block_json(full)
        return self._block_json(self._stored(block_id), full)

    def eth_getBlockByHash(self, ctx: Any, block_hash: Any, full: Any = False) -> Any:
        return self._block_json(self.chain.block_by_hash(p.hash32(block_hash)), p.boolean(full, "full"))

    def eth_getBlockTransactionCountByNumber(self, ctx: Any, block: Any) -> Any:
        block_id = p.block_id(block)
        if block_id == ("tag", "pending"):
            return hex(self.pool.counts()[0])
        stored = self._stored(block_id)
        return None if stored is None else hex(stored.transaction_count)

    def eth_getBlockTransactionCountByHash(self, ctx: Any, block_hash: Any) -> Any:
        stored = self.chain.block_by_hash(p.hash32(block_hash))
        return None if stored is None else hex(stored.transaction_count)

    def eth_getUncleCountByBlockNumber(self, ctx: Any, block: Any) -> str | None:
        return None if self._stored(p.block_id(block)) is None else "0x0"  # no uncles under PoS

    def eth_getUncleCountByBlockHash(self, ctx: Any, block_hash: Any) -> str | None:
        return None if self.chain.block_by_hash(p.hash32(block_hash)) is None else "0x0"

    # -- state --

    def eth_getBalance(self, ctx: Any, addr: Any, block: Any = "latest") -> str:
        address, block_id = p.address(addr), p.block_id(block)
        return hex(self.chain.account(self._header(block_id), address)[1])

    def eth_getCode(self, ctx: Any, addr: Any, block: Any = "latest") -> str:
        address, block_id = p.address(addr), p.block_id(block)
        return "0x" + self.chain.account(self._header(block_id), address)[2].hex()

    def eth_getStorageAt(self, ctx: Any, addr: Any, slot: Any, block: Any = "latest") -> str:
        address, index, block_id = p.address(addr), p.quantity(slot, "storage slot"), p.block_id(block)
        value = self.chain.storage_at(self._header(block_id), address, index)
        return "0x" + value.to_bytes(32, "big").hex()

    def eth_getTransactionCount(self, ctx: Any, addr: Any, block: Any = "latest") -> str:
        sender, block_id = p.address(addr), p.block_id(block)
        if block_id == ("tag", "pending"):
            return hex(self.pool.next_nonce(sender))
        return hex(self.chain.account(self._header(block_id), sender)[0])

    # -- fees --

    def eth_gasPrice(self, ctx: Any) -> str:
        return hex(self.next_base_fee() + DEFAULT_TIP)

    def eth_maxPriorityFeePerGas(self, ctx: Any) -> str:
        return hex(DEFAULT_TIP)

    def eth_blobBaseFee(self, ctx: Any) -> str:
        return "0x1"

    def eth_feeHistory(self, ctx: Any, count: Any, newest: Any, percentiles: Any = None) -> Any:
        count = min(p.quantity(count, "block count"), MAX_FEE_HISTORY)
        block_id, percentiles = p.block_id(newest), p.reward_percentiles(percentiles)
        newest_header = self._header(block_id)
        if count == 0:
            return {"oldestBlock": "0x0", "baseFeePerGas": [], "gasUsedRatio": [], "reward": []}
        last = newest_header.block_number
        first = max(0, last - count + 1)
        base_fees, ratios, rewards = [], [], []
        for number in range(first, last + 1):
            block = self.chain.block_by_number(number)
            header = block.header
            base_fees.append(header.base_fee_per_gas)
            ratios.append(header.gas_used / header.gas_limit if header.gas_limit else 0.0)
            if percentiles:
                rewards.append([hex(r) for r in _rewards(block, percentiles)])
        base_fees.append(_base_fee_after(self.chain.header_by_number(last)))
        result: dict[str, Any] = {
            "oldestBlock": hex(first),
            "baseFeePerGas": [hex(b) for b in base_fees],
            "gasUsedRatio": ratios,
        }
        if percentiles:
            result["reward"] = rewards
        return result

    # -- execution --

    # Both run in a worker thread under --rpc.gascap and --rpc.evmtimeout (rpc/calls.py); parameters
    # are checked here first, so a malformed request never takes a thread.

    async def eth_call(self, ctx: Any, tx: Any, block: Any = "latest", overrides: Any = None, *_: Any) -> str:
        request, block_id, state = p.call_request(tx), p.block_id(block), p.state_overrides(overrides)
        return "0x" + (await self._execute(call, self._header(block_id), request, state)).hex()

    async def eth_estimateGas(self, ctx: Any, tx: Any, block: Any = "latest", overrides: Any = None) -> str:
        request, block_id, state = p.call_request(tx), p.block_id(block), p.state_overrides(overrides)
        return hex(await self._execute(estimate_gas, self._header(block_id), request, state))

    async def _execute(self, fn: Callable[..., Any], header: Any, request: CallRequest, overrides: Any) -> Any:
        try:
            return await self.calls.run(fn, self.chain.execution, header, request, overrides)
        except ExecutionReverted as exc:
            raise _reverted(exc) from None
        except InvalidOverride as exc:
            raise InvalidParams(str(exc)) from None
        except CallFailed as exc:  # includes ExecutionInterrupted: geth's "execution aborted (timeout = 5s)"
            raise RpcError(SERVER_ERROR, str(exc)) from None

    # -- transactions --

    def eth_sendRawTransaction(self, ctx: Any, raw: Any) -> str:
        refusal = self.refuse_writes()
        if refusal is not None:
            raise RpcError(SERVER_ERROR, refusal)
        try:
            tx_hash = self.pool.add_raw(p.data(raw, "transaction"), protected_only=not self.allow_unprotected_txs)
        except TxRejected as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None
        self.on_transaction(tx_hash)
        return "0x" + tx_hash.hex()

    def eth_getTransactionByHash(self, ctx: Any, tx_hash: Any) -> Any:
        tx_hash = p.hash32(tx_hash)
        location = self.chain.transaction_location(tx_hash)
        if location is not None:
            block, index = location
            if index < block.transaction_count:  # the system call has a receipt but no transaction
                return p.to_json(block.transaction_json(index))
            return None
        pooled = self.pool.get(tx_hash)
        if pooled is None:
            return None
        view = transaction_view(pooled[1], pooled[0])
        view.update(blockHash=None, blockNumber=None, transactionIndex=None)
        return p.to_json(view)

    def eth_getTransactionByBlockHashAndIndex(self, ctx: Any, block_hash: Any, index: Any) -> Any:
        return self._tx_at(self.chain.block_by_hash(p.hash32(block_hash)), p.quantity(index, "index"))

    def eth_getTransactionByBlockNumberAndIndex(self, ctx: Any, block: Any, index: Any) -> Any:
        block_id, position = p.block_id(block), p.quantity(index, "index")
        return self._tx_at(self._stored(block_id), position)

    @staticmethod
    def _tx_at(block: StoredBlock | None, index: int) -> Any:
        if block is None or index >= block.transaction_count:
            return None
        return p.to_json(block.transaction_json(index))

    def eth_getTransactionReceipt(self, ctx: Any, tx_hash: Any) -> Any:
        return p.to_json(self.chain.receipt_json(p.hash32(tx_hash)))

    def eth_getBlockReceipts(self, ctx: Any, block: Any) -> Any:
        stored = self._stored(p.block_id(block))
        return None if stored is None else p.to_json(stored.receipts_json)


def _base_fee_after(header: Any) -> int:
    """EIP-1559: the base fee of the block after `header`."""
    target = header.gas_limit // 2
    base = header.base_fee_per_gas
    if header.gas_used > target:
        return base + max(1, base * (header.gas_used - target) // target // 8)
    return base - base * (target - header.gas_used) // target // 8


def _reverted(exc: ExecutionReverted) -> RpcError:
    if not exc.data:
        return RpcError(SERVER_ERROR, "execution reverted")
    return RpcError(EXECUTION_REVERTED, str(exc), "0x" + exc.data.hex())


def _rewards(block: StoredBlock, percentiles: list[float]) -> list[int]:
    """Effective tips at the given gas-weighted percentiles, as geth computes them."""
    if block.transaction_count == 0:
        return [0] * len(percentiles)
    base_fee = block.header.base_fee_per_gas
    entries = []
    for receipt in block.receipts_json:
        entries.append((receipt["effectiveGasPrice"] - base_fee, receipt["gasUsed"]))
    entries.sort()
    out = []
    total = block.header.gas_used
    index, cumulative = 0, entries[0][1]
    for percentile in percentiles:
        threshold = total * percentile / 100
        while cumulative < threshold and index < len(entries) - 1:
            index += 1
            cumulative += entries[index][1]
        out.append(entries[index][0])
    return out
