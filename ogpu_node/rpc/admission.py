"""Connection slots of one server: at the limit, the connection idle longest is closed to admit a new one.

Refusing newcomers at the limit let one client hold every slot with idle sockets (520 idle TCP
connections made every other HTTP client get 503; 512 silent WebSockets blocked new ones forever).
Every client shares 127.0.0.1 in tests and behind a proxy, so a per-address cap cannot tell them apart;
instead a connection counts as idle while it waits for its next request (HTTP: a request head;
WebSocket: the handshake or a message), and idle ones are the ones closed, oldest first. A client that
sends a request is therefore never locked out by connections that send nothing. A connection idle for
less than a short grace is not closed (a keep-alive client between two requests), so a newcomer gets
503 only while every slot is busy or was busy within the grace.
"""

from __future__ import annotations

import trio

DEFAULT_GRACE_S = 1.0


class Admission:
    def __init__(self, limit: int, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.limit = limit
        self.grace_s = grace_s
        self.active = 0
        # Idle connections' cancel scopes -> since when, oldest first (a dict keeps insertion order).
        self._idle: dict[trio.CancelScope, float] = {}

    def admit(self) -> bool:
        """Take a slot, closing the connection idle longest if none is free; False: all are busy."""
        if self.active >= self.limit:
            oldest = next(iter(self._idle), None)
            if oldest is None or trio.current_time() - self._idle[oldest] < self.grace_s:
                return False
            del self._idle[oldest]
            oldest.cancel()  # its slot is released when its task has closed it
        self.active += 1
        return True

    def release(self, scope: trio.CancelScope) -> None:
        self._idle.pop(scope, None)
        self.active -= 1

    def idle(self, scope: trio.CancelScope) -> None:
        """The connection of `scope` waits for its next request: it may be closed to make room."""
        self._idle.pop(scope, None)  # to the end: idle since now
        self._idle[scope] = trio.current_time()

    def busy(self, scope: trio.CancelScope) -> None:
        self._idle.pop(scope, None)
