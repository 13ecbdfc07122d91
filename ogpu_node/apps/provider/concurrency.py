"""The provider service's concurrency helpers on trio: blocking work in threads, and cancel scopes
grouped by what they serve (one task's executor job, its council seats …) so that a decision such
as "the task ended" cancels exactly that work, whichever tasks of the one nursery run it."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, so the loop never waits on the network, a file or
    a training process. On cancellation the thread is abandoned and its result dropped (a JSON-RPC
    call times out on its own; a training job is ended by closing its worker)."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), abandon_on_cancel=True, limiter=limiter)


async def close_shielded(closable: Any) -> None:
    """``closable.close()`` in a thread, even while the caller is being cancelled: a worker process
    must not outlive the job (or the service) that owned it."""
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(closable.close)


class Scopes:
    """Cancel scopes by key: ``with scopes.open(key):`` around a piece of work, ``scopes.cancel(key)``
    to end every piece of work open under that key."""

    def __init__(self) -> None:
        self._open: dict[Hashable, set[trio.CancelScope]] = {}

    @contextmanager
    def open(self, key: Hashable) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        group = self._open.setdefault(key, set())
        group.add(scope)
        try:
            with scope:
                yield scope
        finally:
            group.discard(scope)
            if not group and self._open.get(key) is group:
                del self._open[key]

    def cancel(self, key: Hashable) -> int:
        """Cancel the work open under ``key``; how many pieces there were."""
        group = self._open.pop(key, set())
        for scope in group:
            scope.cancel()
        return len(group)

    def count(self, key: Hashable) -> int:
        return len(self._open.get(key, ()))


__all__ = ["Scopes", "blocking", "close_shielded"]
