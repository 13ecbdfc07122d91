"""The provider's retry rule for protocol steps: try until the step succeeds, the chain shows it
done, or the chain's clock passes the step's deadline. A dropped connection or a receipt that came
late must not cost an honest provider its stake; whether a step is done is read from chain state
(a view, or the logs), never from a revert's text."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ogpu_node.apps.client import ClientError

log = logging.getLogger("ogpu.provider")
T = TypeVar("T")
MAX_RETRY_DELAY_S = 5.0


async def persist(what: str, attempt: Callable[[], Awaitable[T]], *, now: Callable[[], Awaitable[int]],
                  deadline: Callable[[], Awaitable[int]],
                  done: Callable[[], Awaitable[bool]] | None = None) -> T | None:
    """``await attempt()`` until it returns; None when ``done()`` shows the step on chain already;
    the last error once ``now()`` (the chain's clock) reaches ``deadline()``. Backoff 1 s, doubling
    up to MAX_RETRY_DELAY_S. A node that cannot answer ``now`` or ``deadline`` is not past it."""
    delay = 1.0
    while True:
        try:
            return await attempt()
        except ClientError as exc:
            if done is not None and await _quietly(done, False):
                return None
            if await _quietly(lambda: _passed(now, deadline), False):
                raise
            log.warning("%s failed, retrying in %.0fs: %s", what, delay, exc)
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_DELAY_S)


async def _passed(now: Callable[[], Awaitable[int]], deadline: Callable[[], Awaitable[int]]) -> bool:
    return await now() >= await deadline()


async def _quietly(fn: Callable[[], Awaitable[T]], default: T) -> T:
    """``await fn()``, or ``default`` while the node cannot answer (the caller retries anyway)."""
    try:
        return await fn()
    except ClientError:
        return default


__all__ = ["MAX_RETRY_DELAY_S", "persist"]
