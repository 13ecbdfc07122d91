"""The node: one trio nursery running block production and the RPC servers over one Chain."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ogpu_node.blobs import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_FREE_BYTES,
    BlobKeeper,
    BlobLedger,
    BlobStore,
    LedgerFull,
    UploadGate,
    UploadLimits,
    chain_standing,
)
from ogpu_node.chain import Chain, HeadChange
from ogpu_node.config import GenesisConfig
from ogpu_node.consensus import ValidatorKey
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore, StoreFull
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.node.network import NodeNetwork, P2PConfig
from ogpu_node.node.pos import ProofOfStake
from ogpu_node.node.slashing_protection import SlashingProtection
from ogpu_node.node.validator import ValidatorService
from ogpu_node.rpc.access import HttpAccess
from ogpu_node.rpc.blobs_http import BlobRoutes
from ogpu_node.rpc.calls import CallLimits
from ogpu_node.rpc.eth import EthApi
from ogpu_node.rpc.filters import FilterApi
from ogpu_node.rpc.jsonrpc import JsonRpcProcessor
from ogpu_node.rpc.net import NetApi, NoNetwork
from ogpu_node.rpc.ogpu import OgpuConsensusApi
from ogpu_node.rpc.server import HttpServer, ServerLimits, WebSocketServer
from ogpu_node.rpc.streams import StreamService
from ogpu_node.txpool import PoolConfig, TxPool

log = logging.getLogger("ogpu.node")

_RANDAO_DOMAIN = b"ogpu/dev-randao"
_DISK_RETRY_S = 1.0  # while the chain database is out of disk space, one sealing attempt per second
DISK_FULL_REFUSAL = "node is out of disk space; transactions are not accepted until space is freed"


@dataclass(frozen=True)
class NodeConfig:
    datadir: Path
    genesis: GenesisConfig
    signer: Keypair | None  # --dev: the single validator that seals every block; None on proof of stake
    block_time: float = 0.0  # 0: seal as soon as transactions arrive
    http_addr: str = "127.0.0.1"
    http_port: int = 8545
    ws_port: int | None = 8546  # None: no WebSocket server
    limits: ServerLimits = field(default_factory=ServerLimits)
    pool: PoolConfig = field(default_factory=PoolConfig)
    durable: bool = True  # fsync every block; --dev turns it off, as a dev chain favours speed
    blob_max_bytes: int = DEFAULT_MAX_BYTES  # per-blob cap of the blob store (HTTP 413 above it)
    blob_min_free: int = DEFAULT_MIN_FREE_BYTES  # free disk uploads always leave (HTTP 507 below it)
    blob_uploads: UploadLimits = field(default_factory=UploadLimits)  # who may upload, how much, how long
    calls: CallLimits = field(default_factory=CallLimits)  # --rpc.gascap, --rpc.evmtimeout
    allow_unprotected_txs: bool = False  # --rpc.allow-unprotected-txs
    access: HttpAccess = field(default_factory=HttpAccess)  # --http.vhosts, --http.corsdomain, --ws.origins
    validator: ValidatorKey | None = None  # proof of stake: --keystore's key; None: a full node
    p2p: P2PConfig | None = None  # proof of stake: the network (--port, --bootnodes); None: no peers


def dev_mix_hash(signer: Keypair, parent_mix: bytes, number: int) -> bytes:
    """keccak(parent mix ‖ signer's signature over the block number): a fresh, verifiable seed per block."""
    reveal = signer.sign_hash(keccak(_RANDAO_DOMAIN + number.to_bytes(8, "big")))
    return keccak(parent_mix + reveal)


class Node:
    # The failure of the last sealing attempt while the chain database is out of disk space, else None.
    _store_full: StoreFull | None = None
    _nursery: trio.Nursery | None = None  # the node's, while it runs

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.blobs = BlobStore(config.datadir / "blobs", config.blob_max_bytes, config.blob_min_free)
        self.store = LMDBStore(config.datadir / "chaindata", durable=config.durable)
        self.protection: SlashingProtection | None = None  # the validator key's slashing-protection record
        try:
            self.chain = Chain(self.store, config.genesis)
            if config.validator is not None and config.genesis.consensus is not None:
                self.protection = SlashingProtection.open(config.datadir, config.validator.address,
                                                          self.chain.genesis_hash)
            # A proof-of-stake genesis: blocks come from the validator service (node/validator.py).
            self.pos = None if config.genesis.consensus is None else \
                ProofOfStake(self.chain, config.genesis.consensus, config.validator, self.protection)
            self.blob_ledger = BlobLedger(config.datadir / "blobs" / "ledger")
        except BaseException:
            if self.protection is not None:
                self.protection.close()
            self.store.close()
            raise
        self.blob_gate = UploadGate(
            self.blobs, self.blob_ledger, config.genesis.chain_id, chain_standing(self.chain), config.blob_uploads
        )
        self.blob_keeper = BlobKeeper(self.chain, self.blobs, self.blob_ledger, config.blob_uploads.ttl_s)
        self.pool = TxPool(config.genesis.chain_id, self._read_account, self._head_view, config.pool)
        self._tx_arrived = trio.Event()
        # Held while the head moves (a block sealed, a head switch): a block is built on the head its
        # attributes were made for, and subscribers hear of changes in the order they happened.
        self._head_lock = trio.Lock()
        self.eth = EthApi(
            self.chain, self.pool, self._on_transaction,
            call_limits=config.calls, allow_unprotected_txs=config.allow_unprotected_txs,
            refuse_writes=self._refuse_writes,
            checkpoint_root=self._checkpoint_root,
        )
        self.filters = FilterApi(self.chain, self._checkpoint_root)
        ogpu = {} if self.pos is None else OgpuConsensusApi(self.pos.core, filters=self.filters).methods()
        # Proof of stake with --port: gossip, requests and sync (node/network.py).
        self.network = None if self.pos is None or config.p2p is None else NodeNetwork(self, config.p2p)
        net = NetApi(self.network or NoNetwork(self.chain), config.genesis.chain_id)
        self.streams = StreamService(self.chain)  # stream requests served by providers (docs/streams.md)
        self.rpc = JsonRpcProcessor({**self.eth.methods(), **self.filters.methods(), **ogpu, **net.methods(),
                                     **self.streams.methods()})
        self.http_port: int | None = None
        self.ws_port: int | None = None
        # Hashes for newPendingTransactions subscribers; bounded, a burst beyond it is not announced.
        self._pending_out, self._pending_in = trio.open_memory_channel[bytes](10_000)

    # -- pool callbacks --

    def _read_account(self, address: bytes) -> tuple[int, int]:
        nonce, balance, _ = self.chain.account(self.chain.head, address)
        return nonce, balance

    def _head_view(self) -> tuple[int, int]:
        return self.eth.next_base_fee(), self.chain.head.gas_limit

    def _on_transaction(self, tx_hash: bytes, publish: bool = True) -> None:
        """A transaction the pool admitted: wake block production, tell subscribers, and gossip it
        (``publish`` False: it came by gossip, and the host forwards it)."""
        self._tx_arrived.set()
        if publish and self.network is not None and self._nursery is not None:
            entry = self.pool.get(tx_hash)
            if entry is not None:  # gossiped once: a copy heard back from a peer is a duplicate it drops
                self._nursery.start_soon(self.network.publish_transaction, entry[1].encode())
        self.filters.on_pending_transaction(tx_hash)
        try:
            self._pending_out.send_nowait(tx_hash)
        except trio.WouldBlock:
            pass

    def _submit_own(self, sign: Any) -> bytes:
        """Pool a transaction the node's validator signs (a slashing report) at the pool's next nonce
        for it, and announce it as any arriving transaction."""
        assert self.pos is not None and self.pos.key is not None
        tx_hash = self.pool.add(sign(self.pool.next_nonce(self.pos.key.address)))
        self._on_transaction(tx_hash)
        return tx_hash

    async def _announce_pending(self) -> None:
        async for tx_hash in self._pending_in:
            await self.filters.publish_pending([tx_hash])

    async def _handle(self, body: bytes, session: Any) -> bytes | None:
        return await self.rpc.handle(body, session)

    # -- block production --

    @property
    def disk_full(self) -> bool:
        """True while blocks cannot be committed for lack of disk space: transactions wait in the pool,
        new ones are refused, reads go on; it clears itself when the next block commits."""
        return self._store_full is not None

    def _refuse_writes(self) -> str | None:
        return DISK_FULL_REFUSAL if self.disk_full else None

    def _checkpoint_root(self, tag: str) -> bytes | None:
        if self.pos is None:
            return None
        core = self.pos.core
        return (core.finalized if tag == "finalized" else core.justified).root

    def _attributes(self) -> BlockAttributes:
        head = self.chain.head
        number = head.block_number + 1
        return BlockAttributes(
            timestamp=max(int(time.time()), head.timestamp + 1),
            coinbase=self.config.signer.address,
            mix_hash=dev_mix_hash(self.config.signer, head.mix_hash, number),
        )

    async def seal_block(self, attrs: BlockAttributes | None = None, build: Any = None) -> Any | None:
        """Build a block from the pool's pending transactions, commit it and tell subscribers. A
        validator passes its proposal's ``attrs`` and a ``build`` that stores the consensus record
        with the block (ProofOfStake.builder); --dev uses its own attributes and Chain.build_block.

        None when the disk is full: nothing was committed, the transactions stay in the pool and
        `disk_full` is set until a later call commits."""
        async with self._head_lock:
            return await self._seal_block(attrs, build)

    async def _seal_block(self, attrs: BlockAttributes | None, build: Any) -> Any | None:
        txs = self.pool.pending_in_order()
        attrs = attrs or self._attributes()
        # Execution runs in a worker thread so RPC keeps admitting transactions meanwhile; the write
        # transaction belongs to that thread, so RPC reads here still see only committed blocks.
        try:
            executed = await trio.to_thread.run_sync(build or self.chain.build_block, attrs, txs)
        except StoreFull as exc:
            if self._store_full is None:  # once per outage: the retries stay quiet
                log.warning(
                    "disk full: block %d not sealed, %d txs wait; retrying every %.0f s (%s)",
                    self.chain.head.block_number + 1, len(txs), _DISK_RETRY_S, exc.strerror,
                )
            self._store_full = exc
            return None
        if self._store_full is not None:
            self._store_full = None
            log.warning("disk space is back: block %d sealed", executed.header.block_number)
        dropped = [tx for tx, reason in executed.excluded if _never_includable(tx, reason)]
        touched = set(executed.senders) | {tx.sender for tx, _ in executed.excluded}
        self.pool.on_new_head(touched, dropped)
        header = executed.header
        log.info(
            "sealed block number=%d hash=0x%s txs=%d gas=%d",
            header.block_number, header.hash.hex(), len(executed.receipts), header.gas_used,
        )
        for tx, reason in executed.excluded:
            log.debug("left out tx 0x%s: %s", tx.hash.hex(), reason)
        stored = self.chain.block_by_hash(header.hash)
        await self.filters.publish_block(stored)
        return stored

    async def adopt_head(self, block_hash: bytes) -> HeadChange:
        """Make the stored block `block_hash` the head (fork choice chose it) and let the services
        follow, as geth does on a reorganization: the switch runs in a worker thread (Chain.set_head,
        one write transaction); the abandoned blocks' transactions that the new branch lacks return to
        the pool and will be mined again; polling filters and `logs` subscriptions get the abandoned
        blocks' logs with `removed: true`, then the adopted blocks' logs; `newHeads` gets every adopted
        header. A switch that would revert a finalized block raises FinalizedRevert, an unknown block
        ChainError; neither changes anything."""
        async with self._head_lock:
            finalized_root = self._checkpoint_root("finalized")
            finalized = None if finalized_root is None else self.chain.header_by_hash(finalized_root)
            if finalized is not None:
                self.chain.finalized_number = max(self.chain.finalized_number, finalized.block_number)
            change = await trio.to_thread.run_sync(self.chain.set_head, block_hash)
            if change.new_head.hash == change.old_head.hash:
                return change
            returned = self.pool.on_reorg(change.returned_transactions, change.senders)
            self.filters.on_reorg(change)
            await self.filters.publish_reorg(change)
        for tx_hash in returned:
            self._on_transaction(tx_hash)
        log.info(
            "head switched number=%d hash=0x%s abandoned=%d adopted=%d returned_txs=%d",
            change.new_head.block_number, change.new_head.hash.hex(), len(change.abandoned),
            len(change.adopted), len(returned),
        )
        return change

    async def _produce_on_demand(self) -> None:
        while True:
            await self._tx_arrived.wait()
            self._tx_arrived = trio.Event()
            while self.pool.has_pending():
                before = self.chain.head.hash
                if await self.seal_block() is None:  # a full disk: the transactions wait for space
                    await trio.sleep(_DISK_RETRY_S)
                    continue
                if self.chain.head.hash == before:
                    break

    async def _produce_on_interval(self) -> None:
        interval = self.config.block_time
        next_at = trio.current_time() + interval
        while True:
            await trio.sleep_until(next_at)
            if await self.seal_block() is None:  # a full disk: try again soon, without a catch-up burst
                next_at = trio.current_time() + min(interval, _DISK_RETRY_S)
            else:
                next_at += interval

    async def _keep_blobs(self) -> None:
        """Record the blobs new blocks reference (freeing their uploaders' quotas) soon after each
        block, and expire pending blobs; the scan and file deletions run in a worker thread."""
        sweep_every = min(60.0, max(0.1, self.config.blob_uploads.ttl_s / 2))
        next_sweep = trio.current_time()
        postponed = False
        while True:
            try:
                if trio.current_time() >= next_sweep:
                    next_sweep = trio.current_time() + sweep_every
                    await trio.to_thread.run_sync(self.blob_keeper.sweep, time.time())
                elif not self.blob_keeper.caught_up():
                    await trio.to_thread.run_sync(self.blob_keeper.catch_up)
            except (LedgerFull, OSError) as exc:  # a full disk: nothing was recorded, the next round retries
                if not postponed:  # once per outage, not every second
                    log.warning("blob bookkeeping postponed until the disk has room: %s", exc)
                postponed = True
            else:
                if postponed:
                    log.info("blob bookkeeping resumed")
                postponed = False
            await trio.sleep(min(1.0, sweep_every))

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(30)
            self.filters.expire(time.monotonic())

    # -- service --

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        try:
            async with trio.open_nursery() as nursery:
                http = HttpServer(
                    self._handle, config.http_addr, config.http_port, config.limits,
                    blobs=BlobRoutes(self.blob_gate, config.limits.max_body_bytes, config.limits.idle_timeout_s,
                                     fetch=None if self.network is None else self.network.blobs.fetch),
                    access=config.access,
                )
                self.http_port = await nursery.start(http.run)
                if config.ws_port is not None:
                    ws = WebSocketServer(
                        self._handle, config.http_addr, config.ws_port, config.limits, access=config.access
                    )
                    self.ws_port = await nursery.start(ws.run)
                await nursery.start(self.filters.run)
                await nursery.start(self.streams.run)
                self._nursery = nursery
                if self.network is not None:
                    await nursery.start(self.network.run)
                if self.pos is not None:
                    if config.validator is not None:
                        service = ValidatorService(self.pos, self.seal_block, submit=self._submit_own,
                                                   gossip=self.network, follow=self.adopt_head)
                        await nursery.start(service.run)
                elif config.block_time > 0:
                    nursery.start_soon(self._produce_on_interval)
                else:
                    nursery.start_soon(self._produce_on_demand)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self._keep_blobs)
                nursery.start_soon(self._announce_pending)
                log.info("node started head=%d", self.chain.head.block_number)
                task_status.started(self)
        finally:
            self.blob_ledger.close()
            self.store.close()
            if self.protection is not None:
                self.protection.close()


def _never_includable(tx: Any, reason: str) -> bool:
    """A left-out transaction stays in the pool when it may fit a later block (gas, a future nonce)."""
    if reason == "gas limit reached":
        return False
    return "nonce" not in reason.lower()
