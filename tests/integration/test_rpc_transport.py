"""The JSON-RPC transport (ogpu_node.rpc.server) over real sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trio_websocket as tws

from ogpu_node.rpc.server import HttpServer, ServerLimits, Session, SessionClosed, WebSocketServer

SMALL = ServerLimits(max_body_bytes=1024, max_ws_message_bytes=100, max_connections=2)


class Echo:
    """Echo handler that records the sessions it saw; b"none" -> no reply, b"boom" -> raises."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.closed = trio.Event()

    async def __call__(self, body: bytes, session: Session) -> bytes | None:
        if session not in self.sessions:
            self.sessions.append(session)
            session.on_close(self.closed.set)
        if body == b"none":
            return None
        if body == b"boom":
            raise ValueError("handler bug")
        if body == b"push-first":
            await session.send(b"pushed")
        return b"echo:" + body


class Served:
    """A running server's port, and the client TCP connections to it (closed with the server)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[trio.SocketStream] = []

    async def connect(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.streams.append(stream)
        return stream

    async def client(self) -> HttpClient:
        return HttpClient(await self.connect())


@asynccontextmanager
async def serving(server: HttpServer | WebSocketServer) -> AsyncIterator[Served]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        assert port == server.port and port != 0
        served = Served(port)
        try:
            yield served
        finally:
            for stream in served.streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


class HttpClient:
    """A keep-alive HTTP/1.1 client on one raw TCP connection, parsing replies with h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: bytes, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [(b"host", b"127.0.0.1"), *(headers or [(b"content-length", str(len(body)).encode())])]
        out = self.conn.send(h11.Request(method=method, target=b"/", headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        response, chunks = None, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, b"".join(chunks)


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


async def test_http_keep_alive_many_requests_one_connection() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with serving(HttpServer(handler, "127.0.0.1", 0)) as served:
            client = await served.client()
            for i in range(50):
                response, body = await client.request(b"POST", b'{"n":%d}' % i)
                assert response.status_code == 200
                assert body == b'echo:{"n":%d}' % i
                assert header(response, b"content-type") == b"application/json"
                assert header(response, b"access-control-allow-origin") == b"*"
            assert len(handler.sessions) == 1  # one connection, one session
            assert handler.sessions[0].is_websocket is False
            with pytest.raises(RuntimeError):
                await handler.sessions[0].send(b"x")
            await client.stream.aclose()
            await handler.closed.wait()  # on_close runs when the HTTP connection ends


async def test_http_pipelined_and_chunked_requests() -> None:
    with trio.fail_after(10):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0)) as served:
            stream = await served.connect()
            one = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
            two = b"POST /any HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbc\r\n1\r\nd\r\n0\r\n\r\n"
            close = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\ne"
            await stream.send_all(one + two + close)
            data = await read_all(stream)
            assert data.count(b"HTTP/1.1 200") == 3
            assert data.index(b"echo:a") < data.index(b"echo:bcd") < data.index(b"echo:e")


async def test_http_body_too_large_gets_413_and_close() -> None:
    with trio.fail_after(10):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0, SMALL)) as served:
            for headers in (b"Content-Length: 5000\r\n", b"Transfer-Encoding: chunked\r\n"):
                stream = await served.connect()
                body = b"x" * 5000 if b"Length" in headers else b"1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n"
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body)
                data = await read_all(stream)
                assert data.startswith(b"HTTP/1.1 413 ")
                assert data.endswith(
                    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request body too large"}}'
                )


async def test_http_methods_cors_health_and_none_reply() -> None:
    with trio.fail_after(10):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0)) as served:
            client = await served.client()
            response, body = await client.request(b"PUT", b"x")
            assert response.status_code == 405
            assert header(response, b"allow") == b"POST, GET, OPTIONS"
            response, body = await client.request(b"OPTIONS")
            assert response.status_code == 204
            assert header(response, b"access-control-allow-origin") == b"*"
            assert header(response, b"access-control-allow-methods") == b"POST, GET, OPTIONS"
            assert header(response, b"access-control-allow-headers") == b"Content-Type"
            response, body = await client.request(b"GET")
            assert (response.status_code, body) == (200, b'{"status":"ok"}')
            response, body = await client.request(b"POST", b"none")
            assert (response.status_code, body) == (200, b"")
            response, body = await client.request(b"POST", b"boom")
            assert response.status_code == 500 and b"-32603" in body
            response, body = await client.request(b"POST", b"still-alive")
            assert (response.status_code, body) == (200, b"echo:still-alive")


async def test_http_malformed_request_gets_400(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0)) as served:
            stream = await served.connect()
            await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
            assert (await read_all(stream)).startswith(b"HTTP/1.1 400 ")
    assert not any(record.exc_info for record in caplog.records)


async def test_http_idle_connection_is_closed() -> None:
    limits = ServerLimits(idle_timeout_s=0.2)
    with trio.fail_after(10):
        async with serving(HttpServer(Echo(), "127.0.0.1", 0, limits)) as served:
            silent = await served.connect()
            assert await read_all(silent) == b""  # never sent a request
            client = await served.client()
            assert (await client.request(b"POST", b"a"))[0].status_code == 200
            assert await read_all(client.stream) == b""  # idle after a request


async def test_http_extra_connection_gets_503() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with serving(HttpServer(handler, "127.0.0.1", 0, SMALL)) as served:
            clients = [await served.client() for _ in range(2)]
            for client in clients:  # a reply proves the server has counted the connection
                assert (await client.request(b"POST", b"a"))[0].status_code == 200
            extra = await served.connect()
            assert (await read_all(extra)).startswith(b"HTTP/1.1 503 ")
            await clients[0].stream.aclose()
            await handler.closed.wait()  # the server has let go of that connection
            client = await served.client()
            assert (await client.request(b"POST", b"b"))[0].status_code == 200


async def test_ws_round_trip_push_and_on_close() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with serving(WebSocketServer(handler, "127.0.0.1", 0)) as served:
            async with tws.open_websocket_url(f"ws://127.0.0.1:{served.port}/") as ws:
                await ws.send_message('{"a":1}')
                assert await ws.get_message() == 'echo:{"a":1}'
                await ws.send_message(b"binary")
                assert await ws.get_message() == "echo:binary"
                await ws.send_message("push-first")  # a push from inside the handler comes first
                assert await ws.get_message() == "pushed"
                assert await ws.get_message() == "echo:push-first"
                await ws.send_message("none")  # no reply; the next reply proves ordering
                await ws.send_message("boom")
                assert b"-32603" in (await ws.get_message()).encode()
                session = handler.sessions[0]
                assert session.is_websocket
                async with trio.open_nursery() as nursery:  # concurrent pushes are serialized
                    for i in range(20):
                        nursery.start_soon(session.send, b"note%d" % i)
                assert sorted([await ws.get_message() for _ in range(20)]) == sorted(
                    f"note{i}" for i in range(20)
                )
            await handler.closed.wait()
            with pytest.raises(SessionClosed):
                await session.send(b"late")


async def test_ws_oversized_message_closes_with_1009() -> None:
    handler = Echo()
    with trio.fail_after(10):
        async with serving(WebSocketServer(handler, "127.0.0.1", 0, SMALL)) as served:
            # On our own stream: trio-websocket's client never closes its socket when the server
            # ends the connection first, as it does here.
            async with trio.open_nursery() as nursery:
                ws = await tws.wrap_client_stream(nursery, await served.connect(), "127.0.0.1", "/")
                await ws.send_message("ok")
                assert await ws.get_message() == "echo:ok"
                await ws.send_message("x" * 500)
                with pytest.raises(tws.ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1009
            await handler.closed.wait()


async def test_ws_extra_connection_rejected_with_503() -> None:
    with trio.fail_after(10):
        async with serving(WebSocketServer(Echo(), "127.0.0.1", 0, SMALL)) as served:
            url = f"ws://127.0.0.1:{served.port}/"
            async with tws.open_websocket_url(url) as one, tws.open_websocket_url(url) as two:
                for ws in (one, two):  # a reply proves the server has counted the connection
                    await ws.send_message("a")
                    assert await ws.get_message() == "echo:a"
                # A raw handshake: trio-websocket's client leaks its socket when it is rejected.
                stream = await served.connect()
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                assert (await read_all(stream)).startswith(b"HTTP/1.1 503 ")
