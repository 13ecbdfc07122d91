"""Typed errors raised where input enters the execution layer."""


class InvalidTransaction(ValueError):
    """A transaction that can never be valid here; the message is geth's wording where geth has one."""


class InvalidBlock(ValueError):
    """A block that does not follow the chain's rules; the message names the rule."""


class CallFailed(Exception):
    """`eth_call`/`eth_estimateGas` could not run the call (bad arguments or a pre-execution check)."""


class ExecutionReverted(Exception):
    """The call ran and reverted; `data` holds the raw revert bytes."""

    def __init__(self, reason: str | None, data: bytes) -> None:
        super().__init__(f"execution reverted: {reason}" if reason else "execution reverted")
        self.reason = reason
        self.data = data
