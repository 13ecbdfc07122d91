"""Where eth_call and eth_estimateGas run: off the event loop, behind a capacity limit, with geth's
gas cap and a deadline that stops the execution itself (execution/interrupt.py).

Without this one `eth_call` of a loop with a large gas froze the node: no other RPC, WebSocket or
block was served until it ended (issue 10, item 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from ogpu_node.execution.interrupt import ExecutionInterrupted

T = TypeVar("T")

DEFAULT_GAS_CAP = 50_000_000  # geth's --rpc.gascap
DEFAULT_EVM_TIMEOUT_S = 5.0  # geth's --rpc.evmtimeout


@dataclass(frozen=True)
class CallLimits:
    gas_cap: int = DEFAULT_GAS_CAP  # 0: no cap (as geth)
    evm_timeout_s: float = DEFAULT_EVM_TIMEOUT_S  # 0: no timeout (as geth)
    # Calls running at once; more wait. Python runs one at a time anyway (the GIL), so a few threads
    # are enough, and the event loop keeps its share of the GIL to serve everything else.
    max_concurrent: int = 4


def go_duration(seconds: float) -> str:
    """A duration as Go prints one ("5s", "1.5s", "500ms"), for geth's error text."""
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


class CallRunner:
    """Runs `fn(*args, gas_cap=..., check=...)` in a worker thread. The deadline starts when the
    request arrives, so a call that waited for a thread also ends within the timeout."""

    def __init__(self, limits: CallLimits = CallLimits()) -> None:
        self.limits = limits
        self._limiter: trio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        limits = self.limits
        if self._limiter is None:  # made inside trio.run, where it is used
            self._limiter = trio.CapacityLimiter(limits.max_concurrent)
        gas_cap = limits.gas_cap or None
        check = _deadline_check(limits.evm_timeout_s)
        work = partial(fn, *args, gas_cap=gas_cap, check=check)
        # Not abandoned on cancel: the thread stops by itself at the deadline, and its result must
        # not race the next request on the same state.
        return await trio.to_thread.run_sync(work, limiter=self._limiter)


def _deadline_check(timeout_s: float) -> Callable[[], None] | None:
    if timeout_s <= 0:
        return None
    deadline = time.monotonic() + timeout_s
    message = f"execution aborted (timeout = {go_duration(timeout_s)})"

    def check() -> None:
        if time.monotonic() > deadline:
            raise ExecutionInterrupted(message)

    return check
