"""Slashing detection in the consensus core (docs/consensus.md, "Slashing"): a node that sees two
blocks of one proposer at one slot, two votes of one validator for one target epoch, or one vote
surrounding another, holds evidence its node reports; the same offence is reported once; honest
traffic is never evidence."""

from __future__ import annotations

import pytest

from ogpu_node.consensus import ConsensusCore, InvalidConsensus, genesis_state
from ogpu_node.consensus.slashings import TRACKED_EPOCHS, SlashingDetector
from ogpu_node.crypto.signatures import recover_signer
from ogpu_node.types.protocol import Offence
from ogpu_node.types.signing import Attestation, SignedAttestation, SignedProposal
from tests.unit.consensus.sim import GENESIS_MIX, GENESIS_ROOT, make_keys, make_rules
from tests.unit.consensus.test_rules import build

KEYS = make_keys(2)
RULES = make_rules(KEYS)


def core(index: int | None) -> ConsensusCore:
    return ConsensusCore(RULES, genesis_state(RULES, GENESIS_ROOT, GENESIS_MIX), None if index is None else KEYS[index])


def signed_vote(index: int, source: int, target: int, head: bytes = GENESIS_ROOT) -> SignedAttestation:
    a = Attestation(target * RULES.params.slots_per_epoch, head, source, GENESIS_ROOT, target, GENESIS_ROOT)
    return SignedAttestation(a, KEYS[index].keypair.sign_hash(a.signing_root(RULES.chain_id, RULES.genesis_hash)))


def offer(observer: ConsensusCore, signed: SignedAttestation) -> None:
    try:
        observer.on_attestation(signed)
    except InvalidConsensus:  # a slashable vote is seldom valid on the observer's branch
        pass


def test_two_blocks_of_one_proposer_at_one_slot_are_a_double_proposal():
    keys_proposer = [i for i in range(2) if core(i).propose(1) is not None]
    proposer = keys_proposer[0]
    honest, forked, observer = core(proposer), core(proposer), core(None)
    first = build(honest, 1)
    for node in (honest, observer):
        node.on_block(first)
    slot = next(s for s in range(2, 40) if honest.propose(s) is not None and forked.propose(s) is not None)
    on_first, on_genesis = build(honest, slot), build(forked, slot)  # one on block 1, one on genesis
    observer.on_block(on_first)
    assert observer.take_evidence() == []  # honest so far
    observer.on_block(on_genesis)
    (evidence,) = observer.take_evidence()
    assert (evidence.kind, evidence.offender, evidence.function) == (
        Offence.DOUBLE_PROPOSAL, KEYS[proposer].address, "reportDoubleProposal")
    a, b = SignedProposal.decode(evidence.first), SignedProposal.decode(evidence.second)
    assert a.message.slot == b.message.slot == slot and a.message.block_hash != b.message.block_hash
    for signed in (a, b):  # what the Slashing contract checks
        root = signed.message.signing_root(RULES.chain_id, RULES.genesis_hash)
        assert recover_signer(root, signed.signature) == KEYS[proposer].address
    observer.on_block(on_genesis)  # seen again: nothing new
    assert observer.take_evidence() == []


def test_two_votes_for_one_target_are_a_double_vote_and_the_same_vote_twice_is_not():
    observer = core(None)
    vote = signed_vote(1, 0, 3)
    offer(observer, vote)
    offer(observer, vote)
    assert observer.take_evidence() == []
    offer(observer, signed_vote(1, 0, 3, head=b"\x01" * 32))
    (evidence,) = observer.take_evidence()
    assert (evidence.kind, evidence.offender) == (Offence.DOUBLE_VOTE, KEYS[1].address)
    assert SignedAttestation.decode(evidence.first) == vote


@pytest.mark.parametrize("order", ["surrounding first", "surrounded first"])
def test_a_vote_surrounding_another_is_a_surround_vote_in_the_order_slashing_takes(order):
    observer = core(None)
    outer, inner = signed_vote(0, 1, 6), signed_vote(0, 2, 5)
    for vote in ((outer, inner) if order == "surrounding first" else (inner, outer)):
        offer(observer, vote)
    (evidence,) = observer.take_evidence()
    assert evidence.kind == Offence.SURROUND_VOTE
    assert (SignedAttestation.decode(evidence.first), SignedAttestation.decode(evidence.second)) == (outer, inner)


def test_votes_of_someone_who_is_not_a_validator_are_not_tracked():
    observer = core(None)
    stranger = make_keys(3)[2].keypair
    for head in (b"\x01" * 32, b"\x02" * 32):
        a = Attestation(24, head, 0, GENESIS_ROOT, 3, GENESIS_ROOT)
        offer(observer, SignedAttestation(a, stranger.sign_hash(a.signing_root(RULES.chain_id, RULES.genesis_hash))))
    assert observer.take_evidence() == [] and stranger.address not in observer.detector._votes


def test_the_detector_keeps_a_bounded_window_per_validator():
    detector = SlashingDetector()
    for target in range(TRACKED_EPOCHS + 50):
        assert detector.on_attestation(KEYS[0].address, signed_vote(0, target, target + 1)) is None
    assert len(detector._votes[KEYS[0].address]) == TRACKED_EPOCHS
