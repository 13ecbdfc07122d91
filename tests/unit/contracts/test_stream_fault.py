"""Slashing.reportStreamFault (docs/streams.md, "Penalty") on an in-process chain (harness.py).

A stream with c = 3 (fault quorum ⌈2c/3⌉ = 2) and three subscribers: the client signs a request, one
member (the offender) signs a response, and the two others sign verdicts against it. The report
costs the offender one council seat's stake (reporterShareBps of it to the caller, the rest burned)
and its seat, which interrupts the stream. Every rule of the spec has a rejection that changes
nothing. After every block the money invariants hold: Task's balance = Σ escrow + deposit, Stake's
= Σ staked + Σ unbonding, Bid and Slashing hold nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, SLASHING_ABI, STAKE_ABI, TASK_ABI, Event, Harness

from ogpu_node.contracts.addresses import STAKE
from ogpu_node.types.protocol import BPS, MAX_COUNCIL, TaskState
from ogpu_node.types.signing import SignedStream, StreamRequest, StreamResponse, StreamVerdict
from ogpu_node.types.streams import response_hash

PROVIDER_STAKE = 500 * OGPU
BUDGET = 10 * OGPU
TERMS = {
    "budget": BUDGET, "councilSize": 3, "pricePerUnit": 10**12, "responseMethod": 1, "responseWeight": 6_666,
    "maxResponseTime": 5, "settleWindow": 100, "minMemoryMiB": 4_000, "deviceMask": 0,
}
WRONG = response_hash(b"a wrong answer")


@pytest.fixture
def h(chain, dev_accounts) -> Harness:
    harness = Harness(chain)

    def money(_block: Any) -> None:
        assert harness.balance(TASK_ABI.address) == harness.task_liabilities()
        assert harness.balance(STAKE_ABI.address) == harness.stake_liabilities(dev_accounts)
        assert harness.balance(BID_ABI.address) == 0
        assert harness.balance(SLASHING_ABI.address) == 0

    harness.after_block.append(money)
    return harness


@dataclass
class Stream:
    """A stream with three subscribers (members[0] is the offender) and a fourth provider outside it."""

    h: Harness
    task_id: int
    client: Any
    members: list[Any]
    outside: Any  # a staked provider that did not subscribe
    key: Any  # the client's registered request key
    stranger: Any  # neither

    def sign(self, signer: Any, message: Any) -> bytes:
        root = message.signing_root(self.h.chain.chain_id, self.h.chain.genesis_hash)
        return SignedStream(message, signer.sign_hash(root)).encode()

    def request(self, nonce: int = 1, task_id: int | None = None) -> StreamRequest:
        return StreamRequest(
            self.task_id if task_id is None else task_id, 1, self.h.chain.head.block_number, 42, 64,
            keccak(b"a prompt"), nonce,
        )

    def request_id(self, request: StreamRequest) -> bytes:
        return request.request_id(self.h.chain.chain_id, self.h.chain.genesis_hash)

    def evidence(self, request: StreamRequest | None = None, *, request_signer: Any = None, offender: Any = None,
                 against: list[Any] | None = None, agrees: bool = False) -> tuple[bytes, bytes, list[bytes]]:
        """The three arguments of reportStreamFault: a request, the offender's wrong response, and a
        verdict against it from each of `against` (by default the two other members)."""
        request = request or self.request()
        offender = offender or self.members[0]
        rid = self.request_id(request)
        response = StreamResponse(request.task_id, rid, 1, WRONG)
        verdict = StreamVerdict(request.task_id, rid, offender.address, WRONG, agrees)
        signers = self.members[1:] if against is None else against
        return (
            self.sign(request_signer or self.client, request),
            self.sign(offender, response),
            [self.sign(s, verdict) for s in signers],
        )


@pytest.fixture
def stream(h, chain, dev_accounts) -> Stream:
    client, members, outside = dev_accounts[0], dev_accounts[1:4], dev_accounts[4]
    h.make_providers([*members, outside], PROVIDER_STAKE)
    params = chain.genesis.protocol
    deposit = BUDGET * params.client_deposit_bps // BPS
    result = h.ok(client, TASK_ABI, "submitStream", keccak(b"prescription"), TERMS, value=BUDGET + deposit)
    task_id = TASK_ABI.decode_output("submitStream", result.output)
    key = dev_accounts[7]
    block = h.block(
        *(h.tx(m, BID_ABI, "subscribe", task_id) for m in members),
        h.tx(client, TASK_ABI, "setRequestKey", task_id, key.address),
    )
    assert [r.reason for r in block.txs if not r.ok] == []
    assert h.view(TASK_ABI, "getTask", task_id)["state"] == TaskState.ACTIVE
    return Stream(h, task_id, client, list(members), outside, key, dev_accounts[8])


@pytest.fixture
def reporter(dev_accounts):
    return dev_accounts[9]


def report(h: Harness, reporter: Any, evidence: tuple[bytes, bytes, list[bytes]]) -> Any:
    return h.send(reporter, SLASHING_ABI, "reportStreamFault", *evidence, gas=3_000_000)


def stake_of(h: Harness, account: Any) -> dict[str, int]:
    return h.view(STAKE_ABI, "stakeOf", account.address)


def ev(contract: str, name: str, **args: Any) -> Event:
    return Event(contract, name, args)


# -- the penalty --


def test_a_proved_fault_costs_the_offender_its_seat_stake_and_its_seat(h, chain, stream, reporter):
    """The offender loses exactly councilSeatStake (its lock released first), the reporter gets
    reporterShareBps of it, the rest is burned; it is unsubscribed and the stream, now 2 < c = 3, is
    Interrupted; the evidence id is recorded."""
    params = chain.genesis.protocol
    seat, offender = params.council_seat_stake, stream.members[0]
    reward = seat * params.reporter_share_bps // BPS
    assert (seat, reward) == (10 * OGPU, OGPU)
    assert stake_of(h, offender) == {"staked": PROVIDER_STAKE, "locked": seat, "unbonding": 0, "releaseTime": 0,
                                     "roles": 2}
    request = stream.request()
    rid = stream.request_id(request)
    before = {who: h.balance(who) for who in (reporter.address, STAKE, h.coinbase, offender.address)}

    result = report(h, reporter, stream.evidence(request))

    assert result.ok, result.reason
    assert SLASHING_ABI.decode_output("reportStreamFault", result.output) == seat
    assert result.events == [
        ev("Stake", "StakeUnlocked", account=offender.address, amount=seat, locked=0),
        ev("Bid", "Unsubscribed", taskId=stream.task_id, provider=offender.address),
        ev("Task", "StreamStateChanged", taskId=stream.task_id, state=TaskState.INTERRUPTED, subscribers=2),
        ev("Stake", "StakeSlashed", account=offender.address, amount=seat, burned=seat - reward, rewarded=reward,
           beneficiary=reporter.address),
        ev("Slashing", "StreamFault", taskId=stream.task_id, requestId=rid, offender=offender.address, amount=seat,
           reporter=reporter.address),
    ]
    assert stake_of(h, offender) == {"staked": PROVIDER_STAKE - seat, "locked": 0, "unbonding": 0, "releaseTime": 0,
                                     "roles": 2}
    assert h.balance(reporter.address) == before[reporter.address] + reward - result.fee
    assert h.balance(STAKE) == before[STAKE] - seat
    assert h.balance(h.coinbase) == before[h.coinbase]  # no proposer share: the rest is burned
    assert h.balance(offender.address) == before[offender.address]
    assert sorted(h.view(BID_ABI, "subscribersOf", stream.task_id)) == sorted(m.address for m in stream.members[1:])
    assert h.view(TASK_ABI, "getTask", stream.task_id)["state"] == TaskState.INTERRUPTED
    evidence_id = keccak(b"stream-fault" + stream.task_id.to_bytes(32, "big") + rid + offender.address)
    assert h.view(SLASHING_ABI, "isPunished", evidence_id) is True
    # Four signatures recovered (request, response, two verdicts) at 3 000 gas each, and the storage.
    assert result.gas_used > 21_000 + 4 * 3_000


def test_a_request_signed_by_the_request_key_proves_a_fault_too(h, stream, reporter):
    result = report(h, reporter, stream.evidence(request_signer=stream.key))
    assert result.ok, result.reason
    assert stream.members[0].address not in h.view(BID_ABI, "subscribersOf", stream.task_id)


def test_an_offender_that_left_the_stream_still_loses_the_seat_stake(h, chain, stream, reporter):
    """A member that unsubscribed after answering is slashed all the same; no seat to release."""
    seat = chain.genesis.protocol.council_seat_stake
    offender = stream.members[0]
    h.ok(offender, BID_ABI, "unsubscribe", stream.task_id)
    result = report(h, reporter, stream.evidence())
    assert result.ok, result.reason
    assert [e.name for e in result.events] == ["StakeSlashed", "StreamFault"]
    assert stake_of(h, offender)["staked"] == PROVIDER_STAKE - seat


def test_the_same_fault_is_punished_once_but_another_request_is_another_fault(h, chain, stream, reporter):
    seat = chain.genesis.protocol.council_seat_stake
    offender = stream.members[0]
    request = stream.request()
    assert report(h, reporter, stream.evidence(request)).ok
    # Re-subscribed, so that the verdicts' signers and the offender are as before the first report.
    h.ok(offender, BID_ABI, "subscribe", stream.task_id)
    again = report(h, reporter, stream.evidence(request))
    assert (again.ok, again.reason, again.events) == (False, "Slashing: offence already punished", [])
    assert stake_of(h, offender)["staked"] == PROVIDER_STAKE - seat
    assert report(h, reporter, stream.evidence(replace(request, nonce=2))).ok
    assert stake_of(h, offender)["staked"] == PROVIDER_STAKE - 2 * seat


# -- rejections: each rule, and nothing changes --


def _too_many(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, response, verdicts = s.evidence()
    return request, response, verdicts * (MAX_COUNCIL // 2 + 1)


def _response_to_another_request(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, _, verdicts = s.evidence()
    _, response, _ = s.evidence(s.request(nonce=2))
    return request, response, verdicts


def _response_to_another_task(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, _, verdicts = s.evidence()
    original = SignedStream.decode(StreamResponse, s.evidence()[1]).message
    return request, s.sign(s.members[0], replace(original, task_id=s.task_id + 1)), verdicts


def _verdict_on_another_hash(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, response, verdicts = s.evidence()
    v = SignedStream.decode(StreamVerdict, verdicts[1]).message
    return request, response, [verdicts[0], s.sign(s.members[2], replace(v, response_hash=keccak(b"other")))]


def _verdict_on_another_member(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, response, verdicts = s.evidence()
    v = SignedStream.decode(StreamVerdict, verdicts[1]).message
    return request, response, [verdicts[0], s.sign(s.members[2], replace(v, member=s.members[1].address))]


def _verdict_with_a_bad_signature(s: Stream) -> tuple[bytes, bytes, list[bytes]]:
    request, response, verdicts = s.evidence()
    v = SignedStream.decode(StreamVerdict, verdicts[1])
    return request, response, [verdicts[0], SignedStream(v.message, b"\x01" * 64 + b"\x05").encode()]


REJECTIONS = {
    "request-by-a-stranger": (
        lambda s: s.evidence(request_signer=s.stranger),
        "Slashing: the request is not signed by the stream's client or its request key",
    ),
    "request-by-a-member": (
        lambda s: s.evidence(request_signer=s.members[1]),
        "Slashing: the request is not signed by the stream's client or its request key",
    ),
    "request-to-no-task": (lambda s: s.evidence(s.request(task_id=99)), "Task: no task 99"),
    "response-to-another-request": (_response_to_another_request, "Slashing: the response is not to this request"),
    "response-to-another-task": (_response_to_another_task, "Slashing: the response is not to this request"),
    "response-by-the-client": (
        lambda s: s.evidence(offender=s.client), "Slashing: the response is signed by the client",
    ),
    "one-verdict-of-two": (lambda s: s.evidence(against=s.members[1:2]), "Slashing: 1 verdicts against the response, 2 needed"),
    "no-verdicts": (lambda s: s.evidence(against=[]), "Slashing: 0 verdicts against the response, 2 needed"),
    "more-than-a-council": (_too_many, f"Slashing: more than {MAX_COUNCIL} verdicts"),
    "verdicts-that-agree": (lambda s: s.evidence(agrees=True), "Slashing: a verdict agrees with the response"),
    "verdict-on-another-hash": (_verdict_on_another_hash, "Slashing: a verdict is not on this response"),
    "verdict-on-another-member": (_verdict_on_another_member, "Slashing: a verdict is not on this response"),
    "verdict-by-a-non-subscriber": (
        lambda s: s.evidence(against=[s.members[1], s.outside]),
        "Slashing: a verdict is not signed by a current subscriber",
    ),
    "verdict-by-the-client": (
        lambda s: s.evidence(against=[s.members[1], s.client]),
        "Slashing: a verdict is not signed by a current subscriber",
    ),
    "duplicate-verdict-signer": (
        lambda s: s.evidence(against=[s.members[1], s.members[1]]), "Slashing: two verdicts from one signer",
    ),
    "verdict-by-the-offender": (
        lambda s: s.evidence(against=[s.members[1], s.members[0]]), "Slashing: a verdict is signed by the offender",
    ),
    "verdict-with-a-bad-signature": (_verdict_with_a_bad_signature, None),
    "garbage-request": (lambda s: (b"\x01\x02", *s.evidence()[1:]), "Slashing: malformed signed stream request"),
    "garbage-response": (
        lambda s: (s.evidence()[0], b"\xff" * 40, s.evidence()[2]), "Slashing: malformed signed stream response",
    ),
    "garbage-verdict": (
        lambda s: (*s.evidence()[:2], [s.evidence()[2][0], b"not a verdict"]), "Slashing: malformed signed stream verdict",
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_each_broken_rule_reverts_and_changes_nothing(h, stream, reporter, case):
    build, reason = REJECTIONS[case]
    evidence = build(stream)
    stakes = {m.address: stake_of(h, m) for m in [*stream.members, stream.client, stream.outside]}
    before = h.balance(reporter.address)
    result = report(h, reporter, evidence)
    assert not result.ok
    if reason is None:  # the signature library's own message, after the contract's prefix
        assert result.reason.startswith("Slashing: verdict message: ")
    else:
        assert result.reason == reason
    assert result.events == []
    assert h.balance(reporter.address) == before - result.fee
    assert {m.address: stake_of(h, m) for m in [*stream.members, stream.client, stream.outside]} == stakes
    assert len(h.view(BID_ABI, "subscribersOf", stream.task_id)) == 3
    assert h.view(TASK_ABI, "getTask", stream.task_id)["state"] == TaskState.ACTIVE
