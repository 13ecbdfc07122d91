"""One stream request's council round, sans-IO (docs/streams.md): the responses and verdicts that came
in, and what they decide — the answer a response method allows, whether the council can no longer
agree, which responses are proved faulty or cleared. The service (`rpc/streams.py`) does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ogpu_node.types.protocol import ResponseMethod
from ogpu_node.types.signing import SignedStream, StreamResponse, StreamVerdict
from ogpu_node.types.streams import agreement_needed, fault_quorum

PENDING, ANSWERED, VALIDATED, FAULTY, FAILED = "pending", "answered", "validated", "faulty", "failed"


@dataclass(frozen=True)
class Response:
    member: bytes
    response: bytes
    response_hash: bytes
    signature: bytes
    ms: int  # since the request reached the node


@dataclass(frozen=True)
class Verdict:
    signer: bytes
    member: bytes
    response_hash: bytes
    agrees: bool
    signature: bytes


@dataclass
class RequestRound:
    task_id: int
    request_id: bytes
    signed_request: bytes  # SignedStream(StreamRequest).encode(): the evidence's first argument
    prompt: bytes
    seed: int
    max_tokens: int
    terms_version: int
    method: int
    weight: int
    council: list[bytes]
    responses: dict[bytes, Response] = field(default_factory=dict)  # in arrival order
    skipped: set[bytes] = field(default_factory=set)  # missed the response time
    verdicts: dict[tuple[bytes, bytes], Verdict] = field(default_factory=dict)  # (signer, member)
    answer: bytes | None = None  # the hash the node answered with
    status: str = PENDING
    error: str | None = None
    checks_sent: bool = False
    started: float = 0.0  # trio time the request reached the node
    streamer: bytes | None = None  # the member whose partial tokens a token subscriber follows
    streamed: int = 0  # tokens passed on so far

    @property
    def size(self) -> int:
        return len(self.council)

    @property
    def needed(self) -> int:
        return agreement_needed(self.method, self.weight, self.size)

    def counts(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for r in self.responses.values():
            out[r.response_hash] = out.get(r.response_hash, 0) + 1
        return out

    def outstanding(self) -> list[bytes]:
        return [m for m in self.council if m not in self.responses and m not in self.skipped]

    def add_response(self, member: bytes, response: bytes, response_hash: bytes, signature: bytes, ms: int) -> None:
        if member not in self.council:
            raise ValueError("not a member of this request's council")
        if member in self.responses:
            raise ValueError("already answered this request")
        if member in self.skipped:
            raise ValueError("the response time for this request has passed")
        self.responses[member] = Response(member, response, response_hash, signature, ms)

    def skip_outstanding(self) -> list[bytes]:
        late = self.outstanding()
        self.skipped.update(late)
        return late

    def ready_hash(self) -> bytes | None:
        """The hash the method allows the node to answer with now, if any."""
        if not self.responses:
            return None
        if self.method == ResponseMethod.OPTIMISTIC:
            return next(iter(self.responses.values())).response_hash
        for h, n in self.counts().items():
            if n >= self.needed:
                return h
        return None

    def hopeless(self) -> bool:
        """No hash can reach the needed count with the members still expected."""
        best = max(self.counts().values(), default=0)
        return best + len(self.outstanding()) < self.needed

    def complete(self) -> bool:
        return not self.outstanding()

    def disputed(self) -> bool:
        return len(self.counts()) > 1

    def check_for(self, checker: bytes) -> list[Response]:
        """The responses `checker` must check: those that differ from its own."""
        own = self.responses[checker].response_hash
        return [r for r in self.responses.values() if r.response_hash != own]

    def add_verdict(self, verdict: Verdict) -> None:
        if verdict.signer not in self.responses:
            raise ValueError("only a member that answered may check the others")
        subject = self.responses.get(verdict.member)
        if subject is None or subject.response_hash != verdict.response_hash or verdict.member == verdict.signer:
            raise ValueError("the verdict does not name another member's response to this request")
        self.verdicts.setdefault((verdict.signer, verdict.member), verdict)

    def against(self, member: bytes) -> list[Verdict]:
        return [v for (_, m), v in self.verdicts.items() if m == member and not v.agrees]

    def support(self, member: bytes) -> int:
        """Members other than `member` that stand by its response: a signed agreeing verdict, or their
        own signed response with the same hash."""
        target = self.responses[member].response_hash
        backers = {v.signer for (_, m), v in self.verdicts.items() if m == member and v.agrees}
        backers |= {r.member for r in self.responses.values() if r.member != member and r.response_hash == target}
        return len(backers)

    def faulty(self, member: bytes) -> bool:
        return len(self.against(member)) >= fault_quorum(self.size)

    def cleared(self, member: bytes) -> bool:
        return self.support(member) > self.size - fault_quorum(self.size)

    def verdicts_expected(self) -> int:
        return sum(len(self.check_for(m)) for m in self.responses)

    def settle_answer(self) -> None:
        """After checks (or when nothing is disputed): the answered response's fate."""
        if self.answer is None:
            return
        authors = [r.member for r in self.responses.values() if r.response_hash == self.answer]
        if all(self.faulty(m) for m in authors):
            self.status = FAULTY
        elif any(self.cleared(m) for m in authors) or (self.complete() and not self.disputed()):
            self.status = VALIDATED

    def agreed(self) -> list[bytes]:
        if self.answer is None:
            return []
        return [r.member for r in self.responses.values() if r.response_hash == self.answer and not self.faulty(r.member)]

    def evidence(self, member: bytes) -> dict[str, object]:
        """Slashing.reportStreamFault's arguments against `member`, once it is faulty."""
        r = self.responses[member]
        response = SignedStream(StreamResponse(self.task_id, self.request_id, self.terms_version, r.response_hash),
                                r.signature).encode()
        verdicts = [SignedStream(StreamVerdict(self.task_id, self.request_id, member, r.response_hash, False),
                                 v.signature).encode() for v in self.against(member)]
        return {"offender": member, "request": self.signed_request, "response": response, "verdicts": verdicts}
