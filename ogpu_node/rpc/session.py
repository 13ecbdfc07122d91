"""What a JSON-RPC handler gets for each connection (rpc/server.py makes them): a way to push
notifications over WebSocket, callbacks run when the connection ends, and where the connection came
from, so that a method can be served to this machine only (rpc/net.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio
import trio_websocket as tws

log = logging.getLogger("ogpu.rpc")


class Session(Protocol):
    """What the handler gets for each connection."""

    is_websocket: bool
    # The hosts the server is bound to and the client's (None: unknown); rpc/net.py serves admin_* by them.
    listen_hosts: tuple[str, ...]
    remote_host: str | None

    async def send(self, payload: bytes) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...


class SessionClosed(ConnectionError):
    """Raised by a WebSocket session's `send` once the connection is gone."""


class BaseSession:
    is_websocket = False

    def __init__(self, listen_hosts: tuple[str, ...] = (), stream: trio.SocketStream | None = None) -> None:
        self._callbacks: list[Callable[[], None]] | None = []
        self.listen_hosts = listen_hosts
        try:
            self.remote_host: str | None = None if stream is None else str(stream.socket.getpeername()[0])
        except OSError:  # the client is already gone
            self.remote_host = None

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._callbacks is None:  # already closed: run now so the caller still cleans up
            callback()
        else:
            self._callbacks.append(callback)

    def fire_close(self) -> None:
        """Run the on_close callbacks: the server calls it once the connection has ended."""
        callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one bad callback must not leak the others' subscriptions
                log.exception("session on_close callback failed")


class HttpSession(BaseSession):
    async def send(self, payload: bytes) -> None:
        raise RuntimeError("cannot push messages over HTTP; use a WebSocket connection")


class WsSession(BaseSession):
    is_websocket = True

    def __init__(
        self, ws: tws.WebSocketConnection, listen_hosts: tuple[str, ...], stream: trio.SocketStream
    ) -> None:
        super().__init__(listen_hosts, stream)
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
