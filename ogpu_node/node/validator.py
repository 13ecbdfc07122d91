"""The validator service: at each slot's start it proposes if its key is the slot's proposer, and a
third into the slot it attests if the slot is its attestation slot (docs/consensus.md, "Running a
validator"). The consensus decisions are the core's; this module owns only the clock and the I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ogpu_node.chain import ChainError
from ogpu_node.consensus import BlockInput, InvalidConsensus
from ogpu_node.consensus.slashings import Evidence
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.node.pos import ProofOfStake
from ogpu_node.types.signing import SignedAttestation

log = logging.getLogger("ogpu.validator")

# Node.seal_block(attrs, build): builds, commits and publishes one block; None on a full disk.
Sealer = Callable[..., Awaitable[Any]]
# Adds a transaction this node signs to its pool and announces it: called with a function that signs
# it for a nonce (the pool's next for the validator); returns its hash, raises on a refusal.
Submitter = Callable[[Callable[[int], Any]], bytes]


class Gossip(Protocol):
    """Where a validator's blocks and votes go: the node's network (node/network.py)."""

    async def publish_block(self, block: BlockInput) -> None: ...

    async def publish_attestation(self, signed: SignedAttestation) -> None: ...

    async def publish_evidence(self, evidence: Evidence) -> None: ...

    def syncing(self) -> Any: ...


REPORT_GAS = 400_000  # a Slashing report: two signature recoveries, the slash, the ejection, logs


class ValidatorService:
    def __init__(self, pos: ProofOfStake, seal: Sealer, wall_clock: Callable[[], float] = time.time,
                 submit: Submitter | None = None, gossip: Gossip | None = None,
                 follow: Callable[[bytes], Awaitable[Any]] | None = None) -> None:
        """``gossip``: the network its blocks and votes are published to (None: a lone validator);
        ``follow``: makes a stored block the chain's head (Node.adopt_head), so a proposal builds on
        the head fork choice chose even when the chain's head lags it."""
        if pos.key is None:
            raise ValueError("a validator service needs a validator key")
        self.pos = pos
        self.seal = seal
        self.submit = submit  # None: offences found are logged, not reported
        self.wall_clock = wall_clock  # unix time; tests pass one driven by trio's mock clock
        self.gossip = gossip
        self.follow = follow
        self.found: list[Evidence] = []  # offences found since the last slot, for the network
        self._finalized = pos.core.finalized

    async def _sleep_until(self, unix_time: float) -> None:
        await trio.sleep(max(0.0, unix_time - self.wall_clock()))

    def _first_slot(self) -> int:
        """The next slot to act in: the one under way if its start is now, else the next (slot 0 is
        genesis)."""
        params = self.pos.params
        now = self.wall_clock()
        slot = params.slot_at(now)
        return max(1, slot if now <= params.timestamp(slot) else slot + 1)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        params = self.pos.params
        key = self.pos.key
        assert key is not None
        log.info("validating as 0x%s from slot %d", key.address.hex(), self._first_slot())
        task_status.started()
        slot = self._first_slot()
        while True:
            start = params.timestamp(slot)
            await self._sleep_until(start)
            await self.propose(slot)
            await self._sleep_until(start + params.slot_time / 3)
            signed = self.attest(slot)
            if signed is not None and self.gossip is not None:
                await self.gossip.publish_attestation(signed)
            self.report_offences()
            found, self.found = self.found, []
            for evidence in found if self.gossip is not None else ():
                await self.gossip.publish_evidence(evidence)
            # A slot that went by while this one's block was built is skipped, not made up.
            slot = max(slot + 1, params.slot_at(self.wall_clock()) + 1)

    async def propose(self, slot: int) -> BlockInput | None:
        """Build, commit and import this slot's block if this validator proposes it; the block or None."""
        pos = self.pos
        if self.gossip is not None and self.gossip.syncing():
            return None  # a block on a head this far behind would only be orphaned
        proposal = pos.core.propose(slot)
        if proposal is None:
            return None
        if proposal.parent_root != pos.chain.head.hash and self.follow is not None and pos.chain.has_block(proposal.parent_root):
            await self.follow(proposal.parent_root)
        if proposal.parent_root != pos.chain.head.hash:
            # fork choice chose a block this node has not stored (still importing): skip the slot
            log.warning("slot %d: fork choice's head 0x%s is not the chain's head; not proposing",
                        slot, proposal.parent_root.hex())
            return None
        attrs = BlockAttributes(proposal.timestamp, proposal.coinbase, proposal.mix_hash,
                                extra_data=proposal.body.root, settlement=proposal.settlement)
        built: list[BlockInput] = []
        try:
            stored = await self.seal(attrs, pos.builder(proposal, built))
        except ChainError as exc:  # an import moved the head while the block was built: nothing committed
            log.info("slot %d: block not proposed: %s", slot, exc)
            return None
        except InvalidConsensus as exc:  # a bug, not an input: nothing was committed
            log.error("slot %d: block not proposed: %s", slot, exc)
            return None
        if stored is None:  # a full disk: seal_block logged it; the transactions wait
            return None
        block = built[0]
        pos.core.on_block(block)
        if self.gossip is not None:
            await self.gossip.publish_block(block)
        log.info("proposed slot=%d number=%d attestations=%d", slot, stored.number, len(proposal.body.attestations))
        self._note_finality()
        return block

    def attest(self, slot: int) -> SignedAttestation | None:
        signed = self.pos.core.attest(slot)  # kept in the core's pool for the next block
        if signed is not None:
            log.debug("attested slot=%d head=0x%s", slot, signed.message.head.hex())
        return signed

    def report_offences(self) -> list[bytes]:
        """Send a Slashing report, signed with the validator's key, for each offence the core found
        (the next block, its own or another's, includes it); the hashes of the reports sent."""
        sent = []
        for evidence in self.pos.core.take_evidence():
            self.found.append(evidence)
            log.warning("offence %s by 0x%s", evidence.kind.name.lower(), evidence.offender.hex())
            if self.submit is None:
                continue
            try:
                sent.append(self.submit(lambda nonce, e=evidence: self.pos.report_transaction(e, nonce, REPORT_GAS)))
            except Exception as exc:  # no balance for gas, a full pool: the evidence stays valid for others
                log.warning("offence by 0x%s not reported: %s", evidence.offender.hex(), exc)
        return sent

    def _note_finality(self) -> None:
        finalized = self.pos.core.finalized
        if finalized != self._finalized:
            self._finalized = finalized
            log.info("finalized epoch=%d root=0x%s", finalized.epoch, finalized.root.hex())
