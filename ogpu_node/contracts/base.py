"""Dispatch of a call to a native contract: selector, payable and static checks, ABI decoding, gas."""

from __future__ import annotations

from typing import Any, ClassVar

from eth_abi.exceptions import DecodingError

from ogpu_node.contracts.abi import ContractAbi, decode_args, encode_result, load_abi
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.storage import Storage

# Fixed cost of entering any function, before its storage and logs are charged (a Solidity function's
# dispatch, ABI decoding and memory work come to a few hundred gas; we round up).
CALL_BASE_GAS = 2_000


class NativeContract:
    NAME: ClassVar[str]
    ADDRESS: ClassVar[bytes]

    def __init__(self) -> None:
        self.abi: ContractAbi = load_abi(self.NAME)

    def storage(self, host: Host) -> Storage:
        return Storage(host, self.ADDRESS)

    def emit(self, host: Host, event: str, **values: Any) -> None:
        topics, data = self.abi.encode_event(event, values)
        host.log(self.ADDRESS, topics, data)

    def call(self, host: Host, calldata: bytes) -> bytes:
        """Run one external call; raises Revert on any broken rule."""
        if len(calldata) < 4:
            raise Revert(f"{self.NAME}: calldata has no function selector")
        fn = self.abi.functions.get(calldata[:4])
        if fn is None:
            raise Revert(f"{self.NAME}: unknown function selector 0x{calldata[:4].hex()}")
        if host.value and not fn.payable:
            raise Revert(f"{self.NAME}.{fn.name}: function is not payable")
        if host.is_static and not fn.view:
            raise Revert(f"{self.NAME}.{fn.name}: state change in a static call")
        host.charge(CALL_BASE_GAS)
        try:
            args = decode_args(fn, calldata[4:])
        except (DecodingError, ValueError, OverflowError):
            raise Revert(f"{self.NAME}.{fn.name}: malformed arguments") from None
        try:
            result = getattr(self, fn.name)(host, *args)
        except OverflowError as exc:
            raise Revert(f"{self.NAME}.{fn.name}: arithmetic overflow ({exc})") from None
        return encode_result(fn, result)
