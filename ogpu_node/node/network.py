"""A proof-of-stake node on the network (docs/network.md): what its gossip and requests mean.

Blocks, attestations and transactions from peers are checked here before the host forwards them;
blocks then import through one path (`import_block`: consensus checks, execution replayed, the
consensus record stored with the block, the head following fork choice), whether they came by gossip
or by sync. Sync asks the peer with the highest head for blocks by range until this node has caught up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import rlp
import trio

from ogpu_node.chain import ChainError
from ogpu_node.consensus import BlockInput, ConsensusBody, InvalidConsensus, apply_block
from ogpu_node.consensus.forkchoice import UnknownParent
from ogpu_node.consensus.slashings import Evidence, decode_evidence, encode_evidence
from ogpu_node.consensus.state import Settlement, attestation_signer
from ogpu_node.execution.codec import decode_block, decode_transaction
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.node.blob_exchange import BlobExchange
from ogpu_node.node.pos import CONSENSUS_RECORD, block_input
from ogpu_node.node.sync import RangeSync
from ogpu_node.p2p import limits
from ogpu_node.p2p.host import BadMessage, Network, P2PConfig, Verdict
from ogpu_node.p2p.identity import node_key
from ogpu_node.p2p.wire import rlp_items_within
from ogpu_node.rpc.net import NodeInfo, PeerInfo, SyncProgress
from ogpu_node.txpool import TxRejected
from ogpu_node.types.signing import SignedAttestation

if TYPE_CHECKING:
    from ogpu_node.node.node import Node

__all__ = ["NodeNetwork", "P2PConfig", "block_message"]

log = logging.getLogger("ogpu.network")

# Worker threads serving peers' requests, apart from trio's default limiter that imports, sealing and
# RPC use: however many peers ask at once, the node's own work is not queued behind them.
SERVING = trio.CapacityLimiter(2)

MAX_ORPHANS = 64  # gossiped blocks kept while their ancestors are fetched
ORPHANS_PER_PEER = 4  # so one peer cannot flush the others' out
# RLP items a message may hold, counted before decoding (pyrlp's decoding is quadratic in them): a
# block of 30M gas holds at most ~1,500 transfers of ~12 items each; a transaction's access list a few
# thousand.
MAX_BLOCK_ITEMS = 100_000
MAX_TX_ITEMS = 10_000


@dataclass(frozen=True)
class PeerStatus:
    chain_id: int
    genesis: bytes
    head: bytes
    number: int
    finalized_epoch: int
    finalized_root: bytes


def encode_status(status: PeerStatus) -> bytes:
    return rlp.encode([status.chain_id, status.genesis, status.head, status.number, status.finalized_epoch,
                       status.finalized_root])


def decode_status(data: bytes) -> PeerStatus:
    if not rlp_items_within(data, 8):
        raise BadMessage("a status is six items")
    try:
        chain_id, genesis, head, number, epoch, root = rlp.decode(data)
        if len(genesis) != 32 or len(head) != 32 or len(root) != 32:
            raise ValueError("hash of the wrong length")
        return PeerStatus(int.from_bytes(chain_id, "big"), genesis, head, int.from_bytes(number, "big"),
                          int.from_bytes(epoch, "big"), root)
    except Exception as exc:
        raise BadMessage(f"malformed status: {exc}") from None


def block_message(raw_block: bytes, body: bytes, signature: bytes) -> bytes:
    """A block as gossiped and served: rlp([block rlp, consensus body, proposal signature])."""
    return rlp.encode([raw_block, body, signature])


def decode_block_message(data: bytes) -> tuple[Any, BlockInput]:
    """The execution block and what consensus checks of it; BadMessage for bytes that are not one."""
    if not rlp_items_within(data, MAX_BLOCK_ITEMS):
        raise BadMessage(f"a block message of more than {MAX_BLOCK_ITEMS} RLP items")
    try:
        raw, body, signature = rlp.decode(data)
        block = decode_block(raw)
        return block, block_input(block.header, ConsensusBody.decode(body), signature)
    except Exception as exc:
        raise BadMessage(f"malformed block message: {exc}") from None


def decode_block_input(data: bytes) -> tuple[Any, bytes, BlockInput]:
    """A block message's header, its block rlp and what consensus checks of it, without decoding its
    transactions: 4 MiB of them is seconds of py-evm and pyrlp on the trio thread (rlp_items_within
    above does not see them: the block is one string item of the message), this is microseconds. The
    block itself is decoded (``decode_block``, in a worker thread) once consensus has accepted it."""
    if not rlp_items_within(data, 8):
        raise BadMessage("not a block message")
    try:
        raw, body, signature = rlp.decode(data)
        _, kind, length, start = rlp.codec.consume_length_prefix(raw, 0)
        _, header_kind, header_length, header_start = rlp.codec.consume_length_prefix(raw, start)
        if kind is not list or header_kind is not list or start + length != len(raw):
            raise ValueError("not a block")
        bare = raw[start:header_start + header_length] + b"\xc0\xc0\xc0"  # no transactions, uncles, withdrawals
        header = decode_block(rlp.codec.length_prefix(len(bare), 0xC0) + bare).header
        return header, raw, block_input(header, ConsensusBody.decode(body), signature)
    except Exception as exc:
        raise BadMessage(f"malformed block message: {exc}") from None


async def decode_block_off_thread(raw: bytes) -> Any:
    """The whole block, decoded in a worker thread (InvalidBlock if its body does not decode)."""
    if not rlp_items_within(raw, MAX_BLOCK_ITEMS):
        raise InvalidBlock(f"a block of more than {MAX_BLOCK_ITEMS} RLP items")
    return await trio.to_thread.run_sync(decode_block, raw)


class NodeNetwork:
    """The `Handlers` of the node's p2p host, its sync, and the network view the RPC reports."""

    def __init__(self, node: Node, config: P2PConfig) -> None:
        assert node.pos is not None
        self.node = node
        self.pos = node.pos
        self.chain = node.chain
        self.host = Network(config, node_key(node.config.datadir), self)
        self.host.on_peer = self._on_peer_status
        self.blobs = BlobExchange(node.blobs, node.blob_ledger, self.host, node.blob_keeper.catch_up)
        self.peer_heads: dict[str, int] = {}  # what each peer's status (or its newest gossiped block) said
        self._orphans: dict[bytes, tuple[bytes, BlockInput, str]] = {}  # by root: block rlp, input, who sent it
        self.sync = RangeSync(self, decode_block_message)

    # -- Handlers: status --

    def _status(self) -> PeerStatus:
        finalized = self.pos.core.finalized
        head = self.chain.head
        return PeerStatus(self.chain.chain_id, self.chain.genesis_hash, head.hash, head.block_number,
                          finalized.epoch, finalized.root)

    def status(self) -> bytes:
        return encode_status(self._status())

    def accept_status(self, peer: str, data: bytes) -> bool:
        theirs, ours = decode_status(data), self._status()
        if theirs.chain_id != ours.chain_id or theirs.genesis != ours.genesis:
            log.warning("peer %s is on another chain (chain id %d, genesis 0x%s): refused", peer, theirs.chain_id,
                        theirs.genesis.hex())
            return False
        if theirs.finalized_epoch <= ours.finalized_epoch and self.chain.has_block(theirs.finalized_root):
            header = self.chain.header_by_hash(theirs.finalized_root)
            if not self.chain.is_canonical(header):
                log.warning("peer %s finalized a block our chain does not contain: refused", peer)
                return False
        if not self._plausible(theirs.number):
            log.warning("peer %s claims head %d, past the current slot: refused", peer, theirs.number)
            return False
        self.peer_heads[peer] = theirs.number
        return True

    def _plausible(self, number: int) -> bool:
        """A block's number is at most its slot, and no honest block's slot is past the current one + 1."""
        return number <= self.pos.params.slot_at(time.time()) + 1

    async def _on_peer_status(self, peer: str, data: bytes) -> None:
        if self.peer_heads.get(peer, 0) > self.chain.head.block_number:
            self.sync.wanted.set()

    # -- Handlers: gossip --

    async def gossip(self, topic: str, payload: bytes, peer: str) -> Verdict:
        if topic == limits.TOPIC_BLOCKS:
            return await self._gossip_block(payload, peer)
        if topic == limits.TOPIC_ATTESTATIONS:
            return self._gossip_attestation(payload)
        if topic == limits.TOPIC_TXS:
            return self._gossip_tx(payload)
        return self._gossip_evidence(payload)

    async def _gossip_block(self, payload: bytes, peer: str) -> Verdict:
        header, raw, inp = decode_block_input(payload)
        core, params = self.pos.core, self.pos.params
        if inp.root in self.pos.core.fork_choice.states or inp.root in self._orphans:
            return Verdict.IGNORE
        if inp.body.slot > params.slot_at(time.time()) + 1:
            return Verdict.IGNORE  # from the future: a clock ahead, not proof of malice
        if header.block_number > inp.body.slot:
            return Verdict.REJECT  # one block a slot at most: no honest block is numbered past its slot
        if inp.body.slot <= params.start_slot(core.finalized.epoch):
            return Verdict.IGNORE
        if inp.parent_root not in core.fork_choice.states or not self.chain.has_block(inp.parent_root):
            if self._keep_orphan(raw, inp, peer):
                self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), header.block_number)
                self.sync.wanted.set()
            return Verdict.IGNORE
        try:
            settlement = apply_block(core.rules, core.state(inp.parent_root), inp).settlement
        except InvalidConsensus as exc:
            log.info("invalid block 0x%s from %s: %s", inp.root.hex(), peer, exc)
            return Verdict.REJECT
        try:
            await self.import_block(await decode_block_off_thread(raw), inp, settlement)
        except (InvalidBlock, InvalidConsensus, ChainError) as exc:
            log.warning("block 0x%s from %s does not import: %s", inp.root.hex(), peer, exc)
            return Verdict.REJECT
        self.peer_heads[peer] = max(self.peer_heads.get(peer, 0), header.block_number)
        await self.import_orphans()
        return Verdict.ACCEPT

    def _gossip_attestation(self, payload: bytes) -> Verdict:
        try:
            signed = SignedAttestation.decode(payload)
        except Exception as exc:
            raise BadMessage(f"malformed attestation: {exc}") from None
        core = self.pos.core
        if not core.is_validator(attestation_signer(core.rules, signed)):
            return Verdict.REJECT
        known_head = signed.message.head in core.fork_choice.states
        try:
            core.on_attestation(signed)
        except InvalidConsensus:
            return Verdict.REJECT
        # A vote for a block not known yet is kept until the block comes, but not forwarded on trust.
        return Verdict.ACCEPT if known_head else Verdict.IGNORE

    def _gossip_evidence(self, payload: bytes) -> Verdict:
        """Slashing evidence another node found: checked as Slashing checks it (one signer, an offence);
        a validator node then reports it as it reports its own findings."""
        try:
            evidence = decode_evidence(payload, self.chain.chain_id, self.chain.genesis_hash)
        except ValueError as exc:
            log.info("invalid slashing evidence: %s", exc)
            return Verdict.REJECT
        if not self.pos.core.is_validator(evidence.offender):
            return Verdict.REJECT  # a throwaway key's offence: reporting it would only spend gas
        return Verdict.ACCEPT if self.pos.core.on_evidence(evidence) else Verdict.IGNORE

    def _gossip_tx(self, payload: bytes) -> Verdict:
        if not rlp_items_within(payload[1:] if payload[:1] < b"\xc0" else payload, MAX_TX_ITEMS):
            raise BadMessage("not a transaction")
        try:
            tx = decode_transaction(payload)
        except Exception as exc:
            raise BadMessage(f"not a transaction: {exc}") from None
        try:
            tx_hash = self.node.pool.add(tx)
        except TxRejected:
            return Verdict.IGNORE  # known, stale nonce, underpriced: a race, not an offence
        self.node._on_transaction(tx_hash, publish=False)  # the host forwards it once this returns
        return Verdict.ACCEPT

    # -- Handlers: requests --

    async def serve(self, protocol: str, request: bytes) -> AsyncIterator[bytes]:
        if protocol == limits.PROTOCOL_BLOCKS_BY_RANGE:
            try:
                if not rlp_items_within(request, 3):
                    raise ValueError("too many RLP items")
                start, count = (int.from_bytes(v, "big") for v in rlp.decode(request))
            except Exception as exc:
                raise BadMessage(f"malformed range request: {exc}") from None
            count = min(count, limits.MAX_BLOCKS_PER_REQUEST)
            messages = await trio.to_thread.run_sync(self._range_messages, start, count, limiter=SERVING)
        elif protocol == limits.PROTOCOL_BLOCKS_BY_HASH:
            try:
                if not rlp_items_within(request, limits.MAX_BLOCKS_PER_REQUEST + 1):
                    raise ValueError("too many RLP items")
                hashes = rlp.decode(request)
                if not isinstance(hashes, list) or len(hashes) > limits.MAX_BLOCKS_PER_REQUEST:
                    raise ValueError(f"not a list of at most {limits.MAX_BLOCKS_PER_REQUEST} hashes")
            except Exception as exc:
                raise BadMessage(f"malformed hash request: {exc}") from None
            messages = await trio.to_thread.run_sync(self._hash_messages, hashes, limiter=SERVING)
        elif protocol == limits.PROTOCOL_BLOBS_BY_HASH:
            async for frame in self.blobs.serve(request):
                yield frame
            return
        else:
            return
        for message in messages:
            yield message

    def _message_of(self, block_hash: bytes) -> bytes | None:
        stored = self.chain.block_by_hash(block_hash)
        record = self.chain.store.get(CONSENSUS_RECORD + block_hash)
        if stored is None or record is None:
            return None
        body, signature = rlp.decode(record)
        return block_message(stored.encode(), body, signature)

    def _range_messages(self, start: int, count: int) -> list[bytes]:
        messages = []
        for number in range(max(1, start), start + count):
            header = self.chain.header_by_number(number)
            message = None if header is None else self._message_of(header.hash)
            if message is None:
                break
            messages.append(message)
        return messages

    def _hash_messages(self, hashes: list[bytes]) -> list[bytes]:
        return [m for m in (self._message_of(bytes(h)) for h in hashes) if m is not None]

    # -- the one import path --

    async def import_block(self, block: Any, inp: BlockInput, settlement: Settlement | None = None) -> None:
        """Consensus checks, then execution (in a worker thread, with the consensus record in the same
        write transaction), then fork choice, then the head follows it. Raises, changing nothing, if
        consensus or execution refuses it. ``settlement``: what the caller's own consensus check of the
        block on its parent derived (apply_block), so it is not checked twice."""
        core = self.pos.core
        if inp.root in core.fork_choice.states or (self.chain.has_block(inp.root)
                                                    and block.header.block_number <= self.finalized_number()):
            return  # known: in fork choice, or final already (fork choice keeps no state below finality)
        if inp.parent_root not in core.fork_choice.states:
            raise UnknownParent(f"block 0x{inp.root.hex()}: unknown parent 0x{inp.parent_root.hex()}")
        if settlement is None:
            settlement = apply_block(core.rules, core.state(inp.parent_root), inp).settlement
        # Shielded: a block the chain stored is always given to fork choice, whatever cancels the caller
        # (a gossip validation's timeout, a shutdown), so the two never disagree about what is known.
        with trio.CancelScope(shield=True):
            async with self.node._head_lock:
                if not self.chain.has_block(inp.root):  # checked again: another import may have stored it
                    await trio.to_thread.run_sync(self.pos.import_block, block, inp, settlement)
            try:
                core.on_block(inp)
            except InvalidConsensus as exc:  # finality moved on while it executed: a dead branch
                log.info("block 0x%s left out of fork choice: %s", inp.root.hex(), exc)
                return
            head = core.head()
            if head != self.chain.head.hash:
                await self.node.adopt_head(head)

    def finalized_number(self) -> int:
        """The number of the block fork choice finalized."""
        header = self.chain.header_by_hash(self.pos.core.finalized.root)
        return 0 if header is None else header.block_number

    def _keep_orphan(self, raw: bytes, inp: BlockInput, peer: str) -> bool:
        """Keep a block whose parent is not known yet (at most ORPHANS_PER_PEER of each peer's), as its
        rlp: it is decoded once consensus can check it."""
        if sum(1 for *_, p in self._orphans.values() if p == peer) >= ORPHANS_PER_PEER:
            return False
        self._orphans[inp.root] = (raw, inp, peer)
        while len(self._orphans) > MAX_ORPHANS:
            del self._orphans[next(iter(self._orphans))]
        return True

    async def import_orphans(self) -> None:
        progress = True
        while progress:
            progress = False
            for root, (raw, inp, _) in list(self._orphans.items()):
                if self.chain.has_block(inp.parent_root) and inp.parent_root in self.pos.core.fork_choice.states:
                    del self._orphans[root]
                    try:
                        # Checked before the (costly) decoding of its transactions.
                        settlement = apply_block(self.pos.core.rules, self.pos.core.state(inp.parent_root), inp).settlement
                        await self.import_block(await decode_block_off_thread(raw), inp, settlement)
                        progress = True
                    except (InvalidBlock, InvalidConsensus, ChainError) as exc:
                        log.info("kept block 0x%s does not import: %s", root.hex(), exc)

    # -- publishing --

    async def publish_block(self, inp: BlockInput) -> None:
        message = self._message_of(inp.root)
        if message is not None:
            await self.host.publish(limits.TOPIC_BLOCKS, message)

    async def publish_attestation(self, signed: SignedAttestation) -> None:
        await self.host.publish(limits.TOPIC_ATTESTATIONS, signed.encode())

    async def publish_evidence(self, evidence: Evidence) -> None:
        await self.host.publish(limits.TOPIC_SLASHINGS, encode_evidence(evidence))

    async def publish_transaction(self, raw: bytes) -> None:
        await self.host.publish(limits.TOPIC_TXS, raw)

    # -- the view the RPC reports (rpc/net.py NetworkView) --

    def listening(self) -> bool:
        return self.host.port is not None

    def peer_count(self) -> int:
        return len(self.host.peers)

    def peers(self) -> list[PeerInfo]:
        now = time.monotonic()
        shown = []
        for peer, state in list(self.host.peers.items()):
            status = decode_status(state.status) if state.status else None
            shown.append(PeerInfo(peer_id=peer, name="", local_addr=self.host.multiaddr, remote_addr=state.remote,
                                  direction="inbound" if state.inbound else "outbound",
                                  head_number=self.peer_heads.get(peer, status.number if status else 0),
                                  head_hash=status.head if status else b"",
                                  finalized_epoch=status.finalized_epoch if status else 0,
                                  score=self.host.book.score(peer, now)))
        return shown

    def node_info(self) -> NodeInfo:
        head = self.chain.head
        listening = self.host.port is not None
        return NodeInfo(peer_id=self.host.peer_id, enr=self.host.multiaddr if listening else "",
                        listen_addrs=(self.host.multiaddr,) if listening else (), p2p_port=self.host.port or 0,
                        head_hash=head.hash, genesis_hash=self.chain.genesis_hash)

    def syncing(self) -> SyncProgress | None:
        progress = self.sync.progress
        if progress is None:
            return None
        head = self.chain.head.block_number
        return SyncProgress(progress.starting, head, max(progress.highest, head))

    # -- service --

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.host.run)
            nursery.start_soon(self.sync.run)
            task_status.started(self)
