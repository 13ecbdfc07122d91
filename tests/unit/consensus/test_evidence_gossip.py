"""Slashing evidence as gossiped (docs/network.md, `/ogpu/1/slashings`): it round-trips, and
`decode_evidence` accepts only what Slashing would: two messages one key signed that together are an
offence on this chain; a core that did not know it reports it, once."""

import pytest

from ogpu_node.consensus.slashings import Evidence, SlashingDetector, decode_evidence, encode_evidence
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.types.protocol import Offence
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation, SignedProposal

CHAIN, GENESIS = 77, keccak(b"genesis")
KEY, OTHER = Keypair.from_private_key(keccak(b"validator")), Keypair.from_private_key(keccak(b"other"))


def _proposal(key: Keypair, slot: int, block: bytes) -> bytes:
    message = BlockProposal(slot, block)
    return SignedProposal(message, key.sign_hash(message.signing_root(CHAIN, GENESIS))).encode()


def _vote(key: Keypair, source: int, target: int, head: bytes = b"\x01" * 32, chain: int = CHAIN) -> bytes:
    message = Attestation(target * 4, head, source, b"\x02" * 32, target, b"\x03" * 32)
    return SignedAttestation(message, key.sign_hash(message.signing_root(chain, GENESIS))).encode()


OFFENCES = [
    (Offence.DOUBLE_PROPOSAL, _proposal(KEY, 9, b"\xaa" * 32), _proposal(KEY, 9, b"\xbb" * 32)),
    (Offence.DOUBLE_VOTE, _vote(KEY, 1, 3), _vote(KEY, 1, 3, head=b"\x09" * 32)),
    (Offence.SURROUND_VOTE, _vote(KEY, 1, 6), _vote(KEY, 2, 5)),
]


@pytest.mark.parametrize("kind, first, second", OFFENCES)
def test_an_offence_round_trips_and_names_its_signer(kind, first, second):
    evidence = decode_evidence(encode_evidence(Evidence(kind, KEY.address, first, second)), CHAIN, GENESIS)
    assert evidence == Evidence(kind, KEY.address, first, second)


NOT_OFFENCES = {
    "two signers": (Offence.DOUBLE_PROPOSAL, _proposal(KEY, 9, b"\xaa" * 32), _proposal(OTHER, 9, b"\xbb" * 32)),
    "one block twice": (Offence.DOUBLE_PROPOSAL, _proposal(KEY, 9, b"\xaa" * 32), _proposal(KEY, 9, b"\xaa" * 32)),
    "two slots": (Offence.DOUBLE_PROPOSAL, _proposal(KEY, 9, b"\xaa" * 32), _proposal(KEY, 10, b"\xbb" * 32)),
    "one vote twice": (Offence.DOUBLE_VOTE, _vote(KEY, 1, 3), _vote(KEY, 1, 3)),
    "two targets": (Offence.DOUBLE_VOTE, _vote(KEY, 1, 3), _vote(KEY, 1, 4)),
    "not surrounding": (Offence.SURROUND_VOTE, _vote(KEY, 2, 5), _vote(KEY, 1, 6)),
    "another chain": (Offence.DOUBLE_VOTE, _vote(KEY, 1, 3), _vote(KEY, 1, 3, head=b"\x09" * 32, chain=CHAIN + 1)),
    "a vote as a proposal": (Offence.DOUBLE_PROPOSAL, _vote(KEY, 1, 3), _vote(KEY, 1, 3, head=b"\x09" * 32)),
}


@pytest.mark.parametrize("kind, first, second", NOT_OFFENCES.values(), ids=NOT_OFFENCES.keys())
def test_what_is_not_one_validators_offence_is_refused(kind, first, second):
    with pytest.raises(ValueError):
        decode_evidence(encode_evidence(Evidence(kind, KEY.address, first, second)), CHAIN, GENESIS)


@pytest.mark.parametrize("data", [b"", b"\x00" * 40, b"\xc3\x07\x80\x80", b"\xc3\x01\x80\x80", b"\xff" * 2048])
def test_bytes_that_are_not_evidence_are_refused(data):
    with pytest.raises(ValueError):
        decode_evidence(data, CHAIN, GENESIS)


def test_evidence_from_a_peer_is_new_once():
    detector = SlashingDetector()
    evidence = decode_evidence(encode_evidence(Evidence(*OFFENCES[1][:1], KEY.address, *OFFENCES[1][1:])), CHAIN,
                               GENESIS)
    assert detector.remember(evidence) == evidence
    assert detector.remember(evidence) is None
