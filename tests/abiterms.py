"""A contract struct argument in ABI component order from the components' names, for tests.

A component not named gets its type's zero (bytes32 → 32 zero bytes, an integer → 0), so a field the
contract gains later needs no change to the tests that do not care about it."""

from __future__ import annotations

from typing import Any

from ogpu_node.contracts.abi import load_abi


def abi_zero(abi_type: str) -> Any:
    if abi_type.startswith("bytes"):
        return bytes(int(abi_type[5:] or 0))
    if abi_type == "address":
        return "0x" + "00" * 20
    if abi_type == "bool":
        return False
    if abi_type == "string":
        return ""
    return 0


def struct_arg(contract: str, function: str, arg: str, **values: Any) -> tuple:
    """``function``'s struct argument ``arg`` of ``contract``, its named components from ``values``."""
    [entry] = [e for e in load_abi(contract).raw if e.get("name") == function]
    [param] = [p for p in entry["inputs"] if p["name"] == arg]
    names = {c["name"] for c in param["components"]}
    assert set(values) <= names, set(values) - names
    return tuple(values[c["name"]] if c["name"] in values else abi_zero(c["type"]) for c in param["components"])
