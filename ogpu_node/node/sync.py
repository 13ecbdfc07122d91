"""Range sync (docs/network.md, "Sync"): a node behind its peers downloads the blocks between its head
and the best head a peer told it of, in batches of MAX_BLOCKS_PER_REQUEST, several batches in flight
from different peers while the earlier ones import, and imports them in order through the node's one
import path (consensus, execution, fork choice). Each block commits with its consensus record, so a
node killed during sync resumes from its last committed block and downloads nothing twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import rlp
import trio

from ogpu_node.chain import ChainError
from ogpu_node.consensus import InvalidConsensus
from ogpu_node.consensus.forkchoice import UnknownParent
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.p2p import limits
from ogpu_node.p2p.host import BadMessage
from ogpu_node.p2p.limits import PeerOffence
from ogpu_node.rpc.net import SyncProgress

if TYPE_CHECKING:
    from ogpu_node.node.network import NodeNetwork

log = logging.getLogger("ogpu.sync")

WINDOW = 4  # batches requested ahead of the one importing
POLL_S = 2.0  # how often peers that were ahead are asked for their heads again


class RangeSync:
    def __init__(self, network: NodeNetwork, decode: Callable[[bytes], tuple]) -> None:
        self.network = network
        self.chain = network.chain
        self.decode = decode  # a block message -> (block, BlockInput); BadMessage if it is not one
        self.wanted = trio.Event()
        self.progress: SyncProgress | None = None

    async def run(self) -> None:
        while True:
            with trio.move_on_after(POLL_S):
                await self.wanted.wait()
            self.wanted = trio.Event()
            for gone in [p for p in self.network.peer_heads if p not in self.network.host.peers]:
                del self.network.peer_heads[gone]
            try:
                await self._refresh_heads()
                await self._sync()
            except Exception:  # a full disk, a bug: this round ends, the node and the next round go on
                log.exception("sync round failed")
                await trio.sleep(POLL_S)
            finally:
                self.progress = None

    def _ahead(self) -> dict[str, int]:
        ours = self.chain.head.block_number
        peers = self.network.host.peers
        return {p: n for p, n in self.network.peer_heads.items() if n > ours and p in peers}

    async def _refresh_heads(self) -> None:
        """Ask the peers that were ahead for their status again (heads move every slot), all at once."""
        async def refresh(peer: str) -> None:
            if not await self.network.host.exchange_status(peer):
                self.network.peer_heads.pop(peer, None)

        async with trio.open_nursery() as nursery:
            for peer in self._ahead():
                nursery.start_soon(refresh, peer)

    async def _sync(self) -> None:
        first = self.chain.head.block_number
        while ahead := self._ahead():
            ours = self.chain.head.block_number
            target = max(ahead.values())
            if target > ours + 1 or self.progress is not None:
                self.progress = SyncProgress(first, ours, target)
            outcome = await self._download(ours + 1, target, ahead)
            if outcome == "fork":
                # Our head is on a branch the peers do not have: fetch theirs from our finalized block.
                outcome = await self._download(self.network.finalized_number() + 1, target, ahead)
                if outcome == "fork":  # their chain does not contain our finalized block: never follow it
                    for peer in ahead:
                        self.network.peer_heads.pop(peer, None)
            await self.network.import_orphans()
            if self.progress is not None:
                log.info("sync: block %d of %d", self.chain.head.block_number, target)
            if self.chain.head.block_number <= ours:
                return  # no progress (their blocks lost fork choice, or none came): look again at the next poll

    async def _download(self, start: int, target: int, ahead: dict[str, int]) -> str:
        """Fetch [start, target] in batches, WINDOW ahead, spread over the peers that have them, and
        import in order. "done", "fork" (the first block does not extend a block we have), or "failed"
        (a peer answered nothing or something that does not import: the caller looks again)."""
        batches = range(start, target + 1, limits.MAX_BLOCKS_PER_REQUEST)
        results: dict[int, tuple[str, list[bytes]]] = {}
        arrived: defaultdict[int, trio.Event] = defaultdict(trio.Event)
        peers = sorted(ahead, key=ahead.__getitem__, reverse=True)

        async def fetch(batch: int, peer: str) -> None:
            results[batch] = (peer, await self._request(peer, batch))
            arrived[batch].set()

        async with trio.open_nursery() as nursery:
            started = 0
            for index, batch in enumerate(batches):
                while started < len(batches) and started <= index + WINDOW:
                    having = [p for p in peers if ahead[p] >= batches[started]] or peers
                    nursery.start_soon(fetch, batches[started], having[started % len(having)])
                    started += 1
                await arrived[batch].wait()
                del arrived[batch]
                peer, frames = results.pop(batch)
                outcome = await self._import(peer, frames, check_fork=index == 0)
                if outcome != "done":
                    nursery.cancel_scope.cancel()
                    return outcome
        return "done"

    async def _request(self, peer: str, start: int) -> list[bytes]:
        try:
            return await self.network.host.request(peer, limits.PROTOCOL_BLOCKS_BY_RANGE,
                                                   rlp.encode([start, limits.MAX_BLOCKS_PER_REQUEST]),
                                                   limits.MAX_BLOCKS_PER_REQUEST)
        except Exception as exc:  # no answer in time, a reset, bad framing (scored by the host)
            log.info("blocks from %s: %s", peer, exc)
            return []

    async def _import(self, peer: str, frames: list[bytes], check_fork: bool) -> str:
        if not frames:
            self.network.peer_heads.pop(peer, None)  # it has nothing there after all
            return "failed"
        try:
            # Up to 64 blocks of up to 4 MiB from a peer: seconds of decoding each, off the trio thread.
            decoded = await trio.to_thread.run_sync(lambda: [self.decode(frame) for frame in frames])
        except BadMessage as exc:
            log.warning("blocks from %s do not decode: %s", peer, exc)
            self.network.host.penalize(peer, PeerOffence.UNDECODABLE)
            self.network.peer_heads.pop(peer, None)
            return "failed"
        if check_fork and decoded[0][1].parent_root not in self.network.pos.core.fork_choice.states:
            return "fork"
        for block, inp in decoded:
            try:
                await self.network.import_block(block, inp)
            except UnknownParent:  # a batch that does not link: another peer's branch, or out of order
                log.info("blocks from %s do not link to ours at %d", peer, block.header.block_number)
                self.network.host.penalize(peer, PeerOffence.BAD_RESPONSE)
                self.network.peer_heads.pop(peer, None)
                return "failed"
            except (InvalidBlock, InvalidConsensus, ChainError) as exc:
                log.warning("block %d from %s does not import: %s", block.header.block_number, peer, exc)
                self.network.host.penalize(peer, PeerOffence.INVALID)
                self.network.peer_heads.pop(peer, None)
                return "failed"
        return "done"
