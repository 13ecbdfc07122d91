"""The pure rules of stream requests (ogpu_node/types/streams.py) and the signed stream messages."""

from __future__ import annotations

import collections

import pytest

from ogpu_node.crypto.keys import derive_dev_accounts
from ogpu_node.crypto.signatures import recover_signer
from ogpu_node.types.protocol import ResponseMethod
from ogpu_node.types.signing import SignedStream, StreamRequest, StreamResponse, StreamVerdict
from ogpu_node.types.streams import agreement_needed, council_seed, draw_council, fault_quorum

MEMBERS = [bytes([i]) * 20 for i in range(1, 7)]


def test_council_is_deterministic_distinct_and_independent_of_order() -> None:
    seed = council_seed(b"\x01" * 32, b"\x02" * 32)
    council = draw_council(MEMBERS, seed, 3)
    assert council == draw_council(list(reversed(MEMBERS)), seed, 3)
    assert len(set(council)) == 3 and set(council) <= set(MEMBERS)
    assert set(draw_council(MEMBERS[:2], seed, 3)) == set(MEMBERS[:2])
    assert draw_council([], seed, 3) == []


def test_council_draw_is_uniform_over_members() -> None:
    seats: collections.Counter[bytes] = collections.Counter()
    draws = 3_000
    for i in range(draws):
        seats.update(draw_council(MEMBERS, council_seed(i.to_bytes(32, "big"), b"\x00" * 32), 3))
    expected = draws * 3 / len(MEMBERS)
    assert all(abs(n - expected) < 0.1 * expected for n in seats.values()), seats


def test_council_depends_on_request_and_mix() -> None:
    a = {tuple(draw_council(MEMBERS, council_seed(i.to_bytes(32, "big"), b"\x00" * 32), 3)) for i in range(50)}
    b = {tuple(draw_council(MEMBERS, council_seed(b"\x00" * 32, i.to_bytes(32, "big")), 3)) for i in range(50)}
    assert len(a) > 10 and len(b) > 10


@pytest.mark.parametrize(("method", "weight", "c", "needed"), [
    (ResponseMethod.OPTIMISTIC, 0, 3, 1), (ResponseMethod.WEIGHTED, 6666, 3, 2), (ResponseMethod.WEIGHTED, 6667, 3, 3),
    (ResponseMethod.WEIGHTED, 5000, 4, 2), (ResponseMethod.WEIGHTED, 1, 5, 1), (ResponseMethod.UNANIMOUS, 0, 5, 5),
])
def test_agreement_needed(method: int, weight: int, c: int, needed: int) -> None:
    assert agreement_needed(method, weight, c) == needed


def test_fault_quorum_is_two_thirds_rounded_up() -> None:
    assert [fault_quorum(c) for c in range(1, 8)] == [1, 2, 2, 3, 4, 4, 5]


def test_signed_messages_round_trip_and_recover() -> None:
    key = derive_dev_accounts(1)[0]
    request = StreamRequest(5, 1, 10, 99, 32, b"\x07" * 32, 3)
    rid = request.request_id(1337, b"\x09" * 32)
    assert rid != StreamRequest(5, 1, 10, 99, 32, b"\x07" * 32, 4).request_id(1337, b"\x09" * 32)
    assert rid != request.request_id(1338, b"\x09" * 32)
    for message in (request, StreamResponse(5, rid, 1, b"\x08" * 32), StreamVerdict(5, rid, key.address, b"\x08" * 32, False)):
        root = message.signing_root(1337, b"\x09" * 32)
        signed = SignedStream(message, key.sign_hash(root))
        decoded = SignedStream.decode(type(message), signed.encode())
        assert decoded == signed
        assert recover_signer(decoded.message.signing_root(1337, b"\x09" * 32), decoded.signature) == key.address
    # Domains differ: a response's signature is not a verdict's.
    assert StreamResponse(5, rid, 1, b"\x08" * 32).signing_root(1, b"\x00" * 32) != request.signing_root(1, b"\x00" * 32)


def test_malformed_bytes_raise_value_error() -> None:
    with pytest.raises(ValueError):
        SignedStream.decode(StreamRequest, b"\x00" * 31)
