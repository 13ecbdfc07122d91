"""The node's streamWork protocol, the provider's side (docs/streams.md, "Node interfaces").

- `WsRpc`: JSON-RPC over one WebSocket: calls matched to replies by id, `ogpu_subscription`
  notifications into a channel;
- `StreamWork`: what a notification asks of this provider, given the streams it serves — a `request`
  is generated in the stream's worker (in a thread) and answered with a signed `StreamResponse`, a
  `check` is answered with one signed `StreamVerdict` per response, a `fault` and a `receipt` go to
  the service's callbacks (a transaction, the receipt book). It is fed notifications and a `send`
  coroutine, so tests drive it without a socket;
- `serve_node`: log in (a signed `StreamLogin`), subscribe, hand each notification to `StreamWork`,
  reconnect with backoff when the socket drops.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
import trio_websocket as tws
from eth_hash.auto import keccak

from ogpu_node.apps.provider.concurrency import blocking
from ogpu_node.crypto import Keypair
from ogpu_node.types.signing import SignedStream, StreamLogin, StreamRequest, StreamResponse, StreamVerdict
from ogpu_node.types.streams import MAX_RESPONSE_TOKENS

log = logging.getLogger("ogpu.provider")

WS_PORT = 8546  # the node's default --ws.port
CALL_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 4 << 20  # a check carries at most a council's responses of MAX_RESPONSE_TOKENS bytes
MAX_BACKOFF_S = 30.0
REMEMBERED = 1_024  # requests whose prompt and seed are kept for a later check
PARTIAL_EVERY = 8  # tokens per ogpu_streamPartial preview
PARTIALS_QUEUED = 16  # previews waiting for the socket; past that they are dropped (the answer still goes)
STREAM_FAULTS = ("wrong-tokens", "silent")  # dishonest stream members, for tests and demonstrations only

Send = Callable[[str, list[Any]], Awaitable[Any]]


class NodeRpcError(Exception):
    """A JSON-RPC error object the node answered with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code, self.message = code, message


def ws_url_from_rpc(rpc_url: str, port: int = WS_PORT) -> str:
    """The node's WebSocket endpoint beside its HTTP one: same host, ws(s) scheme, port `port`."""
    parts = urlsplit(rpc_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return urlunsplit((scheme, f"{host}:{port}", parts.path, "", ""))


# -- values as the node writes them (rpc/params.to_json: quantities and 0x-data) --


def quantity(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    raise ValueError(f"expected a hex quantity, got {value!r:.40}")


def data(value: Any) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        return bytes.fromhex(value[2:])
    raise ValueError(f"expected 0x-hex data, got {value!r:.40}")


def hexdata(value: bytes) -> str:
    return "0x" + value.hex()


# -- signing --


@dataclass(frozen=True)
class Signer:
    """The provider's key under the node's chain: every stream message's signing root binds both."""

    key: Keypair
    chain_id: int
    genesis_hash: bytes

    @property
    def address(self) -> bytes:
        return self.key.address

    def sign(self, message: Any) -> bytes:
        return self.key.sign_hash(message.signing_root(self.chain_id, self.genesis_hash))

    def login(self, now: int) -> dict[str, str]:
        """`ogpu_subscribe("streamWork", …)`'s second parameter, at wall-clock second `now`."""
        signature = self.sign(StreamLogin(self.address, now))
        return {"provider": hexdata(self.address), "timestamp": hex(now), "signature": hexdata(signature)}


# -- the streams this provider serves, and what a notification asks of it --


@dataclass(frozen=True)
class Served:
    """A stream this provider is subscribed to, with its model loaded as `key` in `worker`, which
    `turns` lets run one job at a time (a worker is shared by the streams of one numeric profile)."""

    task_id: int
    key: str
    kind: str  # e: tokens | possible
    sampling: Any  # compute.generate.Sampling
    max_response_ms: int
    worker: Any  # compute.Worker: generate, check
    turns: trio.CapacityLimiter


@dataclass(frozen=True)
class FaultEvidence:
    """A `fault` notification: Slashing.reportStreamFault's arguments against `offender`."""

    task_id: int
    request_id: bytes
    offender: bytes
    request: bytes
    response: bytes
    verdicts: list[bytes]


@dataclass(frozen=True)
class Receipt:
    """A client's signed receipt handed over by the node: `units` output tokens served so far under
    terms version `version`."""

    task_id: int
    units: int
    version: int
    signature: bytes


def corrupt(response: bytes) -> bytes:
    """--stream-fault wrong-tokens: every token moved by 128 (text becomes bytes ≥ 0x80), so that
    `tokens` and `possible` checkers both reject it; an empty answer becomes one such token."""
    return bytes((b + 128) % 256 for b in response) if response else b"\x80"


def request_problem(signed: SignedStream, note: dict[str, Any], prompt: bytes, signer: Signer) -> str | None:
    """Why a `request` notification does not match the signed request it carries, or None."""
    request = signed.message
    assert isinstance(request, StreamRequest)
    if keccak(prompt) != request.prompt_hash:
        return "the prompt does not hash to the request's promptHash"
    if request.request_id(signer.chain_id, signer.genesis_hash) != data(note["requestId"]):
        return "the request id is not the signed request's"
    if (request.task_id, request.seed, request.max_tokens, request.terms_version) != (
            quantity(note["taskId"]), quantity(note["seed"]), quantity(note["maxTokens"]),
            quantity(note["termsVersion"])):
        return "taskId, seed, maxTokens or termsVersion differ from the signed request's"
    if not 1 <= request.max_tokens <= MAX_RESPONSE_TOKENS:
        return f"maxTokens {request.max_tokens} is outside 1-{MAX_RESPONSE_TOKENS}"
    return None


class StreamWork:
    """Answers the node's notifications for the streams in `served` (the service fills it)."""

    def __init__(self, signer: Signer, *, fault: str | None = None, max_waiting: int = 32,
                 on_fault: Callable[[FaultEvidence], Awaitable[None]] | None = None,
                 on_receipt: Callable[[Receipt], Awaitable[None]] | None = None) -> None:
        if fault is not None and fault not in STREAM_FAULTS:
            raise ValueError(f"unknown stream fault {fault!r}")
        self.signer, self.fault, self.max_waiting = signer, fault, max_waiting
        self.on_fault, self.on_receipt = on_fault, on_receipt
        self.served: dict[int, Served] = {}
        self.waiting = 0  # generations queued or running
        self.answered = 0
        self._recent: collections.OrderedDict[bytes, tuple[bytes, int]] = collections.OrderedDict()

    async def handle(self, note: dict[str, Any], send: Send) -> None:
        """One notification's `result`; a malformed one is logged and dropped."""
        kind = note.get("type")
        try:
            if kind == "request":
                await self._request(note, send)
            elif kind == "check":
                await self._check(note, send)
            elif kind == "fault":
                await self._fault(note)
            elif kind == "receipt":
                await self._receipt(note)
            else:
                log.debug("stream work: ignoring a %r notification", kind)
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("stream work: malformed %s notification: %s", kind, exc)
        except NodeRpcError as exc:
            log.warning("stream %s: the node refused our %s reply: %s", note.get("taskId"), kind, exc)
        except (ConnectionError, tws.ConnectionClosed, trio.TooSlowError) as exc:
            log.warning("stream %s: no reply to our %s answer: %s", note.get("taskId"), kind, exc or "timed out")
        except Exception:  # one notification's failure (its worker job) must not end the session
            log.exception("stream %s: %s notification failed", note.get("taskId"), kind)

    # -- request: generate, sign, respond --

    async def _request(self, note: dict[str, Any], send: Send) -> None:
        task_id, request_id = quantity(note["taskId"]), data(note["requestId"])
        served = self.served.get(task_id)
        if served is None:
            log.warning("stream %d: request 0x%s for a stream this provider does not serve", task_id,
                        request_id.hex()[:12])
            return
        prompt = data(note["prompt"])
        signed = SignedStream.decode(StreamRequest, data(note["request"]))
        problem = request_problem(signed, note, prompt, self.signer)
        if problem is not None:
            log.warning("stream %d: request 0x%s refused: %s", task_id, request_id.hex()[:12], problem)
            return
        request = signed.message
        assert isinstance(request, StreamRequest)
        self._remember(request_id, prompt, request.seed)
        if self.fault == "silent":
            log.info("stream %d: request 0x%s left unanswered (fault injection: silent)", task_id, request_id.hex()[:12])
            return
        if self.waiting >= self.max_waiting:
            log.warning("stream %d: request 0x%s skipped: %d generations already waiting", task_id,
                        request_id.hex()[:12], self.waiting)
            return
        began = time.monotonic()
        deadline = began + served.max_response_ms / 1000
        offer, previews = trio.open_memory_channel[tuple[int, bytes]](PARTIALS_QUEUED)
        trio_token = trio.lowlevel.current_trio_token()

        def preview(offset: int, tokens: bytes) -> None:  # in the worker's thread: never blocks it
            def put() -> None:
                try:
                    offer.send_nowait((offset, tokens))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            trio_token.run_sync_soon(put)

        def generate() -> bytes | None:
            if time.monotonic() > deadline:  # waited for the worker past the response time: moot
                return None
            return served.worker.generate(served.key, prompt, request.max_tokens, request.seed, served.sampling,
                                          on_tokens=preview, every=PARTIAL_EVERY)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._previews, task_id, request_id, previews, send)
            self.waiting += 1
            try:
                response = await blocking(generate, limiter=served.turns)
            finally:
                self.waiting -= 1
                trio_token.run_sync_soon(offer.close)  # after the previews already scheduled
            if response is None:
                log.warning("stream %d: request 0x%s skipped: the worker was busy past its %d ms", task_id,
                            request_id.hex()[:12], served.max_response_ms)
                return
            response = bytes(response[:request.max_tokens])
            if self.fault == "wrong-tokens":
                response = corrupt(response)
            message = StreamResponse(task_id, request_id, request.terms_version, keccak(response))
            await send("ogpu_streamRespond", [{
                "taskId": hex(task_id), "requestId": hexdata(request_id), "termsVersion": hex(request.terms_version),
                "response": hexdata(response), "signature": hexdata(self.signer.sign(message)),
            }])
        self.answered += 1
        log.info("stream %d: answered request 0x%s: %d tokens in %d ms%s", task_id, request_id.hex()[:12],
                 len(response), (time.monotonic() - began) * 1000,
                 f" (fault injection: {self.fault})" if self.fault else "")

    async def _previews(self, task_id: int, request_id: bytes, previews: trio.MemoryReceiveChannel[tuple[int, bytes]],
                        send: Send) -> None:
        """Pass the tokens decided so far to the node (ogpu_streamPartial), in order, until it says nobody
        follows this request from us: unsigned previews for a streamTokens subscriber, never the answer."""
        async with previews:
            async for offset, tokens in previews:
                if self.fault == "wrong-tokens":
                    tokens = corrupt(tokens)
                try:
                    followed = await send("ogpu_streamPartial", [{
                        "taskId": hex(task_id), "requestId": hexdata(request_id), "offset": hex(offset),
                        "tokens": hexdata(tokens)}])
                except (NodeRpcError, ConnectionError, tws.ConnectionClosed, trio.TooSlowError):
                    return
                if not followed:
                    return

    def _remember(self, request_id: bytes, prompt: bytes, seed: int) -> None:
        self._recent[request_id] = (prompt, seed)
        while len(self._recent) > REMEMBERED:
            self._recent.popitem(last=False)

    # -- check: a verdict on each other member's response --

    async def _check(self, note: dict[str, Any], send: Send) -> None:
        task_id, request_id = quantity(note["taskId"]), data(note["requestId"])
        served = self.served.get(task_id)
        if served is None:
            log.warning("stream %d: check of request 0x%s for a stream this provider does not serve", task_id,
                        request_id.hex()[:12])
            return
        if "prompt" in note and "seed" in note:
            prompt, seed = data(note["prompt"]), quantity(note["seed"])
        elif request_id in self._recent:
            prompt, seed = self._recent[request_id]
        else:
            log.warning("stream %d: check of request 0x%s: its prompt is unknown here", task_id, request_id.hex()[:12])
            return
        verdicts = []
        for item in note["responses"]:
            member, response, claimed = data(item["member"]), data(item["response"]), data(item["responseHash"])
            if keccak(response) != claimed or member == self.signer.address:
                log.warning("stream %d: check of request 0x%s: 0x%s's entry is not a response to judge", task_id,
                            request_id.hex()[:12], member.hex())
                continue
            agrees = bool(await blocking(served.worker.check, served.key, prompt, response, seed, served.sampling,
                                         served.kind, limiter=served.turns))
            signature = self.signer.sign(StreamVerdict(task_id, request_id, member, claimed, agrees))
            verdicts.append({"taskId": hex(task_id), "requestId": hexdata(request_id), "member": hexdata(member),
                             "responseHash": hexdata(claimed), "agrees": agrees, "signature": hexdata(signature)})
            if not agrees:
                log.info("stream %d: request 0x%s: verdict against 0x%s (%s check failed)", task_id,
                         request_id.hex()[:12], member.hex(), served.kind)
        if verdicts:
            await send("ogpu_streamVerdicts", [verdicts])

    # -- fault and receipt: the service's business --

    async def _fault(self, note: dict[str, Any]) -> None:
        evidence = FaultEvidence(quantity(note["taskId"]), data(note["requestId"]), data(note["offender"]),
                                 data(note["request"]), data(note["response"]), [data(v) for v in note["verdicts"]])
        if self.on_fault is not None:
            await self.on_fault(evidence)

    async def _receipt(self, note: dict[str, Any]) -> None:
        receipt = Receipt(quantity(note["taskId"]), quantity(note["cumulativeUnits"]), quantity(note["termsVersion"]),
                          data(note["signature"]))
        if self.on_receipt is not None:
            await self.on_receipt(receipt)


# -- the socket --


class WsRpc:
    """JSON-RPC calls over one WebSocket, and the subscription notifications it carries
    (`notifications`, closed when the socket is). `read` must run while calls are made."""

    def __init__(self, ws: tws.WebSocketConnection, timeout: float = CALL_TIMEOUT_S) -> None:
        self.ws, self.timeout = ws, timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._notify, self.notifications = trio.open_memory_channel[dict[str, Any]](256)

    async def call(self, method: str, params: list[Any]) -> Any:
        call_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[call_id] = send
        try:
            await self.ws.send_message(json.dumps({"jsonrpc": "2.0", "id": call_id, "method": method,
                                                   "params": params}))
            with trio.fail_after(self.timeout):
                try:
                    reply = await receive.receive()
                except trio.EndOfChannel:
                    raise ConnectionError(f"{method}: the socket closed before the reply") from None
        finally:
            self._pending.pop(call_id, None)
        error = reply.get("error")
        if error is not None:
            raise NodeRpcError(int(error.get("code", 0)), str(error.get("message", error)))
        return reply.get("result")

    async def read(self) -> None:
        """Dispatch incoming messages until the socket closes; then end pending calls and notifications."""
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except tws.ConnectionClosed:
                    return
                try:
                    obj = json.loads(message)
                except ValueError:
                    log.warning("stream work: the node sent a message that is not JSON")
                    continue
                if not isinstance(obj, dict):
                    continue
                if obj.get("method") == "ogpu_subscription" and isinstance(obj.get("params"), dict):
                    await self._notify.send(obj["params"])
                elif (waiter := self._pending.get(obj.get("id"))) is not None:  # type: ignore[arg-type]
                    waiter.send_nowait(obj)
        finally:
            self._notify.close()
            for waiter in list(self._pending.values()):
                waiter.close()


async def serve_node(url: str, signer: Signer, work: StreamWork, *, wall_clock: Callable[[], float] = time.time,
                     connected: Callable[[bool], None] | None = None) -> None:
    """Stay logged in at the node's WebSocket `url` and serve its streamWork notifications; on a drop,
    reconnect after 1 s, doubling up to MAX_BACKOFF_S (reset by a successful login)."""
    delay = 1.0
    while True:
        logged_in = False

        def up() -> None:
            nonlocal logged_in, delay
            logged_in, delay = True, 1.0
            if connected is not None:
                connected(True)

        try:
            why = await _session(url, signer, work, wall_clock, up)
        except Exception as exc:  # noqa: BLE001 — refused, unreachable, handshake: all retried alike
            why = f"cannot reach {url}: {exc or type(exc).__name__}"
        if logged_in and connected is not None:
            connected(False)
        log.warning("stream work: %s; reconnecting in %.0fs", why, delay)
        await trio.sleep(delay)
        delay = min(2 * delay, MAX_BACKOFF_S)


async def _session(url: str, signer: Signer, work: StreamWork, wall_clock: Callable[[], float],
                   up: Callable[[], None]) -> str:
    """One connection: log in, then hand each notification of our subscription to `work` in its own
    task. Returns why it ended."""
    async with tws.open_websocket_url(url, max_message_size=MAX_MESSAGE_BYTES, connect_timeout=10) as ws:
        rpc = WsRpc(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.read)
            try:
                subscription = await rpc.call("ogpu_subscribe", ["streamWork", signer.login(int(wall_clock()))])
            except (NodeRpcError, ConnectionError, trio.TooSlowError, tws.ConnectionClosed) as exc:
                nursery.cancel_scope.cancel()
                return f"login at {url} failed: {exc}"
            log.info("stream work: logged in at %s as 0x%s", url, signer.address.hex())
            up()
            async for params in rpc.notifications:
                if params.get("subscription") == subscription and isinstance(params.get("result"), dict):
                    nursery.start_soon(work.handle, params["result"], rpc.call)
            nursery.cancel_scope.cancel()  # the socket closed: replies in flight cannot be sent
    return "the node closed the socket"


__all__ = ["STREAM_FAULTS", "WS_PORT", "FaultEvidence", "NodeRpcError", "Receipt", "Served", "Signer", "StreamWork",
           "WsRpc", "corrupt", "request_problem", "serve_node", "ws_url_from_rpc"]
