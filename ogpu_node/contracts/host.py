"""What a native contract may ask of the chain: the host interface (DESIGN.md §3).

`execution/` implements it over a py-evm computation; the contracts never see py-evm.
"""

from __future__ import annotations

from typing import Protocol


class Revert(Exception):
    """A rule was broken: the call reverts with `Error(reason)` and changes nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Host(Protocol):
    caller: bytes
    value: int  # wei sent with the call, already credited to the contract
    is_static: bool
    block_number: int
    timestamp: int
    mix_hash: bytes
    coinbase: bytes  # the block's proposer

    def sload(self, address: bytes, slot: int) -> int: ...

    def sstore(self, address: bytes, slot: int, value: int) -> None: ...

    def balance(self, address: bytes) -> int: ...

    def transfer(self, sender: bytes, recipient: bytes, amount: int) -> None:
        """Move `amount` between balances directly (never a call into the recipient)."""

    def burn(self, holder: bytes, amount: int) -> None:
        """Destroy `amount` of `holder`'s balance."""

    def log(self, address: bytes, topics: list[bytes], data: bytes) -> None: ...

    def charge(self, gas: int) -> None: ...


class SystemCallHost(Host, Protocol):
    """The start-of-block system call's host: it alone may create coins (consensus rewards)."""

    def mint(self, recipient: bytes, amount: int) -> None: ...
