"""Slashing protection's rules (consensus/protection.py, EIP-3076's conditions), each broken once, and
the core consulting its guard before every signature (docs/consensus.md, "Slashing protection")."""

from __future__ import annotations

import pytest

from ogpu_node.consensus import (
    ConsensusCore,
    MemoryGuard,
    SigningHistory,
    SigningRefused,
    genesis_state,
)
from ogpu_node.consensus.protection import KEEP_RECORDS
from ogpu_node.crypto import keccak
from tests.unit.consensus.sim import GENESIS_MIX, GENESIS_ROOT, make_keys, make_rules


def root(n: int) -> bytes:
    return keccak(n.to_bytes(8, "big"))


def refused(call, *args, words: str) -> None:
    with pytest.raises(SigningRefused, match=words):
        call(*args)


# -- proposals --

def test_a_second_block_of_a_slot_is_refused_and_the_same_block_may_be_signed_again():
    guard = MemoryGuard()
    guard.check_and_record_proposal(5, root(1))
    refused(guard.check_and_record_proposal, 5, root(2), words="a block of slot 5 was signed with another signing root")
    guard.check_and_record_proposal(5, root(1))  # a re-sign after a restart: the same message
    guard.check_and_record_proposal(6, root(2))
    assert guard.history.blocks == {5: root(1), 6: root(2)}


def test_a_proposal_below_the_lowest_signed_slot_is_refused():
    guard = MemoryGuard()
    guard.check_and_record_proposal(10, root(1))
    refused(guard.check_and_record_proposal, 9, root(2), words="slot 9 is below the lowest signed slot 10")
    guard.check_and_record_proposal(11, root(3))
    assert guard.history.blocks == {10: root(1), 11: root(3)}


# -- attestations --

def test_a_double_vote_is_refused_and_the_same_vote_may_be_signed_again():
    guard = MemoryGuard()
    guard.check_and_record_attestation(2, 3, root(1))
    refused(guard.check_and_record_attestation, 2, 3, root(2), words="double vote: target epoch 3")
    refused(guard.check_and_record_attestation, 1, 3, root(3), words="double vote: target epoch 3")
    guard.check_and_record_attestation(2, 3, root(1))
    assert guard.history.attestations == {3: (2, root(1))}


def test_a_vote_surrounding_a_signed_one_is_refused():
    guard = MemoryGuard()
    guard.check_and_record_attestation(1, 2, root(1))
    guard.check_and_record_attestation(3, 4, root(2))
    refused(guard.check_and_record_attestation, 2, 5, root(3), words="2→5 surrounds the signed 3→4")
    guard.check_and_record_attestation(3, 5, root(4))  # same source: not a surround
    assert sorted(guard.history.attestations) == [2, 4, 5]


def test_a_vote_surrounded_by_a_signed_one_is_refused():
    guard = MemoryGuard()
    guard.check_and_record_attestation(2, 3, root(0))
    guard.check_and_record_attestation(4, 9, root(1))
    refused(guard.check_and_record_attestation, 5, 6, root(2), words="5→6 is surrounded by the signed 4→9")
    guard.check_and_record_attestation(4, 10, root(3))
    assert sorted(guard.history.attestations) == [3, 9, 10]


def test_attestations_below_the_lowest_signed_source_or_target_are_refused():
    guard = MemoryGuard()
    guard.check_and_record_attestation(4, 5, root(1))
    refused(guard.check_and_record_attestation, 3, 3, root(2), words="source epoch 3 is below the lowest signed source 4")
    refused(guard.check_and_record_attestation, 4, 4, root(3), words="target epoch 4 is below the lowest signed target 5")
    refused(guard.check_and_record_attestation, 7, 6, root(4), words="source epoch 7 is after target epoch 6")
    guard.check_and_record_attestation(5, 6, root(5))


# -- watermarks --

def test_an_import_is_read_as_watermarks_at_its_highest_slot_source_and_target():
    imported = SigningHistory(blocks={10: root(1), 20: root(2)}, attestations={4: (3, root(3)), 6: (5, root(4))})
    guard = MemoryGuard()
    guard.check_and_record_proposal(3, root(9))  # signed here before the import: below it, it is covered
    guard.history.merge(imported)
    assert (guard.history.block_floor, guard.history.source_floor, guard.history.target_floor) == (20, 5, 6)
    assert guard.history.blocks == {} and guard.history.attestations == {}
    refused(guard.check_and_record_proposal, 15, root(5), words="slot 15 is not above the watermark of slot 20")
    refused(guard.check_and_record_proposal, 20, root(2), words="watermark of slot 20")  # the other machine's block
    guard.check_and_record_proposal(21, root(6))
    refused(guard.check_and_record_attestation, 4, 7, root(7), words="source epoch 4 is below the watermark of epoch 5")
    refused(guard.check_and_record_attestation, 5, 6, root(4), words="target epoch 6 is not above the watermark")
    guard.check_and_record_attestation(5, 7, root(8))
    # A later import that is lower changes nothing: the watermarks only rise.
    guard.history.merge(SigningHistory(blocks={1: root(1)}, attestations={1: (0, root(1))}))
    assert (guard.history.block_floor, guard.history.source_floor, guard.history.target_floor) == (20, 5, 6)
    assert guard.history.blocks == {21: root(6)} and guard.history.attestations == {7: (5, root(8))}


def test_pruning_keeps_the_latest_records_and_watermarks_refuse_what_the_dropped_ones_refused():
    history = SigningHistory()
    last = 2 * KEEP_RECORDS + 1  # one past the bound: the history prunes to the latest KEEP_RECORDS
    for epoch in range(1, last + 1):
        history.add_attestation(epoch - 1, epoch, root(epoch))
    for slot in range(1, last + 1):
        history.add_proposal(slot, root(slot))
    assert sorted(history.blocks) == sorted(history.attestations) == list(range(last - KEEP_RECORDS + 1, last + 1))
    dropped = last - KEEP_RECORDS  # the latest slot and target dropped
    assert (history.block_floor, history.source_floor, history.target_floor) == (dropped, dropped - 1, dropped)
    assert "watermark" in history.proposal_refusal(1, root(1))  # a re-sign once, refused now it is dropped
    assert "watermark" in history.attestation_refusal(0, 1, root(1))
    assert "watermark" in history.attestation_refusal(dropped - 2, last + 5, root(0))  # would surround a dropped vote
    assert history.proposal_refusal(last + 1, root(0)) is None
    assert history.attestation_refusal(last, last + 1, root(0)) is None


# -- the core asks its guard before every signature --

def _core() -> ConsensusCore:
    keys = make_keys(1)
    rules = make_rules(keys)
    return ConsensusCore(rules, genesis_state(rules, GENESIS_ROOT, GENESIS_MIX), keys[0])


def test_the_core_signs_no_second_block_of_a_slot():
    core = _core()
    signature = core.sign_proposal(1, b"\x01" * 32)
    assert core.sign_proposal(1, b"\x01" * 32) == signature
    with pytest.raises(SigningRefused, match="proposal not signed: a block of slot 1"):
        core.sign_proposal(1, b"\x02" * 32)


def test_the_core_does_not_attest_when_its_guard_holds_a_conflicting_vote():
    core = _core()
    slot = core.duties(core.key.address, 1)[1]  # in epoch 1: source epoch 0, target epoch 1
    signed = core.attest(slot)
    assert signed is not None
    assert core.attest(slot) == signed  # the same vote again: allowed, and the same signature
    # The guard holds another vote for epoch 0 (as after a restart on a different head): no vote.
    other = _core()
    other.guard.check_and_record_attestation(0, 1, b"\x07" * 32)
    assert other.attest(slot) is None
    assert other.guard.history.attestations == {1: (0, b"\x07" * 32)}
