"""Slashing detection (docs/consensus.md, "Slashing"): every signed proposal and attestation a node
sees is checked against the ones it saw before from the same validator; two that together are an
offence become evidence the Slashing contract verifies (`reportDoubleProposal`, `reportDoubleVote`,
`reportSurroundVote`). Sans-IO: the node turns evidence into a transaction.

Memory is bounded: per validator the proposals of the last `TRACKED_SLOTS` slots and the attestations
of the last `TRACKED_EPOCHS` target epochs are kept (older offences go undetected here, as with any
slasher's window).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import rlp

from ogpu_node.crypto import keccak
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.types.protocol import Offence
from ogpu_node.types.signing import BlockProposal, SignedAttestation, SignedProposal

TRACKED_EPOCHS = 256
TRACKED_SLOTS = 4096
REMEMBERED_OFFENCES = 65_536  # offences already found, so each is reported once; the oldest forgotten


@dataclass(frozen=True)
class Evidence:
    """Two signed messages of one offender that together are an offence, in the order the Slashing
    contract takes them (the surrounding attestation first)."""

    kind: Offence
    offender: bytes
    first: bytes  # the ABI-encoded signed messages
    second: bytes

    @property
    def function(self) -> str:
        return {Offence.DOUBLE_PROPOSAL: "reportDoubleProposal", Offence.DOUBLE_VOTE: "reportDoubleVote",
                Offence.SURROUND_VOTE: "reportSurroundVote"}[self.kind]

    @property
    def key(self) -> bytes:
        """One id per offence, whichever two messages show it."""
        return keccak(bytes([self.kind]) + self.offender + keccak(min(self.first, self.second))
                      + keccak(max(self.first, self.second)))


class SlashingDetector:
    def __init__(self) -> None:
        self._proposals: dict[tuple[bytes, int], SignedProposal] = {}  # (proposer, slot)
        self._votes: dict[bytes, dict[int, SignedAttestation]] = {}  # validator -> target epoch -> first seen
        self._found: OrderedDict[bytes, None] = OrderedDict()
        self._newest_slot = 0

    def on_proposal(self, proposer: bytes, signed: SignedProposal) -> Evidence | None:
        """A proposal whose signature was checked to be ``proposer``'s."""
        slot = signed.message.slot
        self._newest_slot = max(self._newest_slot, slot)
        if slot + TRACKED_SLOTS < self._newest_slot:
            return None
        seen = self._proposals.setdefault((proposer, slot), signed)
        if len(self._proposals) > 4 * TRACKED_SLOTS:
            horizon = self._newest_slot - TRACKED_SLOTS
            self._proposals = {k: v for k, v in self._proposals.items() if k[1] >= horizon}
        if seen.message.block_hash == signed.message.block_hash:
            return None
        return self._new(Evidence(Offence.DOUBLE_PROPOSAL, proposer, seen.encode(), signed.encode()))

    def on_attestation(self, attester: bytes, signed: SignedAttestation) -> Evidence | None:
        """An attestation whose signature was checked to be ``attester``'s (valid on a branch or not:
        a surround vote never is on the honest one)."""
        a = signed.message
        votes = self._votes.setdefault(attester, {})
        found: Evidence | None = None
        same = votes.get(a.target_epoch)
        if same is not None and same.message != a:
            found = self._new(Evidence(Offence.DOUBLE_VOTE, attester, same.encode(), signed.encode()))
        for other in votes.values():
            if found is not None:
                break
            if a.surrounds(other.message):
                found = self._new(Evidence(Offence.SURROUND_VOTE, attester, signed.encode(), other.encode()))
            elif other.message.surrounds(a):
                found = self._new(Evidence(Offence.SURROUND_VOTE, attester, other.encode(), signed.encode()))
        votes.setdefault(a.target_epoch, signed)
        if len(votes) > TRACKED_EPOCHS:
            del votes[min(votes)]
        return found

    def remember(self, evidence: Evidence) -> Evidence | None:
        """Evidence found elsewhere: itself if new, None if this detector already had it."""
        return self._new(evidence)

    def _new(self, evidence: Evidence) -> Evidence | None:
        if evidence.key in self._found:
            return None
        self._found[evidence.key] = None
        if len(self._found) > REMEMBERED_OFFENCES:
            self._found.popitem(last=False)
        return evidence


def signed_proposal(slot: int, block_root: bytes, signature: bytes) -> SignedProposal:
    return SignedProposal(BlockProposal(slot, block_root), signature)


def encode_evidence(evidence: Evidence) -> bytes:
    """Evidence as gossiped (docs/network.md, `/ogpu/1/slashings`): rlp([offence kind, first, second])."""
    return rlp.encode([int(evidence.kind), evidence.first, evidence.second])


def decode_evidence(data: bytes, chain_id: int, genesis_hash: bytes) -> Evidence:
    """Gossiped evidence checked as the Slashing contract checks it: both messages signed by one key and
    together an offence. ValueError for anything else (bytes that do not decode included)."""
    try:
        kind_bytes, first, second = rlp.decode(data)
        kind = Offence(int.from_bytes(kind_bytes, "big"))
        if kind == Offence.DOUBLE_PROPOSAL:
            a, b = SignedProposal.decode(first), SignedProposal.decode(second)
            offence = a.message.slot == b.message.slot and a.message.block_hash != b.message.block_hash
        else:
            a, b = SignedAttestation.decode(first), SignedAttestation.decode(second)  # type: ignore[assignment]
            if kind == Offence.DOUBLE_VOTE:
                offence = a.message.target_epoch == b.message.target_epoch and a.message != b.message
            else:
                offence = a.message.surrounds(b.message)  # type: ignore[arg-type]
        signers = {recover_signer(m.message.signing_root(chain_id, genesis_hash), m.signature) for m in (a, b)}
    except (InvalidSignature, rlp.DecodingError, ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"malformed evidence: {exc}") from None
    except Exception as exc:  # ABI decoding of untrusted bytes raises its own kinds
        raise ValueError(f"malformed evidence: {exc}") from None
    if not offence or len(signers) != 1:
        raise ValueError("the two messages are not one validator's offence")
    return Evidence(kind, signers.pop(), bytes(first), bytes(second))
