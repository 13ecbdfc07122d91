"""Network transport for the JSON-RPC API: HTTP/1.1 (h11) and WebSocket (trio-websocket).

This module only moves bytes between sockets and a handler; it knows nothing about JSON-RPC
methods. The handler gets a `Session` per connection so it can push subscription notifications
over WebSocket and drop them when the connection ends.

The HTTP server also serves blobs beside the RPC (`/blobs/<hash>`, docs/rpc.md "Blobs"), streamed
between the socket and a `BlobStore` in bounded slices, file I/O and hashing in worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import h11
import trio
import trio_websocket as tws

from ogpu_node.blobs import BlobHashMismatch, BlobNotFound, BlobStore, BlobTooLarge, parse_hash

log = logging.getLogger("ogpu.rpc")

_CHUNK = 64 * 1024
_LINGER_S = 1.0  # how long to drain an abandoned request before closing (see _close_lingering)
_WS_HANDSHAKE_S = 10.0  # bound on the opening and the closing handshake of a WebSocket
_CORS = (b"access-control-allow-origin", b"*")
_JSON_HEADERS = [(b"content-type", b"application/json"), _CORS]
_PREFLIGHT_HEADERS = [
    _CORS,
    (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"600"),
    (b"content-length", b"0"),
]
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_HEALTH_BODY = b'{"status":"ok"}'
_TOO_LARGE_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request body too large"}}'
_INTERNAL_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}'
_BLOB_PREFIX = b"/blobs"
_BLOB_IO = 1024 * 1024  # bytes per worker-thread call when writing or reading a blob file
_BLOB_METHODS = b"GET, HEAD, PUT, OPTIONS"
_BLOB_PREFLIGHT_HEADERS = [
    _CORS,
    (b"access-control-allow-methods", _BLOB_METHODS),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"600"),
    (b"content-length", b"0"),
]


class Session(Protocol):
    """What the handler gets for each connection."""

    is_websocket: bool

    async def send(self, payload: bytes) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...


Handler = Callable[[bytes, Session], Awaitable[bytes | None]]


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 5 * 1024 * 1024  # like geth's 5 MiB
    max_ws_message_bytes: int = 15 * 1024 * 1024
    max_connections: int = 512
    # HTTP only (WS clients idle legitimately while subscribed); see HttpServer._serve for precision.
    idle_timeout_s: float = 120.0


class SessionClosed(ConnectionError):
    """Raised by a WebSocket session's `send` once the connection is gone."""


class _BaseSession:
    is_websocket = False

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] | None = []

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._callbacks is None:  # already closed: run now so the caller still cleans up
            callback()
        else:
            self._callbacks.append(callback)

    def _fire_close(self) -> None:
        callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one bad callback must not leak the others' subscriptions
                log.exception("session on_close callback failed")


class _HttpSession(_BaseSession):
    async def send(self, payload: bytes) -> None:
        raise RuntimeError("cannot push messages over HTTP; use a WebSocket connection")


class _WsSession(_BaseSession):
    is_websocket = True

    def __init__(self, ws: tws.WebSocketConnection) -> None:
        super().__init__()
        self._ws = ws
        self._lock = trio.Lock()  # replies and notifications come from different tasks

    async def send(self, payload: bytes) -> None:
        try:
            message: str | bytes = payload.decode()
        except UnicodeDecodeError:
            message = payload
        try:
            async with self._lock:
                await self._ws.send_message(message)
        except tws.ConnectionClosed as exc:
            raise SessionClosed("websocket connection closed") from exc


def _raw_response(status: int, reason: str, body: bytes) -> bytes:
    """A complete `Connection: close` response, written without h11 because these are sent when
    the h11 state machine is unusable (malformed request) or was never started (503)."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\naccess-control-allow-origin: *\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _close_lingering(stream: trio.SocketStream, data: bytes) -> None:
    """Send a final response and close. Closing a socket with unread input makes the kernel send
    RST, which can destroy the response before the client reads it; so half-close and drain."""
    try:
        await stream.send_all(data)
        await stream.send_eof()
        with trio.move_on_after(_LINGER_S):
            while await stream.receive_some(_CHUNK):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    await trio.aclose_forcefully(stream)


async def _serve_tcp(server: Any, task_status: Any) -> None:
    """Bind `server._host:server.port` (0 = ephemeral, then read back) and serve its connections."""
    listeners = await trio.open_tcp_listeners(server.port, host=server._host)
    server.port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server._connection, listeners)
        task_status.started(server.port)


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(reason)
        self.response = _raw_response(status, reason, body)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        limits: ServerLimits = ServerLimits(),
        blob_routes: BlobStore | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self.port = port
        self._limits = limits
        self._blobs = blob_routes  # None: /blobs/ is not served (404)
        self._active = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await _serve_tcp(self, task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        # Latency matters more than packet count for small JSON replies (trio sets this already).
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if self._active >= self._limits.max_connections:
            await _close_lingering(stream, _raw_response(503, "Service Unavailable", b'{"error":"busy"}'))
            return
        self._active += 1
        session = _HttpSession()
        try:
            with trio.CancelScope(deadline=trio.current_time() + self._limits.idle_timeout_s) as idle:
                await self._serve(stream, h11.Connection(h11.SERVER), session, idle)
        except h11.RemoteProtocolError as exc:
            log.debug("malformed HTTP request: %s", exc)  # client error: no traceback
            await _close_lingering(stream, _raw_response(400, "Bad Request", b'{"error":"bad request"}'))
        except _BadRequest as exc:
            await _close_lingering(stream, exc.response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError) as exc:
            log.debug("HTTP connection dropped: %r", exc)
        finally:
            self._active -= 1
            session._fire_close()
            await trio.aclose_forcefully(stream)

    async def _serve(
        self, stream: trio.SocketStream, conn: h11.Connection, session: _HttpSession, idle: trio.CancelScope
    ) -> None:
        # One cancel scope per connection instead of a scope (or nursery) per request: this loop is
        # the hot path of sequential keep-alive clients. Moving a deadline is a heap update, so it is
        # only pushed out once half of it is used up; the connection therefore closes between
        # idle_s/2 and idle_s after its last request, and one request may run at least idle_s/2
        # (geth bounds a request by its 30 s write timeout in the same way).
        idle_s = self._limits.idle_timeout_s
        max_body = self._limits.max_body_bytes
        while True:
            now = trio.current_time()
            if idle.deadline - now < idle_s / 2:
                idle.deadline = now + idle_s
            event = await self._next_event(stream, conn)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request)
            if event.target.startswith(_BLOB_PREFIX) and self._blobs is not None:
                try:
                    await self._blob_request(stream, conn, event, idle)
                except OSError:  # disk full, permissions: this request fails, the server goes on
                    log.exception("blob request failed")
                    raise _BadRequest(
                        500, "Internal Server Error", b'{"error":"blob storage failed"}'
                    ) from None
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                continue
            body = await self._read_body(stream, conn, event, max_body)
            method = event.method
            if method == b"POST":
                try:
                    reply = await self._handler(body, session)
                    status, headers = 200, _JSON_HEADERS
                except Exception:
                    log.exception("RPC handler failed")
                    reply, status, headers = _INTERNAL_BODY, 500, _JSON_HEADERS
                out = self._response(conn, status, headers, reply or b"")
            elif method == b"GET":
                out = self._response(conn, 200, _JSON_HEADERS, _HEALTH_BODY)
            elif method == b"OPTIONS":
                out = conn.send(
                    h11.Response(status_code=204, headers=_PREFLIGHT_HEADERS, reason=b"No Content")
                )
                out += conn.send(h11.EndOfMessage())
            else:  # a HEAD response must not carry a body (h11 would refuse it)
                body = b"" if method == b"HEAD" else b'{"error":"method not allowed"}'
                out = self._response(conn, 405, [*_JSON_HEADERS, (b"allow", b"POST, GET, OPTIONS")], body)
            await stream.send_all(out)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    @staticmethod
    def _response(
        conn: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        # Build the whole response and write it with one send_all (one syscall, one segment).
        hdrs = [*headers, (b"content-length", str(len(body)).encode())]
        out = conn.send(h11.Response(status_code=status, headers=hdrs, reason=_REASONS[status]))
        if body:
            out += conn.send(h11.Data(data=body))
        return out + conn.send(h11.EndOfMessage())

    @staticmethod
    async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if conn.they_are_waiting_for_100_continue:  # curl sends Expect for bodies > 1 KiB
                await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            conn.receive_data(await stream.receive_some(_CHUNK))

    async def _read_body(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, max_body: int
    ) -> bytes:
        for name, value in request.headers:
            # Reject on the declared length before reading (and buffering) any of the body.
            if name == b"content-length" and int(value) > max_body:
                raise _BadRequest(413, "Payload Too Large", _TOO_LARGE_BODY)
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(stream, conn)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:  # chunked bodies declare no length up front
                    raise _BadRequest(413, "Payload Too Large", _TOO_LARGE_BODY)
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise h11.RemoteProtocolError(f"unexpected event {type(event).__name__}")

    # -- blobs --

    async def _blob_request(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, idle: trio.CancelScope
    ) -> None:
        """Serve one request under /blobs; the response is fully written when this returns."""
        assert self._blobs is not None
        store = self._blobs
        path = request.target.split(b"?", 1)[0].rstrip(b"/")
        method = request.method
        if path == _BLOB_PREFIX:
            blob_hash = None
        elif path.startswith(_BLOB_PREFIX + b"/") and b"/" not in path[len(_BLOB_PREFIX) + 1 :]:
            try:
                blob_hash = parse_hash(path[len(_BLOB_PREFIX) + 1 :])
            except ValueError as exc:
                await self._drain_or_close(stream, conn, request, 400, {"error": str(exc)})
                return
        else:
            await self._drain_or_close(stream, conn, request, 404, {"error": "not found"})
            return
        if method == b"PUT":
            await self._blob_put(stream, conn, request, store, blob_hash, idle)
            return
        if method not in (b"GET", b"HEAD", b"OPTIONS"):
            await self._drain_or_close(stream, conn, request, 405, {"error": "method not allowed"})
            return
        await self._read_body(stream, conn, request, self._limits.max_body_bytes)  # normally empty
        if method == b"OPTIONS":
            out = conn.send(
                h11.Response(status_code=204, headers=_BLOB_PREFLIGHT_HEADERS, reason=b"No Content")
            )
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
        elif blob_hash is None:
            await self._send_json(stream, conn, 405, {"error": "method not allowed"}, [(b"allow", b"PUT")])
        else:
            await self._blob_get(stream, conn, store, blob_hash, method == b"HEAD", idle)

    async def _blob_put(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        store: BlobStore,
        blob_hash: bytes | None,
        idle: trio.CancelScope,
    ) -> None:
        for name, value in request.headers:
            if name == b"content-length" and int(value) > store.max_bytes:
                # Refuse on the declared length, before reading (or sending 100 Continue for) any of it.
                raise _BadRequest(413, "Payload Too Large", _blob_too_large(store.max_bytes))
        idle_s = self._limits.idle_timeout_s
        writer = await trio.to_thread.run_sync(store.writer, blob_hash)
        try:
            pending = bytearray()
            while True:
                event = await self._next_event(stream, conn)
                if isinstance(event, h11.Data):
                    pending += event.data
                    if len(pending) >= _BLOB_IO:
                        await trio.to_thread.run_sync(writer.write, bytes(pending))
                        pending.clear()
                    _keep_alive(idle, idle_s)  # a long upload is not idle
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected event {type(event).__name__}")
            if pending:
                await trio.to_thread.run_sync(writer.write, bytes(pending))
            stored, size, created = await trio.to_thread.run_sync(writer.commit)
        except BlobTooLarge:
            raise _BadRequest(413, "Payload Too Large", _blob_too_large(store.max_bytes)) from None
        except BlobHashMismatch as exc:
            body = {
                "error": "hash mismatch",
                "expected": "0x" + exc.expected.hex(),
                "actual": "0x" + exc.actual.hex(),
                "size": exc.size,
            }
            await self._send_json(stream, conn, 400, body)
            return
        finally:
            writer.abort()  # a no-op once committed; drops the temporary file otherwise
        log.debug("stored blob 0x%s size=%d created=%s", stored.hex(), size, created)
        location = [(b"location", b"/blobs/0x" + stored.hex().encode())]
        await self._send_json(
            stream, conn, 201 if created else 200, {"hash": "0x" + stored.hex(), "size": size}, location
        )

    async def _blob_get(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        store: BlobStore,
        blob_hash: bytes,
        head: bool,
        idle: trio.CancelScope,
    ) -> None:
        try:
            file = await trio.to_thread.run_sync(store.open, blob_hash)
        except BlobNotFound as exc:
            await self._send_json(stream, conn, 404, {"error": str(exc)}, head=head)
            return
        try:
            size = await trio.to_thread.run_sync(lambda: os.fstat(file.fileno()).st_size)
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
                (b"etag", b'"0x' + blob_hash.hex().encode() + b'"'),
                (b"cache-control", b"public, max-age=31536000, immutable"),  # content-addressed
                _CORS,
            ]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
            if not head:
                sent = 0
                while sent < size:
                    data = await trio.to_thread.run_sync(file.read, min(_BLOB_IO, size - sent))
                    if not data:  # the file cannot shrink (content-addressed); fail loudly if it did
                        raise h11.LocalProtocolError("blob file ended early")
                    sent += len(data)
                    await stream.send_all(conn.send(h11.Data(data=data)))
                    _keep_alive(idle, self._limits.idle_timeout_s)
            await stream.send_all(conn.send(h11.EndOfMessage()))
        finally:
            file.close()

    async def _send_json(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        body: dict[str, Any],
        extra: list[tuple[bytes, bytes]] | None = None,
        head: bool = False,
    ) -> None:
        data = json.dumps(body).encode()
        if head:  # same headers as GET would give, no body
            hdrs = [*_JSON_HEADERS, *(extra or []), (b"content-length", str(len(data)).encode())]
            out = conn.send(h11.Response(status_code=status, headers=hdrs, reason=_REASONS[status]))
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
            return
        await stream.send_all(self._response(conn, status, [*_JSON_HEADERS, *(extra or [])], data))

    async def _drain_or_close(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        status: int,
        body: dict[str, Any],
    ) -> None:
        """Answer an error; read a small body first to keep the connection, else close after replying."""
        try:
            await self._read_body(stream, conn, request, self._limits.max_body_bytes)
        except _BadRequest:
            raise _BadRequest(status, _REASONS[status].decode(), json.dumps(body).encode()) from None
        await self._send_json(stream, conn, status, body, head=request.method == b"HEAD")


def _keep_alive(idle: trio.CancelScope, idle_s: float) -> None:
    """Push a connection's idle deadline out while a blob is moving (as _serve does per request)."""
    now = trio.current_time()
    if idle.deadline - now < idle_s / 2:
        idle.deadline = now + idle_s


def _blob_too_large(max_bytes: int) -> bytes:
    return json.dumps({"error": "blob too large", "max_bytes": max_bytes}).encode()


class WebSocketServer:
    def __init__(self, handler: Handler, host: str, port: int, limits: ServerLimits = ServerLimits()) -> None:
        self._handler = handler
        self._host = host
        self.port = port
        self._limits = limits
        self._active = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        # Our own accept loop rather than serve_websocket, so that the connection limit is applied
        # before the handshake: a rejected handshake (request.reject) leaves the socket open.
        await _serve_tcp(self, task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._active >= self._limits.max_connections:
            await _close_lingering(stream, _raw_response(503, "Service Unavailable", b'{"error":"busy"}'))
            return
        self._active += 1
        try:
            async with trio.open_nursery() as nursery:  # holds trio-websocket's reader task
                ws = None
                with trio.move_on_after(_WS_HANDSHAKE_S):
                    try:
                        request = await tws.wrap_server_stream(
                            nursery, stream, max_message_size=self._limits.max_ws_message_bytes
                        )
                        ws = await request.accept()
                    except tws.ConnectionClosed:
                        pass
                if ws is None:
                    nursery.cancel_scope.cancel()
                    return
                try:
                    await self._messages(ws)
                finally:
                    # Let the reader task finish the closing handshake, within a bound.
                    nursery.cancel_scope.deadline = trio.current_time() + _WS_HANDSHAKE_S
                    await ws.aclose()
        finally:
            self._active -= 1
            await trio.aclose_forcefully(stream)

    async def _messages(self, ws: tws.WebSocketConnection) -> None:
        session = _WsSession(ws)
        try:
            # One message at a time, so replies keep the order of requests on this connection.
            while True:
                try:
                    message = await ws.get_message()
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
            session._fire_close()
