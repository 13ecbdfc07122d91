"""Stopping a running EVM execution from inside it (eth_call's timeout, geth's --rpc.evmtimeout).

A thread cannot be cancelled from outside and keeps holding the GIL while it runs, so the execution
stops itself: every computation of a state made `interruptible` charges its gas through a meter that
calls the caller's `check` every `CHECK_EVERY` charges (each opcode charges at least once). `check`
raises `ExecutionInterrupted` to stop; that is no VMError, so py-evm does not turn it into a failed
computation but lets it unwind the whole transaction (the caller reverts the state, as eth_call does).

The check is the caller's (the RPC layer reads a monotonic clock): execution itself stays without a
wall clock (DESIGN.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable

from eth.abc import StateAPI
from eth.vm.gas_meter import GasMeter

from ogpu_node.execution.errors import CallFailed

# About a millisecond of py-evm opcodes between checks: the check costs nothing measurable, and a
# timeout overshoots by no more than that.
CHECK_EVERY = 1024


class ExecutionInterrupted(CallFailed):
    """The caller's check stopped the execution; the message says why (geth's wording)."""


class _Countdown:
    """One per interrupted execution, shared by all its (nested) computations' meters, so that a
    deep tree of short calls is checked as often as one long loop."""

    __slots__ = ("check", "left")

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.left = CHECK_EVERY


class _CheckingGasMeter(GasMeter):
    def __init__(self, start_gas: int, countdown: _Countdown) -> None:
        super().__init__(start_gas)
        self._countdown = countdown

    def consume_gas(self, amount: int, reason: str) -> None:
        countdown = self._countdown
        countdown.left -= 1
        if countdown.left <= 0:
            countdown.left = CHECK_EVERY
            countdown.check()
        super().consume_gas(amount, reason)


def interruptible(state: StateAPI, check: Callable[[], None]) -> None:
    """Make every computation `state` runs from now on call `check()` as gas is consumed.

    Only this state object changes (an instance attribute shadows its class's computation class),
    so block building and import never pay for the check."""
    countdown = _Countdown(check)
    check()  # a call that waited past its deadline for a worker thread stops before it starts
    base = type(state).computation_class

    def _configure_gas_meter(self):  # type: ignore[no-untyped-def]
        return _CheckingGasMeter(self.msg.gas, countdown)

    state.computation_class = type(  # type: ignore[misc]
        "InterruptibleComputation", (base,), {"_configure_gas_meter": _configure_gas_meter}
    )
