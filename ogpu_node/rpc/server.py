"""Network transport for the JSON-RPC API: HTTP/1.1 (h11) and WebSocket (trio-websocket).

This module only moves bytes between sockets and a handler; it knows nothing about JSON-RPC
methods. The handler gets a `Session` (session.py) per connection so it can push subscription
notifications over WebSocket and drop them when the connection ends.

The HTTP server also serves blobs beside the RPC (`/blobs/<hash>`, docs/rpc.md "Blobs"): those
requests go to `blobs_http.BlobRoutes`; the h11 plumbing both use is `httpio`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio
import trio_websocket as tws

from ogpu_node.rpc.access import OPEN, AccessPolicy, HttpAccess, ws_origin_allowed
from ogpu_node.rpc.admission import Admission
from ogpu_node.rpc.blobs_http import BlobRoutes
from ogpu_node.rpc.httpio import (
    BUSY,
    JSON_HEADERS,
    JSON_ONLY,
    TIMED_OUT,
    BadRequest,
    ReadClock,
    close_lingering,
    keep_alive,
    next_event,
    raw_response,
    read_body,
    response,
)
from ogpu_node.rpc.session import HttpSession, Session, SessionClosed, WsSession

log = logging.getLogger("ogpu.rpc")

_PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"600"),
]
_HEALTH_BODY = b'{"status":"ok"}'
_INTERNAL_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}'
# geth's words; a JSON-RPC error body so that JSON clients can show it.
_NOT_JSON_BODY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
    b'"message":"invalid content type, only application/json is supported"}}'
)


Handler = Callable[[bytes, Session], Awaitable[bytes | None]]


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 5 * 1024 * 1024  # like geth's 5 MiB
    max_ws_message_bytes: int = 15 * 1024 * 1024
    max_connections: int = 512
    # HTTP only (WS clients idle legitimately while subscribed); see HttpServer._serve for precision.
    idle_timeout_s: float = 120.0
    # From a request's first byte, its head and RPC body must come within this, else 408 and close (geth's
    # ReadHeaderTimeout and ReadTimeout, 30 s; shorter would cut a 5 MiB body on a link under 175 KB/s).
    read_timeout_s: float = 30.0
    ws_handshake_timeout_s: float = 10.0  # a WebSocket's opening (from the connection's start) and closing


async def _serve_tcp(server: Any, task_status: Any) -> None:
    """Bind `server._host:server.port` (0 = ephemeral, then read back, as `listen_hosts`) and serve."""
    listeners = await trio.open_tcp_listeners(server.port, host=server._host)
    server.port = listeners[0].socket.getsockname()[1]
    server.listen_hosts = tuple(listener.socket.getsockname()[0] for listener in listeners)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server._connection, listeners)
        task_status.started(server.port)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        limits: ServerLimits = ServerLimits(),
        blobs: BlobRoutes | None = None,
        access: HttpAccess | None = None,
    ) -> None:
        """`access`: the browser policy (vhosts, CORS, JSON content type); the node always passes one,
        None serves any host and origin (transport tests of a bare server)."""
        self._handler = handler
        self._host = host
        self.port = port
        self._limits = limits
        self._policy = None if access is None else AccessPolicy(access)
        self._blobs = blobs  # None: /blobs/ is not served (404)
        self._admission = Admission(limits.max_connections)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await _serve_tcp(self, task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        # Latency matters more than packet count for small JSON replies (trio sets this already).
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        admission = self._admission
        if not admission.admit():  # every slot has a request in progress
            await close_lingering(stream, BUSY)
            return
        session = HttpSession(self.listen_hosts, stream)
        limits = self._limits
        idle = trio.CancelScope(deadline=trio.current_time() + limits.idle_timeout_s)
        clock = ReadClock(idle, limits.read_timeout_s, limits.idle_timeout_s)
        try:
            with idle:
                await self._serve(stream, h11.Connection(h11.SERVER), session, idle, clock)
            # Half a request by its deadline: nothing said yet, so 408 (one evicted before it: just closed).
            if idle.cancelled_caught and clock.armed and trio.current_time() >= idle.deadline:
                log.debug("request not received within %gs: 408", limits.read_timeout_s)
                await close_lingering(stream, TIMED_OUT)
        except h11.RemoteProtocolError as exc:
            log.debug("malformed HTTP request: %s", exc)  # client error: no traceback
            await close_lingering(stream, raw_response(400, "Bad Request", b'{"error":"bad request"}'))
        except BadRequest as exc:
            await close_lingering(stream, exc.response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError) as exc:
            log.debug("HTTP connection dropped: %r", exc)
        finally:
            admission.release(idle)
            session.fire_close()
            await trio.aclose_forcefully(stream)

    async def _serve(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        session: HttpSession,
        idle: trio.CancelScope,
        clock: ReadClock,
    ) -> None:
        # One cancel scope per connection instead of a scope (or nursery) per request: this loop is
        # the hot path of sequential keep-alive clients. keep_alive moves the deadline only once half
        # of it is used up, so one request may run at least idle_s/2 (geth bounds a request by its
        # 30 s write timeout in the same way). ReadClock moves it for a request that takes several reads.
        idle_s = self._limits.idle_timeout_s
        max_body = self._limits.max_body_bytes
        policy = self._policy
        admission = self._admission
        while True:
            keep_alive(idle, idle_s)
            # Until a whole request has come (head and body: a slow body is no request yet), this
            # connection may be closed to make room (admission.py).
            admission.idle(idle)
            event = await next_event(stream, conn, clock)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            verdict = OPEN if policy is None else policy.check(event)
            if verdict.status is not None:
                raise BadRequest(verdict.status, "Forbidden", b'{"error":"%s"}' % verdict.reason.encode())
            cors = verdict.cors
            if self._blobs is not None and self._blobs.matches(event.target):
                clock.done()  # the head has come; a blob's body is the route's to bound
                admission.busy(idle)  # an upload streams for as long as it needs
                await self._blobs.serve(stream, conn, event, idle, cors)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            body = await read_body(stream, conn, event, max_body, clock)
            clock.done()
            admission.busy(idle)
            method = event.method
            headers = _json_headers(cors)
            if method == b"POST":
                if not verdict.json_body:  # a browser sends text/plain cross-origin without a preflight
                    out = response(conn, 415, headers, _NOT_JSON_BODY)
                else:
                    try:
                        reply = await self._handler(body, session)
                        status = 200
                    except Exception:
                        log.exception("RPC handler failed")
                        reply, status = _INTERNAL_BODY, 500
                    out = response(conn, status, headers, reply or b"")
            elif method == b"GET":
                out = response(conn, 200, headers, _HEALTH_BODY)
            elif method == b"OPTIONS":  # an unlisted origin's preflight gets no CORS headers: it fails
                preflight = [*cors, *(_PREFLIGHT_HEADERS if cors else ()), (b"content-length", b"0")]
                out = conn.send(h11.Response(status_code=204, headers=preflight, reason=b"No Content"))
                out += conn.send(h11.EndOfMessage())
            else:  # a HEAD response must not carry a body (h11 would refuse it)
                body = b"" if method == b"HEAD" else b'{"error":"method not allowed"}'
                out = response(conn, 405, [*headers, (b"allow", b"POST, GET, OPTIONS")], body)
            await stream.send_all(out)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


def _json_headers(cors: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Reply headers without building a list per request in the two common cases."""
    if not cors:
        return JSON_ONLY
    if cors is OPEN.cors:
        return JSON_HEADERS
    return [*JSON_ONLY, *cors]


class WebSocketServer:
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        limits: ServerLimits = ServerLimits(),
        access: HttpAccess | None = None,
    ) -> None:
        """`access`: its `ws_origins` decide which browser pages may connect; None: any."""
        self._handler = handler
        self._host = host
        self.port = port
        self._limits = limits
        self._access = access
        self._admission = Admission(limits.max_connections)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        # Our own accept loop rather than serve_websocket, so that the connection limit is applied
        # before the handshake: a rejected handshake (request.reject) leaves the socket open.
        await _serve_tcp(self, task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        admission = self._admission
        if not admission.admit():
            await close_lingering(stream, BUSY)
            return
        evict = trio.CancelScope()  # cancelled when this connection, idle, must make room (admission.py)
        try:
            with evict:
                await self._serve(stream, evict)
        finally:
            admission.release(evict)
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream, evict: trio.CancelScope) -> None:
        admission = self._admission
        handshake_s = self._limits.ws_handshake_timeout_s
        async with trio.open_nursery() as nursery:  # holds trio-websocket's reader task
            ws = request = None
            admission.idle(evict)  # a handshake that has not come yet
            # From the connection's start, so a handshake trickled a byte at a time is bounded too.
            with trio.move_on_after(handshake_s) as handshake:
                try:
                    request = await tws.wrap_server_stream(
                        nursery, stream, max_message_size=self._limits.max_ws_message_bytes
                    )
                    if self._access is not None and not ws_origin_allowed(self._access, request.headers):
                        # A web page (or a DNS-rebound one) the node's user happens to visit.
                        await request.reject(403, body=b"origin not allowed")
                    else:
                        ws = await request.accept()
                except tws.ConnectionClosed:
                    pass
            if ws is None:
                nursery.cancel_scope.cancel()  # the reader task, which leaves the socket open
            else:
                try:
                    await self._messages(ws, evict, stream)
                finally:
                    # Let the reader task finish the closing handshake, within a bound.
                    nursery.cancel_scope.deadline = trio.current_time() + handshake_s
                    await ws.aclose()
        if handshake.cancelled_caught and request is None:  # its head did not come in time: nothing said yet
            log.debug("websocket handshake not received within %gs: 408", handshake_s)
            await close_lingering(stream, TIMED_OUT)

    async def _messages(
        self, ws: tws.WebSocketConnection, evict: trio.CancelScope, stream: trio.SocketStream
    ) -> None:
        admission = self._admission
        session = WsSession(ws, self.listen_hosts, stream)
        try:
            # One message at a time, so replies keep the order of requests on this connection.
            while True:
                admission.idle(evict)  # silent (subscribed or not) until its next message
                try:
                    message = await ws.get_message()
                    admission.busy(evict)
                except tws.ConnectionClosed as exc:
                    # Includes 1009 (message too big), which trio-websocket sends itself.
                    log.debug("websocket closed: %s", exc.reason)
                    return
                data = message.encode() if isinstance(message, str) else message
                try:
                    reply = await self._handler(data, session)
                except Exception:
                    log.exception("RPC handler failed")
                    reply = _INTERNAL_BODY
                if reply is not None:
                    try:
                        await session.send(reply)
                    except SessionClosed:
                        return
        finally:
            session.fire_close()
