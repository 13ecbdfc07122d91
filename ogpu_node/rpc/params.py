"""Parsing of JSON-RPC parameters (each failure is -32602 naming the value) and hex encoding of results.

A method parses all its parameters before it looks anything up, so a malformed one is -32602 whatever
the others name (not `header not found` because the block is unknown)."""

from __future__ import annotations

import re
from typing import Any

from ogpu_node.execution.calls import AccountOverride, CallRequest
from ogpu_node.rpc.jsonrpc import InvalidParams

BLOCK_TAGS = ("latest", "earliest", "pending", "safe", "finalized")
# Plain hex digits only: Python's int() and bytes.fromhex() would also take signs, spaces and "_".
_HEX_QUANTITY = re.compile(r"0[xX][0-9a-fA-F]+")
_HEX_DATA = re.compile(r"0[xX](?:[0-9a-fA-F]{2})*")


def to_json(value: Any) -> Any:
    """ints -> quantities, bytes -> data, recursively (bool before int: bool is an int subclass)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__}")


def _short(value: Any) -> str:
    """repr of a client's value, cut so that an error message stays one short line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def quantity(value: Any, name: str = "quantity") -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 256:
        return value  # lenient, as geth is for plain JSON numbers in some fields
    if not isinstance(value, str) or not value.startswith(("0x", "0X")) or len(value) < 3:
        raise InvalidParams(f"invalid {name}: expected 0x-prefixed hex quantity, got {_short(value)}")
    if not _HEX_QUANTITY.fullmatch(value):
        raise InvalidParams(f"invalid {name}: {_short(value)} is not hex")
    if len(value.lstrip("0xX")) > 64 or int(value[2:], 16) >= 1 << 256:
        raise InvalidParams(f"invalid {name}: {_short(value)} exceeds 256 bits")
    return int(value[2:], 16)


def data(value: Any, name: str = "data", length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise InvalidParams(f"invalid {name}: expected 0x-prefixed hex data, got {_short(value)}")
    if len(value) % 2:
        raise InvalidParams(f"invalid {name}: odd length hex string")
    if not _HEX_DATA.fullmatch(value):
        raise InvalidParams(f"invalid {name}: {_short(value)} is not hex")
    result = bytes.fromhex(value[2:])
    if length is not None and len(result) != length:
        raise InvalidParams(f"invalid {name}: expected {length} bytes, got {len(result)}")
    return result


def address(value: Any, name: str = "address") -> bytes:
    return data(value, name, 20)


def hash32(value: Any, name: str = "hash") -> bytes:
    return data(value, name, 32)


def optional(parser: Any, value: Any, name: str) -> Any:
    return None if value is None else parser(value, name)


def block_id(value: Any) -> tuple[str, Any]:
    """('tag', name) | ('number', n) | ('hash', h, require_canonical): a block tag, number or EIP-1898 object."""
    if value is None:
        return ("tag", "latest")
    if isinstance(value, str) and value in BLOCK_TAGS:
        return ("tag", value)
    if isinstance(value, dict):
        if "blockHash" in value:
            return ("hash", hash32(value["blockHash"], "blockHash"), bool(value.get("requireCanonical", False)))
        if "blockNumber" in value:
            return block_id(value["blockNumber"])
        raise InvalidParams("invalid block: object needs blockHash or blockNumber")
    if isinstance(value, str) and len(value) == 66 and value[:2] in ("0x", "0X"):
        return ("hash", hash32(value, "blockHash"), False)  # geth accepts a bare block hash too
    if isinstance(value, str) and value.startswith("0x"):
        return ("number", quantity(value, "block number"))
    raise InvalidParams(f"invalid block: {_short(value)}")


def obj(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParams(f"invalid {name}: expected an object")
    return value


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParams(f"invalid {name}: expected true or false")
    return value


MAX_REWARD_PERCENTILES = 100  # geth's maxQueryLimit: each costs a pass over every block's receipts


def reward_percentiles(value: Any) -> list[float]:
    """eth_feeHistory's percentiles: an ascending list of at most 100 numbers within [0, 100]."""
    if value is None:
        return []
    if not isinstance(value, list) or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 100 for x in value
    ) or value != sorted(value):
        raise InvalidParams("invalid reward percentiles: expected an ascending list within [0, 100]")
    if len(value) > MAX_REWARD_PERCENTILES:
        raise InvalidParams(f"invalid reward percentile: over the query limit {MAX_REWARD_PERCENTILES}")
    return value


def access_list(value: Any, name: str = "accessList") -> tuple[tuple[bytes, tuple[int, ...]], ...]:
    """An EIP-2930 access list: [{"address": 20 bytes, "storageKeys": [32-byte hashes]}] -> ((address, keys), ...)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidParams(f"invalid {name}: expected an array")
    entries = []
    for entry in value:
        entry = obj(entry, f"{name} entry")
        keys = entry.get("storageKeys") or []
        if not isinstance(keys, list):
            raise InvalidParams(f"invalid {name}: storageKeys must be an array")
        slots = tuple(int.from_bytes(hash32(key, "storage key"), "big") for key in keys)
        entries.append((address(entry.get("address"), f"{name} address"), slots))
    return tuple(entries)


def call_request(value: Any) -> CallRequest:
    """The transaction object of eth_call and eth_estimateGas."""
    tx = obj(value, "transaction")
    input_hex = tx.get("input", tx.get("data"))
    return CallRequest(
        sender=address(tx["from"], "from") if tx.get("from") else b"\x00" * 20,
        to=address(tx["to"], "to") if tx.get("to") else None,
        gas=optional(quantity, tx.get("gas"), "gas"),
        gas_price=optional(quantity, tx.get("gasPrice"), "gasPrice"),
        max_fee_per_gas=optional(quantity, tx.get("maxFeePerGas"), "maxFeePerGas"),
        max_priority_fee_per_gas=optional(quantity, tx.get("maxPriorityFeePerGas"), "maxPriorityFeePerGas"),
        value=optional(quantity, tx.get("value"), "value") or 0,
        data=data(input_hex, "input") if input_hex else b"",
        access_list=access_list(tx.get("accessList")),
    )


def state_overrides(value: Any) -> dict[bytes, AccountOverride]:
    """geth's state override set: {address: {balance, nonce, code, state | stateDiff}}."""
    if value is None:
        return {}
    out = {}
    for addr, override in obj(value, "state overrides").items():
        override = obj(override, f"override of {addr}")
        if "state" in override and "stateDiff" in override:
            raise InvalidParams(f"account {addr} has both 'state' and 'stateDiff'")
        out[address(addr)] = AccountOverride(
            balance=optional(quantity, override.get("balance"), "balance"),
            nonce=optional(quantity, override.get("nonce"), "nonce"),
            code=optional(data, override.get("code"), "code"),
            state=_slots(override["state"]) if "state" in override else None,
            state_diff=_slots(override.get("stateDiff", {})),
        )
    return out


def _slots(mapping: Any) -> dict[int, int]:
    return {quantity(k, "slot"): quantity(v, "slot value") for k, v in obj(mapping, "state").items()}
