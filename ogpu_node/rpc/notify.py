"""Writing subscription notifications to WebSocket sessions without ever making block production wait.

Each session has its own queue (`_Outbox`) and writer task; publishing a block only enqueues. A session
that falls too far behind, or does not take a batch in time, is given up: the owner (FilterApi) is told
and cancels its subscriptions. Before, a client with many subscriptions that never read delayed every
next block by SEND_TIMEOUT_S (issue 10, item 6).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import trio

SEND_TIMEOUT_S = 5.0
# Notifications wait per WebSocket connection in a queue of at most this many blocks behind the one
# being written; a connection further behind loses its subscriptions at once. Pending-transaction
# hashes join the queue's last batch, at most MAX_QUEUED_HASHES of them.
MAX_QUEUED_BATCHES = 1
MAX_QUEUED_HASHES = 10_000


class _Outbox:
    """One WebSocket session's queued notifications: whole blocks, and pending hashes merged into the
    last batch (a burst of transactions is one batch, not one per hash)."""

    def __init__(self) -> None:
        self._batches: collections.deque[tuple[bool, list[bytes]]] = collections.deque()
        self._blocks = 0  # block batches queued
        self._hashes = 0  # pending-hash messages queued
        self._ready = trio.Event()
        self._closed = False

    def put(self, payloads: list[bytes], block: bool) -> bool:
        """Queue a batch; False when the session is too far behind to take it."""
        if self._closed:
            return True
        if block:
            if self._blocks >= MAX_QUEUED_BATCHES:
                return False
            self._blocks += 1
            self._batches.append((True, payloads))
        else:
            if self._hashes + len(payloads) > MAX_QUEUED_HASHES:
                return False
            self._hashes += len(payloads)
            if self._batches and not self._batches[-1][0]:
                self._batches[-1][1].extend(payloads)
            else:
                self._batches.append((False, payloads))
        self._ready.set()
        return True

    async def get(self) -> list[bytes] | None:
        """The next batch, once there is one; None once closed."""
        while not self._batches and not self._closed:
            await self._ready.wait()
            self._ready = trio.Event()
        if self._closed:
            return None
        is_block, payloads = self._batches.popleft()
        if is_block:
            self._blocks -= 1
        else:
            self._hashes -= len(payloads)
        return payloads

    def close(self) -> None:
        self._closed = True
        self._batches.clear()
        self._ready.set()


class Notifier:
    def __init__(self, on_drop: Callable[[Any, str], None]) -> None:
        """`on_drop(session, why)`: the session was given up (called at most once per fall-behind)."""
        self._on_drop = on_drop
        self._outboxes: dict[Any, _Outbox] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def forget(self, session: Any) -> None:
        """Stop writing to `session`: what is queued is dropped, its writer ends after its batch."""
        outbox = self._outboxes.pop(session, None)
        if outbox is not None:
            outbox.close()

    async def send_all(self, messages: list[tuple[Any, bytes]], block: bool) -> None:
        """Queue each session's messages for that session's own writer task (`block`: one block's).

        The caller (block production) never waits for a client: a session that already has
        MAX_QUEUED_BATCHES blocks queued behind the one being written (or MAX_QUEUED_HASHES pending
        hashes), or that does not take one batch within SEND_TIMEOUT_S, loses all its subscriptions
        at once (its stream may hold a cut-off frame by then, so nothing more is pushed to it).
        Without a running `run` (no nursery), batches are written here, concurrently.
        """
        by_session: dict[Any, list[bytes]] = {}
        for session, payload in messages:
            by_session.setdefault(session, []).append(payload)
        if self._nursery is None:
            async with trio.open_nursery() as nursery:
                for session, payloads in by_session.items():
                    nursery.start_soon(self._deliver, session, payloads)
            return
        for session, payloads in by_session.items():
            outbox = self._outboxes.get(session)
            if outbox is None:
                outbox = self._outboxes[session] = _Outbox()
                self._nursery.start_soon(self._writer, session, outbox)
            if not outbox.put(payloads, block):
                self._on_drop(session, f"did not read its notifications (over {MAX_QUEUED_BATCHES} block(s) behind)")

    async def _writer(self, session: Any, outbox: _Outbox) -> None:
        while True:
            payloads = await outbox.get()
            if payloads is None or not await self._deliver(session, payloads):
                return

    async def _deliver(self, session: Any, payloads: list[bytes]) -> bool:
        """Write one batch; False when the session was dropped for not taking it."""
        failure = f"did not read its notifications within {SEND_TIMEOUT_S:.0f} s"
        with trio.move_on_after(SEND_TIMEOUT_S):
            try:
                for payload in payloads:
                    await session.send(payload)
                return True
            except Exception as exc:  # a closed connection; never let one session break the others
                failure = f"failed: {exc!r}"
        self._on_drop(session, failure)
        return False
