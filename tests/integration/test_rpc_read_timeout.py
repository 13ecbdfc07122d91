"""The read timeout of the RPC transport (geth's ReadHeaderTimeout/ReadTimeout; ServerLimits.read_timeout_s,
ws_handshake_timeout_s), over real sockets on 127.0.0.1: a slowloris client that trickles its request one
byte at a time is answered 408 and closed, while another client is served meanwhile and silent keep-alive
connections are left alone. Ordering assertions only: each sleep below is a lower bound, never measured."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio_websocket as tws

from integration.test_rpc_transport import Echo, HttpClient, Served, read_all, serving
from ogpu_node.rpc.server import HttpServer, ServerLimits, WebSocketServer

READ_S = 1.0
# The idle timeout far above the read timeout: a connection closed here was closed by the read timeout.
LIMITS = ServerLimits(read_timeout_s=READ_S, idle_timeout_s=60.0, ws_handshake_timeout_s=READ_S)
BYTE_EVERY_S = 0.05  # the slowloris: well within the timeout between two bytes, far beyond it in all
PADDING = b"x-pad: " + b"p" * 2000 + b"\r\n"  # 2 kB at one byte per interval: 100 s, never finished here
HEAD = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + PADDING + b"\r\n"
REQUEST = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nok"
TIMED_OUT = b"HTTP/1.1 408 "
WS_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + PADDING + b"\r\n"
)

Honest = Callable[[Served, list[str], trio.Event], Awaitable[None]]


async def http_client_meanwhile(served: Served, log: list[str], stop: trio.Event) -> None:
    """Another client's requests, one after another on one keep-alive connection, until `stop`."""
    client = await served.client()
    n = 0
    while not stop.is_set():
        response, body = await client.request(b"POST", b"%d" % n)
        assert (response.status_code, body) == (200, b"echo:%d" % n)
        log.append("other served")
        n += 1
        await trio.sleep(BYTE_EVERY_S)


async def ws_client_meanwhile(served: Served, log: list[str], stop: trio.Event) -> None:
    """Another client's WebSocket: opened, then messages answered one after another, until `stop`."""
    async with tws.open_websocket_url(f"ws://127.0.0.1:{served.port}/") as ws:
        n = 0
        while not stop.is_set():
            await ws.send_message(str(n))
            assert await ws.get_message() == f"echo:{n}"
            log.append("other served")
            n += 1
            await trio.sleep(BYTE_EVERY_S)


async def slowloris(served: Served, data: bytes, honest: Honest, prefix: bytes = b"") -> tuple[list[str], bytes, int]:
    """One client sends `prefix` at once, then `data` one byte per interval, until the server closes;
    `honest` runs beside it. Returns the order of events, what the slowloris received and how many of
    the trickled bytes it sent."""
    log: list[str] = []
    stream = await served.connect()
    stop = trio.Event()
    sent = 0
    received = b""

    async def trickle() -> None:
        nonlocal sent
        await stream.send_all(prefix)
        try:
            for i in range(len(data)):
                await stream.send_all(data[i:i + 1])
                if sent == 0:
                    log.append("slowloris started")
                sent += 1
                await trio.sleep(BYTE_EVERY_S)
        except trio.BrokenResourceError:
            pass  # reset: the server has closed after the response

    async def attack() -> None:
        nonlocal received
        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            received = await read_all(stream)
            log.append("slowloris closed")
            inner.cancel_scope.cancel()
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attack)
        nursery.start_soon(honest, served, log, stop)
    return log, received, sent


def served_while_attacking(log: list[str]) -> bool:
    """Another client got an answer after the slowloris began and before it was closed."""
    return "other served" in log[log.index("slowloris started"):log.index("slowloris closed")]


async def test_a_trickled_request_head_gets_408_while_others_are_served() -> None:
    """Attack: a request head sent one byte per interval, each byte well within any per-read timeout.
    Now: 408 and closed once the whole head has not come within read_timeout_s of its first byte; a
    silent connection opened before it is left open, and another client is served meanwhile."""
    with trio.fail_after(30):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0, LIMITS)) as served:
            silent = await served.connect()
            log, received, sent = await slowloris(served, HEAD, http_client_meanwhile)
            assert received.startswith(TIMED_OUT), received
            assert sent < len(HEAD)  # closed with its head unfinished
            assert served_while_attacking(log), log
            # The silent one (only the idle timeout applies to it) was not closed: it is served now.
            assert (await HttpClient(silent).request(b"POST", b"late"))[1] == b"echo:late"


async def test_a_trickled_body_gets_408_while_others_are_served() -> None:
    """Attack: a whole head, then a JSON-RPC body one byte per interval: the body is bounded by the same
    read timeout (a slow body is no request yet)."""
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900\r\n\r\n"
    with trio.fail_after(30):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0, LIMITS)) as served:
            log, received, sent = await slowloris(served, b"[" * 900, http_client_meanwhile, prefix=head)
            assert received.startswith(TIMED_OUT), received
            assert sent < 900
            assert served_while_attacking(log), log


async def test_a_trickled_pipelined_head_gets_408_after_the_answered_request() -> None:
    """A whole request and the first bytes of the next in one send, then the rest trickled: the first
    is answered, the unfinished one gets 408 (its start was already buffered when its wait began)."""
    with trio.fail_after(30):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0, LIMITS)) as served:
            log, received, sent = await slowloris(served, HEAD[5:], http_client_meanwhile, prefix=REQUEST + HEAD[:5])
            assert received.startswith(b"HTTP/1.1 200 ")
            assert received.index(b"echo:ok") < received.index(TIMED_OUT)
            assert sent < len(HEAD) - 5


async def test_a_trickled_websocket_handshake_gets_408_while_others_are_served() -> None:
    """The opening handshake of a WebSocket, trickled: bounded by ws_handshake_timeout_s from the
    connection's start, answered 408; another client's WebSocket opens and is answered meanwhile."""
    with trio.fail_after(30):
        async with serving(WebSocketServer(Echo(), "127.0.0.1", 0, LIMITS)) as served:
            log, received, sent = await slowloris(served, WS_HANDSHAKE, ws_client_meanwhile)
            assert received.startswith(TIMED_OUT), received
            assert sent < len(WS_HANDSHAKE)
            assert served_while_attacking(log), log


class _SplitFirstSend:
    """A stream whose first send goes out in two parts with a pause between: a request in two reads."""

    def __init__(self, stream: trio.SocketStream, pause_s: float) -> None:
        self._stream, self._pause_s, self._split = stream, pause_s, True

    async def send_all(self, data: bytes) -> None:
        if self._split:
            self._split = False
            await self._stream.send_all(data[:10])
            await trio.sleep(self._pause_s)
            data = data[10:]
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        return await self._stream.receive_some(max_bytes)


class SlowEcho(Echo):
    """Echo that takes twice the read timeout to answer `slow`."""

    async def __call__(self, body: bytes, session) -> bytes | None:
        if body == b"slow":
            await trio.sleep(2 * READ_S)
        return await super().__call__(body, session)


async def test_a_request_in_several_reads_is_then_bounded_by_the_idle_timeout_only() -> None:
    """A request that needs more than one read but comes within the timeout is served even when its
    handler runs past the read deadline it armed, and its connection then waits for its next request."""
    with trio.fail_after(30):
        async with serving(HttpServer(SlowEcho(), "127.0.0.1", 0, LIMITS)) as served:
            client = HttpClient(_SplitFirstSend(await served.connect(), READ_S / 4))  # type: ignore[arg-type]
            assert (await client.request(b"POST", b"slow"))[1] == b"echo:slow"
            await trio.sleep(2 * READ_S)  # a lower bound: idle for longer than the read timeout
            assert (await client.request(b"POST", b"next"))[1] == b"echo:next"
