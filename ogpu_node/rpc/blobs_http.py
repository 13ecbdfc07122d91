"""The blob routes beside the RPC (`/blobs`, `/blobs/<hash>`; docs/rpc.md "Blobs").

PUT stores a blob, signed by an uploader the rules admit (`blobs/uploads.py`), its hash checked; GET and
HEAD serve one to anyone, OPTIONS answers a browser's preflight. Bodies move between the socket and the `BlobStore` in bounded slices, file I/O
and hashing in worker threads, and a long transfer keeps its connection from timing out as idle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from ogpu_node.blobs import (
    BlobHashMismatch,
    BlobNotFound,
    BlobStoreFull,
    BlobTooLarge,
    UploadGate,
    UploadRefused,
    parse_hash,
)
from ogpu_node.rpc.httpio import (
    CORS,
    REASONS,
    BadRequest,
    keep_alive,
    next_event,
    read_body,
    send_json,
)

log = logging.getLogger("ogpu.rpc")

PREFIX = b"/blobs"
_IO = 1024 * 1024  # bytes per worker-thread call when writing or reading a blob file
_METHODS = b"GET, HEAD, PUT, OPTIONS"
_PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", _METHODS),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"600"),
]
Headers = list[tuple[bytes, bytes]]


class BlobRoutes:
    """Serves the requests under /blobs of one HTTP server."""

    def __init__(self, gate: UploadGate, max_body_bytes: int, idle_timeout_s: float,
                 fetch: Callable[[bytes], Awaitable[bool]] | None = None) -> None:
        """``fetch``: gets a blob this node lacks from its peers (True once stored); None: no network."""
        self._gate = gate
        self._fetch = fetch
        self._store = gate.store
        self._max_body = max_body_bytes  # bound on bodies other than a PUT's blob
        self._idle_s = idle_timeout_s

    @staticmethod
    def matches(target: bytes) -> bool:
        return target.startswith(PREFIX)

    async def serve(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        idle: trio.CancelScope,
        cors: Headers | None = None,
    ) -> None:
        """Serve one request; the response is fully written when this returns. `cors`: the CORS
        headers the server's policy gives this request (access.py); None: `*`, for a bare server."""
        try:
            await self._route(stream, conn, request, idle, [CORS] if cors is None else cors)
        except OSError:  # disk full, permissions: this request fails, the server goes on
            log.exception("blob request failed")
            raise BadRequest(500, "Internal Server Error", b'{"error":"blob storage failed"}') from None

    async def _route(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, idle: trio.CancelScope,
        cors: Headers,
    ) -> None:
        path = request.target.split(b"?", 1)[0].rstrip(b"/")
        method = request.method
        if path == PREFIX:
            blob_hash = None
        elif path.startswith(PREFIX + b"/") and b"/" not in path[len(PREFIX) + 1 :]:
            try:
                blob_hash = parse_hash(path[len(PREFIX) + 1 :])
            except ValueError as exc:
                await self._drain_or_close(stream, conn, request, 400, {"error": str(exc)}, cors)
                return
        else:
            await self._drain_or_close(stream, conn, request, 404, {"error": "not found"}, cors)
            return
        if method == b"PUT":
            await self._put(stream, conn, request, blob_hash, idle, cors)
            return
        if method not in (b"GET", b"HEAD", b"OPTIONS"):
            await self._drain_or_close(stream, conn, request, 405, {"error": "method not allowed"}, cors)
            return
        await read_body(stream, conn, request, self._max_body)  # normally empty
        if method == b"OPTIONS":  # a preflight from an origin the policy does not list gets no CORS headers
            headers = [*cors, *(_PREFLIGHT_HEADERS if cors else ()), (b"content-length", b"0")]
            out = conn.send(h11.Response(status_code=204, headers=headers, reason=b"No Content"))
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
        elif blob_hash is None:
            await send_json(stream, conn, 405, {"error": "method not allowed"}, [(b"allow", b"PUT"), *cors])
        else:
            await self._get(stream, conn, blob_hash, method == b"HEAD", idle, cors)

    async def _put(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        blob_hash: bytes | None,
        idle: trio.CancelScope,
        cors: Headers,
    ) -> None:
        store = self._store
        if blob_hash is None:
            raise BadRequest(400, "Bad Request", b'{"error":"an upload names its blob: PUT /blobs/0x<hash>"}')
        headers = dict(request.headers)  # h11 lower-cases names and refuses two differing lengths
        if b"content-length" not in headers:  # the signature covers the size: it is declared up front
            raise BadRequest(411, "Length Required", b'{"error":"an upload declares its size (Content-Length)"}')
        size = int(headers[b"content-length"])
        if size > store.max_bytes:
            # Refuse on the declared length, before reading (or sending 100 Continue for) any of it.
            raise BadRequest(413, "Payload Too Large", _too_large(store.max_bytes))
        try:
            ticket = await trio.to_thread.run_sync(self._gate.admit, blob_hash, size, headers.get(b"authorization"))
        except UploadRefused as exc:
            raise BadRequest(exc.status, REASONS[exc.status].decode(), _refused(exc)) from None
        try:
            await self._receive(stream, conn, blob_hash, ticket, idle, cors)
        finally:
            self._gate.release(ticket)

    async def _receive(
        self, stream: trio.SocketStream, conn: h11.Connection, blob_hash: bytes, ticket: Any,
        idle: trio.CancelScope, cors: Headers,
    ) -> None:
        store = self._store
        try:
            writer = await trio.to_thread.run_sync(store.writer, blob_hash)
        except BlobStoreFull as exc:
            raise BadRequest(507, "Insufficient Storage", _disk_full(exc)) from None
        try:
            pending = bytearray()
            while True:
                event = await next_event(stream, conn)
                if isinstance(event, h11.Data):
                    pending += event.data
                    if len(pending) >= _IO:
                        await trio.to_thread.run_sync(writer.write, bytes(pending))
                        pending.clear()
                    keep_alive(idle, self._idle_s)  # a long upload is not idle
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected event {type(event).__name__}")
            if pending:
                await trio.to_thread.run_sync(writer.write, bytes(pending))
            stored, size, created = await trio.to_thread.run_sync(self._gate.commit, writer, ticket)
        except UploadRefused as exc:
            raise BadRequest(exc.status, REASONS[exc.status].decode(), _refused(exc)) from None
        except BlobTooLarge:
            raise BadRequest(413, "Payload Too Large", _too_large(store.max_bytes)) from None
        except BlobStoreFull as exc:
            raise BadRequest(507, "Insufficient Storage", _disk_full(exc)) from None
        except BlobHashMismatch as exc:
            body = {
                "error": "hash mismatch",
                "expected": "0x" + exc.expected.hex(),
                "actual": "0x" + exc.actual.hex(),
                "size": exc.size,
            }
            await send_json(stream, conn, 400, body, cors)
            return
        finally:
            writer.abort()  # a no-op once committed; drops the temporary file otherwise
        if created:
            await trio.to_thread.run_sync(self._gate.stored, stored)
        log.debug("stored blob 0x%s size=%d created=%s", stored.hex(), size, created)
        location = [(b"location", b"/blobs/0x" + stored.hex().encode()), *cors]
        await send_json(stream, conn, 201 if created else 200, {"hash": "0x" + stored.hex(), "size": size}, location)

    async def _get(
        self, stream: trio.SocketStream, conn: h11.Connection, blob_hash: bytes, head: bool, idle: trio.CancelScope,
        cors: Headers,
    ) -> None:
        try:
            file = await trio.to_thread.run_sync(self._store.open, blob_hash)
        except BlobNotFound as exc:
            if self._fetch is None or not await self._fetch(blob_hash):
                await send_json(stream, conn, 404, {"error": str(exc)}, cors, head=head)
                return
            file = await trio.to_thread.run_sync(self._store.open, blob_hash)
        try:
            size = await trio.to_thread.run_sync(lambda: os.fstat(file.fileno()).st_size)
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
                (b"etag", b'"0x' + blob_hash.hex().encode() + b'"'),
                (b"cache-control", b"public, max-age=31536000, immutable"),  # content-addressed
                *cors,
            ]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))
            if not head:
                sent = 0
                while sent < size:
                    data = await trio.to_thread.run_sync(file.read, min(_IO, size - sent))
                    if not data:  # the file cannot shrink (content-addressed); fail loudly if it did
                        raise h11.LocalProtocolError("blob file ended early")
                    sent += len(data)
                    await stream.send_all(conn.send(h11.Data(data=data)))
                    keep_alive(idle, self._idle_s)
            await stream.send_all(conn.send(h11.EndOfMessage()))
        finally:
            file.close()

    async def _drain_or_close(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        status: int,
        body: dict[str, Any],
        cors: Headers,
    ) -> None:
        """Answer an error; read a small body first to keep the connection, else close after replying."""
        try:
            await read_body(stream, conn, request, self._max_body)
        except BadRequest:
            raise BadRequest(status, REASONS[status].decode(), json.dumps(body).encode()) from None
        await send_json(stream, conn, status, body, cors, head=request.method == b"HEAD")


def _disk_full(exc: BlobStoreFull) -> bytes:
    return json.dumps({"error": str(exc), "free": exc.free, "min_free": exc.min_free}).encode()


def _refused(exc: UploadRefused) -> bytes:
    return json.dumps({"error": str(exc), **exc.details}).encode()


def _too_large(max_bytes: int) -> bytes:
    return json.dumps({"error": "blob too large", "max_bytes": max_bytes}).encode()
