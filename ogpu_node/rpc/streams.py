"""Stream requests through the node (docs/streams.md, "Node interfaces"): a client's signed request is
checked against the head's Task and Bid, its council drawn, the members (providers logged in over
WebSocket) asked, and the answer given as the terms' response method allows; disagreements are
checked by the members' signed verdicts, and a proved fault's evidence is handed to the members that
signed against it, for Slashing.reportStreamFault. The decisions are `stream_round.RequestRound`'s;
this is its I/O.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from eth_hash.auto import keccak

from ogpu_node.chain import Chain
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.layout import StreamVersion
from ogpu_node.contracts.streams import existing_stream, stream_entry
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.rpc import params as p
from ogpu_node.rpc.jsonrpc import SERVER_ERROR, InvalidParams, RpcError
from ogpu_node.rpc.session import SessionClosed
from ogpu_node.rpc.stream_round import ANSWERED, FAILED, PENDING, RequestRound, Verdict
from ogpu_node.types.protocol import MAX_COUNCIL, ResponseMethod, TaskState
from ogpu_node.types.signing import (
    SignedStream,
    StreamLogin,
    StreamReceipt,
    StreamRequest,
    StreamResponse,
    StreamVerdict,
)
from ogpu_node.types.streams import (
    MAX_PROMPT_BYTES,
    MAX_RESPONSE_TOKENS,
    RECENT_BLOCKS,
    council_seed,
    draw_council,
    response_hash,
)

log = logging.getLogger("ogpu.streams")

LOGIN_SKEW_S = 60  # a StreamLogin's timestamp must be this close to the node's clock
SEND_TIMEOUT_S = 5.0  # a provider's socket that does not take a notification by then misses it
MAX_IN_FLIGHT = 256  # requests waiting for their councils at once
MAX_KEPT = 1_024  # finished rounds kept for ogpu_streamStatus, oldest forgotten first
MAX_RECEIPTS = 64  # per ogpu_streamReceipts call
MIN_CHECK_S = 2.0  # the check round lasts max(maxResponseTime, this)
_STATES = {state.value: state.label for state in TaskState}


@dataclass(frozen=True)
class StreamAtHead:
    """What the node needs of a stream task, read from the head's state."""

    client: bytes
    state: int
    request_key: bytes
    version: int
    method: int
    weight: int
    council_size: int
    max_response_ms: int
    subscribers: list[bytes]


class StreamService:
    def __init__(self, chain: Chain, wall_clock: Callable[[], float] = time.time) -> None:
        self.chain = chain
        self.wall_clock = wall_clock
        self._workers: dict[bytes, tuple[Any, str]] = {}  # provider → (session, subscription id)
        self._rounds: collections.OrderedDict[bytes, RequestRound] = collections.OrderedDict()
        self._changed: dict[bytes, trio.Event] = {}
        self._in_flight = 0
        self.missed: collections.Counter[tuple[int, bytes]] = collections.Counter()  # (task, member)
        self._token_subs: dict[bytes, tuple[Any, str]] = {}  # request → (session, subscription id)
        self._nursery: trio.Nursery | None = None
        self._next_id = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "ogpu_subscribe": self.ogpu_subscribe, "ogpu_unsubscribe": self.ogpu_unsubscribe,
            "ogpu_streamRequest": self.ogpu_streamRequest, "ogpu_streamStatus": self.ogpu_streamStatus,
            "ogpu_streamRespond": self.ogpu_streamRespond, "ogpu_streamVerdicts": self.ogpu_streamVerdicts,
            "ogpu_streamReceipts": self.ogpu_streamReceipts, "ogpu_streamTask": self.ogpu_streamTask,
            "ogpu_streamPartial": self.ogpu_streamPartial,
        }

    # -- reading the chain --

    def stream_at_head(self, task_id: int) -> StreamAtHead:
        execution = self.chain.execution
        host = execution.read_host(self.chain.head)
        ctx = execution.task.context(host)
        try:
            existing_stream(ctx, task_id)
        except Revert as exc:
            raise RpcError(SERVER_ERROR, exc.reason) from None
        task, stream = ctx.task(task_id), stream_entry(ctx, task_id)
        version = stream.version
        terms = StreamVersion(ctx.store, task_id, version)
        return StreamAtHead(
            client=task.client, state=task.state, request_key=stream.request_key, version=version,
            method=terms.method, weight=terms.weight, council_size=stream.council_size,
            max_response_ms=stream.max_response_time, subscribers=list(ctx.bid.subscribers(host, task_id)),
        )

    def _signer(self, message: Any, signature: bytes, what: str) -> bytes:
        try:
            return recover_signer(message.signing_root(self.chain.chain_id, self.chain.genesis_hash), signature)
        except InvalidSignature as exc:
            raise InvalidParams(f"{what}: bad signature: {exc}") from None

    # -- providers: the streamWork subscription --

    def ogpu_subscribe(self, session: Any, kind: Any, login: Any = None) -> str:
        if session is None or not getattr(session, "is_websocket", False):
            raise RpcError(-32601, "notifications not supported")
        if kind == "streamTokens":
            return self._subscribe_tokens(session, login)
        if kind != "streamWork":
            raise InvalidParams(f"no such subscription: {kind!r}")
        obj = p.obj(login, "login")
        provider = p.address(obj.get("provider"), "provider")
        timestamp = p.quantity(obj.get("timestamp"), "timestamp")
        signature = p.data(obj.get("signature"), "signature", 65)
        if abs(timestamp - self.wall_clock()) > LOGIN_SKEW_S:
            raise InvalidParams(f"login: timestamp is more than {LOGIN_SKEW_S} s from the node's clock")
        if self._signer(StreamLogin(provider, timestamp), signature, "login") != provider:
            raise InvalidParams("login: not signed by the provider")
        sub_id = self._new_subscription()
        replaced = self._workers.get(provider)
        self._workers[provider] = (session, sub_id)
        if replaced is None or replaced[0] is not session:
            session.on_close(lambda: self._logout(provider, session))
        log.info("stream worker 0x%s logged in", provider.hex())
        return sub_id

    def _new_subscription(self) -> str:
        self._next_id += 1
        return hex(self._next_id)

    def ogpu_unsubscribe(self, session: Any, sub_id: Any) -> bool:
        for provider, (held, held_id) in list(self._workers.items()):
            if held is session and held_id == sub_id:
                del self._workers[provider]
                return True
        return False

    def _logout(self, provider: bytes, session: Any) -> None:
        if self._workers.get(provider, (None,))[0] is session:
            del self._workers[provider]

    def _provider_of(self, session: Any) -> bytes:
        for provider, (held, _) in self._workers.items():
            if held is session:
                return provider
        raise RpcError(SERVER_ERROR, "this connection has no streamWork subscription")

    def _notify(self, provider: bytes, result: dict[str, Any]) -> bool:
        """Queue a notification to `provider`'s subscription; False if it is not connected."""
        held = self._workers.get(provider)
        if held is None or self._nursery is None:
            return False
        self._nursery.start_soon(self._push, *held, result)
        return True

    @staticmethod
    async def _send(session: Any, payload: bytes) -> None:
        with trio.move_on_after(SEND_TIMEOUT_S):
            try:
                await session.send(payload)
            except SessionClosed:
                pass

    # -- clients: requests --

    def _parse_request(self, obj: dict[str, Any]) -> tuple[StreamRequest, bytes, bytes]:
        prompt = p.data(obj.get("prompt"), "prompt")
        if not 1 <= len(prompt) <= MAX_PROMPT_BYTES:
            raise InvalidParams(f"prompt: must be 1 to {MAX_PROMPT_BYTES} bytes")
        max_tokens = p.quantity(obj.get("maxTokens"), "maxTokens")
        if not 1 <= max_tokens <= MAX_RESPONSE_TOKENS:
            raise InvalidParams(f"maxTokens: must be 1 to {MAX_RESPONSE_TOKENS}")
        request = StreamRequest(
            task_id=p.quantity(obj.get("taskId"), "taskId"),
            terms_version=p.quantity(obj.get("termsVersion"), "termsVersion"),
            block_number=p.quantity(obj.get("blockNumber"), "blockNumber"),
            seed=p.quantity(obj.get("seed"), "seed"),
            max_tokens=max_tokens,
            prompt_hash=keccak(prompt),
            nonce=p.quantity(obj.get("nonce"), "nonce"),
        )
        for name, value, bits in (("taskId", request.task_id, 256), ("termsVersion", request.terms_version, 32),
                                  ("blockNumber", request.block_number, 64), ("seed", request.seed, 64),
                                  ("nonce", request.nonce, 64)):
            if value >= 1 << bits:
                raise InvalidParams(f"{name}: above uint{bits}")
        return request, prompt, p.data(obj.get("signature"), "signature", 65)

    def _open_round(self, request: StreamRequest, prompt: bytes, signature: bytes) -> tuple[RequestRound, StreamAtHead]:
        request_id = request.request_id(self.chain.chain_id, self.chain.genesis_hash)
        if request_id in self._rounds:
            raise RpcError(SERVER_ERROR, "request already received (use a new nonce)")
        stream = self.stream_at_head(request.task_id)
        signer = self._signer(request, signature, "request")
        if signer != stream.client and (stream.request_key == b"\x00" * 20 or signer != stream.request_key):
            raise RpcError(SERVER_ERROR, "request is not signed by the stream's client or its request key")
        if stream.state != TaskState.ACTIVE:
            raise RpcError(SERVER_ERROR, f"stream is {_STATES.get(stream.state, stream.state)}: "
                                         f"{len(stream.subscribers)} of {stream.council_size} subscribers")
        if request.terms_version != stream.version:
            raise RpcError(SERVER_ERROR, f"unknown terms version {request.terms_version}: the stream is at "
                                         f"version {stream.version}")
        head = self.chain.head.block_number
        if not head - RECENT_BLOCKS < request.block_number <= head:
            raise RpcError(SERVER_ERROR, f"blockNumber must be one of the last {RECENT_BLOCKS} blocks "
                                         f"(head is {head})")
        if self._in_flight >= MAX_IN_FLIGHT:
            raise RpcError(SERVER_ERROR, f"too many stream requests in flight (limit {MAX_IN_FLIGHT})")
        mix = self.chain.header_by_number(request.block_number).mix_hash
        council = draw_council(stream.subscribers, council_seed(request_id, mix), stream.council_size)
        round_ = RequestRound(
            task_id=request.task_id, request_id=request_id, signed_request=SignedStream(request, signature).encode(),
            prompt=prompt, seed=request.seed, max_tokens=request.max_tokens, terms_version=request.terms_version,
            method=stream.method, weight=stream.weight, council=council,
        )
        self._rounds[request_id] = round_
        while len(self._rounds) > MAX_KEPT:
            oldest = next(iter(self._rounds))
            if self._rounds[oldest].status == PENDING:
                break  # in flight: MAX_IN_FLIGHT bounds these
            del self._rounds[oldest]
            self._changed.pop(oldest, None)
        self._changed[request_id] = trio.Event()
        return round_, stream

    async def ogpu_streamRequest(self, ctx: Any, obj: Any) -> dict[str, Any]:
        request, prompt, signature = self._parse_request(p.obj(obj, "request"))
        round_, stream = self._open_round(request, prompt, signature)
        await self._answer(round_, stream)
        if round_.status == FAILED:
            raise RpcError(SERVER_ERROR, f"request 0x{round_.request_id.hex()}: {round_.error}",
                           self.round_json(round_))
        return self.round_json(round_)

    def _subscribe_tokens(self, session: Any, obj: Any) -> str:
        """`ogpu_subscribe("streamTokens", request)`: the request as ogpu_streamRequest takes it; its
        tokens are pushed as the fastest member generates them (unverified), then the answer, then the
        council's final status."""
        request, prompt, signature = self._parse_request(p.obj(obj, "request"))
        round_, stream = self._open_round(request, prompt, signature)
        sub_id = self._new_subscription()
        self._token_subs[round_.request_id] = (session, sub_id)
        assert self._nursery is not None
        self._nursery.start_soon(self._answer_tokens, round_, stream, session, sub_id)
        return sub_id

    async def _answer_tokens(self, round_: RequestRound, stream: StreamAtHead, session: Any, sub_id: str) -> None:
        try:
            await self._answer(round_, stream)
            await self._push(session, sub_id, {"type": "answer", **self.round_json(round_)})
            await self._wait(round_, lambda: round_.status not in (PENDING, ANSWERED), trio.current_time() + 60)
            await self._push(session, sub_id, {"type": "status", **self.round_json(round_)})
        finally:
            self._token_subs.pop(round_.request_id, None)

    async def _answer(self, round_: RequestRound, stream: StreamAtHead) -> None:
        """Ask the council and wait for what the method needs; the rest goes on in `_follow_up`."""
        started = round_.started = trio.current_time()
        self._in_flight += 1
        try:
            for member in round_.council:
                sent = self._notify(member, {
                    "type": "request", "taskId": round_.task_id, "requestId": round_.request_id,
                    "request": round_.signed_request, "prompt": round_.prompt, "seed": round_.seed,
                    "maxTokens": round_.max_tokens, "termsVersion": round_.terms_version,
                })
                if not sent:  # not connected: it cannot answer this one
                    round_.skipped.add(member)
                    self.missed[(round_.task_id, member)] += 1
            deadline = started + stream.max_response_ms / 1000
            await self._wait(round_, lambda: round_.ready_hash() is not None or round_.hopeless(), deadline)
            answer = round_.ready_hash()
            if answer is None and not round_.hopeless():  # the deadline passed: the late are skipped
                self._skip_late(round_)
                answer = round_.ready_hash()
            if answer is None:
                round_.status = FAILED
                round_.error = ("no member answered in time" if not round_.responses
                                else "council did not agree")
            else:
                round_.answer, round_.status = answer, ANSWERED
            if self._nursery is not None:
                self._nursery.start_soon(self._follow_up, round_, deadline, stream.max_response_ms)
        finally:
            self._in_flight -= 1

    def ogpu_streamPartial(self, session: Any, obj: Any) -> bool:
        """A member's tokens so far, for the request's token subscriber: only the first member to send
        them is followed, and only in order. Unsigned and unverified: the answer is what counts."""
        provider = self._provider_of(session)
        obj = p.obj(obj, "partial")
        round_ = self._round_of(obj)
        offset = p.quantity(obj.get("offset"), "offset")
        tokens = p.data(obj.get("tokens"), "tokens")
        if provider not in round_.council or offset + len(tokens) > round_.max_tokens:
            raise InvalidParams("partial: not a member of this request's council, or beyond maxTokens")
        held = self._token_subs.get(round_.request_id)
        if held is None or round_.status != PENDING:
            return False
        if round_.streamer is None:
            round_.streamer = provider
        if round_.streamer != provider or offset != round_.streamed:
            return False
        round_.streamed += len(tokens)
        session_out, sub_id = held
        assert self._nursery is not None
        self._nursery.start_soon(self._push, session_out, sub_id, {
            "type": "tokens", "member": provider, "offset": offset, "tokens": tokens,
            "text": tokens.decode("utf-8", "replace")})
        return True

    async def _push(self, session: Any, sub_id: str, result: dict[str, Any]) -> None:
        payload = json.dumps({"jsonrpc": "2.0", "method": "ogpu_subscription",
                              "params": {"subscription": sub_id, "result": p.to_json(result)}}).encode()
        await self._send(session, payload)

    async def _wait(self, round_: RequestRound, done: Callable[[], bool], deadline: float) -> None:
        with trio.move_on_at(deadline):
            while not done():
                await self._changed[round_.request_id].wait()

    def _touch(self, round_: RequestRound) -> None:
        event = self._changed.get(round_.request_id)
        if event is not None:
            event.set()
            self._changed[round_.request_id] = trio.Event()

    def _skip_late(self, round_: RequestRound) -> None:
        for member in round_.skip_outstanding():
            self.missed[(round_.task_id, member)] += 1
            log.info("stream %d: member 0x%s missed request 0x%s", round_.task_id, member.hex(),
                     round_.request_id.hex()[:12])

    async def _follow_up(self, round_: RequestRound, deadline: float, max_response_ms: int) -> None:
        """After the answer: collect the remaining responses, check disagreements, publish faults."""
        await self._wait(round_, round_.complete, deadline)
        self._skip_late(round_)
        if round_.disputed():
            round_.checks_sent = True
            for member in round_.responses:
                others = round_.check_for(member)
                if others:
                    self._notify(member, {
                        "type": "check", "taskId": round_.task_id, "requestId": round_.request_id,
                        "prompt": round_.prompt, "seed": round_.seed, "maxTokens": round_.max_tokens,
                        "responses": [{"member": r.member, "response": r.response, "responseHash": r.response_hash}
                                      for r in others],
                    })
            expected = round_.verdicts_expected()
            check_deadline = trio.current_time() + max(max_response_ms / 1000, MIN_CHECK_S)
            await self._wait(round_, lambda: len(round_.verdicts) >= expected, check_deadline)
            for member in list(round_.responses):
                if round_.faulty(member):
                    evidence = round_.evidence(member)
                    log.info("stream %d: member 0x%s proved faulty on request 0x%s", round_.task_id, member.hex(),
                             round_.request_id.hex()[:12])
                    for verdict in round_.against(member):
                        self._notify(verdict.signer, {"type": "fault", "taskId": round_.task_id,
                                                      "requestId": round_.request_id, **evidence})
        round_.settle_answer()
        self._touch(round_)

    # -- providers: responses and verdicts --

    def _round_of(self, obj: dict[str, Any]) -> RequestRound:
        request_id = p.hash32(obj.get("requestId"), "requestId")
        round_ = self._rounds.get(request_id)
        if round_ is None or round_.task_id != p.quantity(obj.get("taskId"), "taskId"):
            raise RpcError(SERVER_ERROR, "unknown request")
        return round_

    def ogpu_streamRespond(self, session: Any, obj: Any) -> bool:
        provider = self._provider_of(session)
        obj = p.obj(obj, "response")
        round_ = self._round_of(obj)
        response = p.data(obj.get("response"), "response")
        if len(response) > round_.max_tokens:
            raise InvalidParams(f"response: longer than the request's {round_.max_tokens} tokens")
        version = p.quantity(obj.get("termsVersion"), "termsVersion")
        signature = p.data(obj.get("signature"), "signature", 65)
        message = StreamResponse(round_.task_id, round_.request_id, version, response_hash(response))
        if version != round_.terms_version or self._signer(message, signature, "response") != provider:
            raise InvalidParams("response: not signed by this provider over this request's terms version")
        ms = int((trio.current_time() - round_.started) * 1000)
        try:
            round_.add_response(provider, response, message.response_hash, signature, ms)
        except ValueError as exc:
            raise RpcError(SERVER_ERROR, f"response: {exc}") from None
        self._touch(round_)
        return True

    def ogpu_streamVerdicts(self, session: Any, items: Any) -> int:
        provider = self._provider_of(session)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_COUNCIL:
            raise InvalidParams(f"verdicts: a list of 1 to {MAX_COUNCIL}")
        taken = 0
        for item in items:
            obj = p.obj(item, "verdict")
            round_ = self._round_of(obj)
            member = p.address(obj.get("member"), "member")
            hash_ = p.hash32(obj.get("responseHash"), "responseHash")
            agrees = p.boolean(obj.get("agrees"), "agrees")
            signature = p.data(obj.get("signature"), "signature", 65)
            message = StreamVerdict(round_.task_id, round_.request_id, member, hash_, agrees)
            if self._signer(message, signature, "verdict") != provider:
                raise InvalidParams("verdict: not signed by this provider")
            try:
                round_.add_verdict(Verdict(provider, member, hash_, agrees, signature))
            except ValueError as exc:
                raise RpcError(SERVER_ERROR, f"verdict: {exc}") from None
            self._touch(round_)
            taken += 1
        return taken

    # -- clients: receipts and status --

    def ogpu_streamReceipts(self, ctx: Any, items: Any) -> int:
        """Pass the client's signed receipts to the providers' subscriptions; how many were delivered."""
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECEIPTS:
            raise InvalidParams(f"receipts: a list of 1 to {MAX_RECEIPTS}")
        parsed = []
        for item in items:
            obj = p.obj(item, "receipt")
            receipt = StreamReceipt(p.quantity(obj.get("taskId"), "taskId"), p.address(obj.get("provider"), "provider"),
                                    p.quantity(obj.get("cumulativeUnits"), "cumulativeUnits"),
                                    p.quantity(obj.get("termsVersion"), "termsVersion"))
            if receipt.terms_version >= 1 << 32 or receipt.task_id >= 1 << 256 or receipt.cumulative_units >= 1 << 256:
                raise InvalidParams("receipt: a field is out of range")
            parsed.append((receipt, p.data(obj.get("signature"), "signature", 65)))
        delivered = 0
        for receipt, signature in parsed:
            stream = self.stream_at_head(receipt.task_id)
            signer = self._signer(receipt, signature, "receipt")
            if signer != stream.client and signer != stream.request_key:
                raise InvalidParams("receipt: not signed by the stream's client or its request key")
            delivered += self._notify(receipt.provider, {
                "type": "receipt", "taskId": receipt.task_id, "cumulativeUnits": receipt.cumulative_units,
                "termsVersion": receipt.terms_version, "signature": signature,
            })
        return delivered

    def ogpu_streamStatus(self, ctx: Any, request_id: Any) -> dict[str, Any] | None:
        round_ = self._rounds.get(p.hash32(request_id, "requestId"))
        return None if round_ is None else self.round_json(round_)

    def ogpu_streamTask(self, ctx: Any, task_id: Any) -> dict[str, Any]:
        """A stream as this node sees it: its state and terms at the head (and the head's number, which
        a client's request may name), which subscribers are connected for work here, and how many
        requests each member missed."""
        task_id = p.quantity(task_id, "taskId")
        head = self.chain.head.block_number
        stream = self.stream_at_head(task_id)
        return p.to_json({
            "blockNumber": head,
            "state": _STATES.get(stream.state, str(stream.state)), "termsVersion": stream.version,
            "responseMethod": ResponseMethod(stream.method).name.lower(), "councilSize": stream.council_size,
            "subscribers": stream.subscribers,
            "connected": [s for s in stream.subscribers if s in self._workers],
            "missed": {"0x" + m.hex(): n for (t, m), n in self.missed.items() if t == task_id},
        })

    def round_json(self, round_: RequestRound) -> dict[str, Any]:
        answer = next((r for r in round_.responses.values() if r.response_hash == round_.answer), None)
        return p.to_json({
            "requestId": round_.request_id, "taskId": round_.task_id, "status": round_.status,
            "error": round_.error, "method": ResponseMethod(round_.method).name.lower(),
            "response": None if answer is None else answer.response,
            "text": None if answer is None else answer.response.decode("utf-8", "replace"),
            "responseHash": round_.answer, "council": round_.council, "agreed": round_.agreed(),
            "validated": round_.status == "validated",
            "skipped": sorted(round_.skipped),
            "responses": [{"member": r.member, "responseHash": r.response_hash, "signature": r.signature, "ms": r.ms}
                          for r in round_.responses.values()],
            "faults": [round_.evidence(m) for m in round_.responses if round_.faulty(m)],
        })
