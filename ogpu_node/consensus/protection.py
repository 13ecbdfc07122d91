"""Slashing protection, sans-IO: what one validator key has signed, and the rules that refuse a
signature that could be slashable with it (EIP-3076's conditions; docs/consensus.md, "Slashing
protection").

A `SigningHistory` holds the key's own signed proposals and attestations (each passed the rules when
it was signed, so a slot or target epoch has one signing root) and three watermarks: no proposal at or
below `block_floor`, no attestation with a source below `source_floor` or a target at or below
`target_floor`. Watermarks come from an import (another machine's record, whatever it holds, is
reduced to its highest slot, source and target) and from pruning: a record dropped to bound the
history raises them to cover it, so a watermark refuses everything the dropped records refused:
a double vote or a vote surrounded by a dropped one has a target at or below its target, a vote
surrounding one has a source below its source. An honest validator signs ever later slots and
epochs, so the watermarks never stop it.

A `SigningGuard` is consulted before every signature the core makes. `MemoryGuard` keeps the history
in memory (simulations, tests); the node's guard keeps it on disk and makes each record durable before
it lets the signature be made (node/slashing_protection.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ogpu_node.consensus.state import InvalidConsensus

KEEP_RECORDS = 1024  # proposals, and attestations, kept once a history prunes; older ones become watermarks
NO_FLOOR = -1


class SigningRefused(InvalidConsensus):
    """A signature the guard will not let the key make: it could be slashable with what the key
    signed before, or the record of it could not be kept. Nothing was signed; the message says why."""


class SigningGuard(Protocol):
    """Checks a message against everything the key signed and records it; raises SigningRefused, and
    records nothing, when the key must not sign it. A guard that returns has made the record durable."""

    def check_and_record_proposal(self, slot: int, signing_root: bytes) -> None: ...

    def check_and_record_attestation(self, source_epoch: int, target_epoch: int, signing_root: bytes) -> None: ...


@dataclass
class SigningHistory:
    blocks: dict[int, bytes] = field(default_factory=dict)  # slot -> signing root
    attestations: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # target -> (source, signing root)
    block_floor: int = NO_FLOOR
    source_floor: int = NO_FLOOR
    target_floor: int = NO_FLOOR

    # -- the rules --

    def proposal_refusal(self, slot: int, signing_root: bytes) -> str | None:
        """Why a proposal at ``slot`` over ``signing_root`` must not be signed; None when it may."""
        recorded = self.blocks.get(slot)
        if recorded is not None:
            return None if recorded == signing_root else f"a block of slot {slot} was signed with another signing root"
        if slot <= self.block_floor:
            return f"slot {slot} is not above the watermark of slot {self.block_floor}"
        if self.blocks and slot < min(self.blocks):  # EIP-3076: not below the lowest signed slot
            return f"slot {slot} is below the lowest signed slot {min(self.blocks)}"
        return None

    def attestation_refusal(self, source: int, target: int, signing_root: bytes) -> str | None:
        """Why an attestation from ``source`` to ``target`` over ``signing_root`` must not be signed;
        None when it may."""
        if source > target:
            return f"source epoch {source} is after target epoch {target}"
        recorded = self.attestations.get(target)
        if recorded is not None:
            return None if recorded[1] == signing_root else f"double vote: target epoch {target} was signed with another signing root"
        if target <= self.target_floor:
            return f"target epoch {target} is not above the watermark of epoch {self.target_floor}"
        if source < self.source_floor:
            return f"source epoch {source} is below the watermark of epoch {self.source_floor}"
        for other_target, (other_source, _) in self.attestations.items():
            if source < other_source and other_target < target:
                return f"surround vote: {source}→{target} surrounds the signed {other_source}→{other_target}"
            if other_source < source and target < other_target:
                return f"surround vote: {source}→{target} is surrounded by the signed {other_source}→{other_target}"
        if self.attestations:  # EIP-3076: not below the lowest signed source, nor at or below the lowest target
            lowest_source = min(s for s, _ in self.attestations.values())
            if source < lowest_source:
                return f"source epoch {source} is below the lowest signed source {lowest_source}"
            if target < min(self.attestations):
                return f"target epoch {target} is below the lowest signed target {min(self.attestations)}"
        return None

    def copy(self) -> SigningHistory:
        return SigningHistory(dict(self.blocks), dict(self.attestations), self.block_floor, self.source_floor,
                              self.target_floor)

    # -- changes --

    def add_proposal(self, slot: int, signing_root: bytes) -> None:
        """Record a proposal that passed `proposal_refusal` (or is read back from a record of such)."""
        if slot > self.block_floor:
            if self.blocks.setdefault(slot, signing_root) != signing_root:  # a damaged record: refuse the slot
                self.raise_floors(block_floor=slot)
        if len(self.blocks) > 2 * KEEP_RECORDS:
            self.prune()

    def add_attestation(self, source: int, target: int, signing_root: bytes) -> None:
        """Record an attestation that passed `attestation_refusal` (or is read back from a record of such)."""
        if target > self.target_floor:
            if self.attestations.setdefault(target, (source, signing_root)) != (source, signing_root):
                self.raise_floors(source_floor=source, target_floor=target)  # a damaged record, as above
        if len(self.attestations) > 2 * KEEP_RECORDS:
            self.prune()

    def raise_floors(self, block_floor: int = NO_FLOOR, source_floor: int = NO_FLOOR,
                     target_floor: int = NO_FLOOR) -> None:
        """Raise the watermarks to at least these; the records they now cover become part of them."""
        self.block_floor = max(self.block_floor, block_floor)
        self.target_floor = max(self.target_floor, target_floor)
        self.source_floor = max(self.source_floor, source_floor)
        for slot in [s for s in self.blocks if s <= self.block_floor]:
            del self.blocks[slot]
        for target in [t for t in self.attestations if t <= self.target_floor]:
            source, _ = self.attestations.pop(target)
            self.source_floor = max(self.source_floor, source)

    def prune(self, keep: int = KEEP_RECORDS) -> None:
        """Keep the ``keep`` latest proposals and attestations; the older ones become watermarks."""
        if len(self.blocks) > keep:
            self.raise_floors(block_floor=sorted(self.blocks)[-keep - 1])
        if len(self.attestations) > keep:
            self.raise_floors(target_floor=sorted(self.attestations)[-keep - 1])

    def merge(self, other: SigningHistory) -> None:
        """Take in another record of this key (an import): it is reduced to watermarks at its highest
        slot, source and target, the safe reading of a record whose gaps may be unknown."""
        blocks = [other.block_floor, *other.blocks]
        sources = [other.source_floor, *(s for s, _ in other.attestations.values())]
        targets = [other.target_floor, *other.attestations]
        self.raise_floors(max(blocks), max(sources), max(targets))


class MemoryGuard:
    """A SigningGuard whose record lives as long as the object: for simulations and tests."""

    def __init__(self, history: SigningHistory | None = None) -> None:
        self.history = history if history is not None else SigningHistory()

    def check_and_record_proposal(self, slot: int, signing_root: bytes) -> None:
        refusal = self.history.proposal_refusal(slot, signing_root)
        if refusal is not None:
            raise SigningRefused(f"proposal not signed: {refusal}")
        self.history.add_proposal(slot, signing_root)

    def check_and_record_attestation(self, source_epoch: int, target_epoch: int, signing_root: bytes) -> None:
        refusal = self.history.attestation_refusal(source_epoch, target_epoch, signing_root)
        if refusal is not None:
            raise SigningRefused(f"attestation not signed: {refusal}")
        self.history.add_attestation(source_epoch, target_epoch, signing_root)
