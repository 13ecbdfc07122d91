"""h11 plumbing shared by the RPC routes (server.py) and the blob routes (blobs_http.py): reading a
request's events and body, writing a whole response, refusing a request that cannot be answered in
protocol (`BadRequest`: a raw response, then close)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import h11
import trio

CHUNK = 64 * 1024
CORS = (b"access-control-allow-origin", b"*")
JSON_ONLY = [(b"content-type", b"application/json")]
JSON_HEADERS = [*JSON_ONLY, CORS]  # for a server without a browser policy (access.py)
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
TOO_LARGE_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request body too large"}}'
LINGER_S = 1.0  # how long close_lingering may take


def raw_response(status: int, reason: str, body: bytes) -> bytes:
    """A complete `Connection: close` response, written without h11 because these are sent when
    the h11 state machine is unusable (malformed request) or was never started (503). No CORS
    header: a web page has no business reading these refusals."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


BUSY = raw_response(503, "Service Unavailable", b'{"error":"busy"}')
TIMED_OUT = raw_response(408, "Request Timeout", b'{"error":"request not received in time"}')


async def close_lingering(stream: trio.SocketStream, data: bytes) -> None:
    """Send a final response and close. Closing a socket with unread input makes the kernel send
    RST, which can destroy the response before the client reads it; so half-close and drain. All within
    a bound: a client that never reads could otherwise block the send."""
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_all(data)
            await stream.send_eof()
            while await stream.receive_some(CHUNK):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


class BadRequest(Exception):
    """Answer with this raw response and close the connection (the body may be left unread)."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(reason)
        self.response = raw_response(status, reason, body)


def response(conn: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The whole response as bytes, to be written with one send_all (one syscall, one segment)."""
    hdrs = [*headers, (b"content-length", str(len(body)).encode())]
    out = conn.send(h11.Response(status_code=status, headers=hdrs, reason=REASONS[status]))
    if body:
        out += conn.send(h11.Data(data=body))
    return out + conn.send(h11.EndOfMessage())


class ReadClock:
    """Bounds how long one request may take to arrive, from its first byte (geth's ReadHeaderTimeout and
    ReadTimeout): its head, and the body `read_body` reads, must come within `read_s`, else the
    connection's scope is cancelled (the server then answers 408 and closes).

    It moves the connection's one idle scope rather than opening a scope per request, the keep-alive hot
    path: a request that arrives whole in one read never touches the deadline; only one that needs
    another read arms it, and `done` (the whole request has come) puts the idle deadline back."""

    __slots__ = ("_scope", "_read_s", "_idle_s", "armed")

    def __init__(self, scope: trio.CancelScope, read_s: float, idle_s: float) -> None:
        self._scope = scope
        self._read_s = read_s
        self._idle_s = idle_s
        self.armed = False  # part of a request has come and the rest has not

    def arm(self) -> None:
        if not self.armed:
            self.armed = True
            deadline = trio.current_time() + self._read_s
            if deadline < self._scope.deadline:
                self._scope.deadline = deadline

    def done(self) -> None:
        if self.armed:
            self.armed = False
            self._scope.deadline = trio.current_time() + self._idle_s


async def next_event(
    stream: trio.SocketStream, conn: h11.Connection, clock: ReadClock | None = None, begun: bool = False
) -> Any:
    """The next h11 event, reading as needed. With `clock`, a request that has begun to come and needs
    more reads is bounded by it; `begun`: part of it is known to be here already (a body's head)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        # Part of a request is here: its head, bytes read by this call, or the start of a pipelined
        # head left from the previous read (checked last: it copies the buffer, once per request).
        if clock is not None and (begun or conn.trailing_data[0]):
            clock.arm()
        if conn.they_are_waiting_for_100_continue:  # curl sends Expect for bodies > 1 KiB
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        conn.receive_data(await stream.receive_some(CHUNK))
        begun = True


async def read_body(
    stream: trio.SocketStream,
    conn: h11.Connection,
    request: h11.Request,
    max_body: int,
    clock: ReadClock | None = None,
) -> bytes:
    for name, value in request.headers:
        # Reject on the declared length before reading (and buffering) any of the body.
        if name == b"content-length" and int(value) > max_body:
            raise BadRequest(413, "Payload Too Large", TOO_LARGE_BODY)
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await next_event(stream, conn, clock, begun=True)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:  # chunked bodies declare no length up front
                raise BadRequest(413, "Payload Too Large", TOO_LARGE_BODY)
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise h11.RemoteProtocolError(f"unexpected event {type(event).__name__}")


async def send_json(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    body: dict[str, Any],
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    """A JSON response; `extra` carries the request's CORS headers, if any, and the route's own."""
    data = json.dumps(body).encode()
    if head:  # same headers as GET would give, no body
        hdrs = [*JSON_ONLY, *(extra or []), (b"content-length", str(len(data)).encode())]
        out = conn.send(h11.Response(status_code=status, headers=hdrs, reason=REASONS[status]))
        await stream.send_all(out + conn.send(h11.EndOfMessage()))
        return
    await stream.send_all(response(conn, status, [*JSON_ONLY, *(extra or [])], data))


def keep_alive(idle: trio.CancelScope, idle_s: float) -> None:
    """Push a connection's idle deadline out to `idle_s` from now, once half of it is used up: moving
    a deadline is a heap update, too dear for every request of a keep-alive client or every slice of
    a blob. The connection therefore closes between idle_s/2 and idle_s after its last activity."""
    now = trio.current_time()
    if idle.deadline - now < idle_s / 2:
        idle.deadline = now + idle_s
