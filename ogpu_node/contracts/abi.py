"""The ABI of each native contract, read from `ogpu_node/contracts/abis/<Name>.json` (package data): the one
place it is declared."""

from __future__ import annotations

import json
from dataclasses import dataclass, is_dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from eth_abi import decode, encode
from eth_hash.auto import keccak

from ogpu_node.types.records import as_tuple

ABI_DIR = files("ogpu_node.contracts") / "abis"  # a Traversable: it works from a wheel too
_ERROR_SELECTOR = keccak(b"Error(string)")[:4]


def _type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_type(c) for c in param["components"])
        return f"({inner}){kind[5:]}"
    return kind


@dataclass(frozen=True)
class Function:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    payable: bool
    view: bool

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(self.inputs)})"

    @property
    def selector(self) -> bytes:
        return keccak(self.signature.encode())[:4]


@dataclass(frozen=True)
class Event:
    name: str
    inputs: tuple[tuple[str, str, bool], ...]  # (name, type, indexed)

    @property
    def topic(self) -> bytes:
        return keccak(f"{self.name}({','.join(t for _, t, _ in self.inputs)})".encode())


@dataclass(frozen=True)
class ContractAbi:
    name: str
    functions: dict[bytes, Function]  # by selector
    events: dict[str, Event]
    raw: tuple[dict[str, Any], ...]

    def function(self, name: str) -> Function:
        for fn in self.functions.values():
            if fn.name == name:
                return fn
        raise KeyError(name)

    def encode_event(self, name: str, values: dict[str, Any]) -> tuple[list[bytes], bytes]:
        """Topics and data of an event, values by parameter name."""
        event = self.events[name]
        topics = [event.topic]
        data_types, data_values = [], []
        for param, kind, indexed in event.inputs:
            if indexed:
                topics.append(encode([kind], [values[param]]))
            else:
                data_types.append(kind)
                data_values.append(values[param])
        return topics, encode(data_types, data_values)


@cache
def load_abi(name: str) -> ContractAbi:
    raw = json.loads((ABI_DIR / f"{name}.json").read_text())
    functions, events = {}, {}
    for entry in raw:
        if entry["type"] == "function":
            fn = Function(
                name=entry["name"],
                inputs=tuple(_type(p) for p in entry["inputs"]),
                outputs=tuple(_type(p) for p in entry["outputs"]),
                payable=entry["stateMutability"] == "payable",
                view=entry["stateMutability"] in ("view", "pure"),
            )
            functions[fn.selector] = fn
        elif entry["type"] == "event":
            events[entry["name"]] = Event(
                entry["name"], tuple((p["name"], _type(p), p["indexed"]) for p in entry["inputs"])
            )
    return ContractAbi(name, functions, events, tuple(raw))


def encode_error(reason: str) -> bytes:
    return _ERROR_SELECTOR + encode(["string"], [reason])


def _to_bytes_address(kind: str, value: Any) -> Any:
    # eth_abi decodes addresses as checksummed strings; the contracts work with 20-byte values.
    if kind == "address":
        return bytes.fromhex(value[2:])
    if kind == "address[]":
        return [bytes.fromhex(v[2:]) for v in value]
    return value


def decode_args(fn: Function, calldata: bytes) -> tuple[Any, ...]:
    values = decode(list(fn.inputs), calldata)
    return tuple(_to_bytes_address(kind, value) for kind, value in zip(fn.inputs, values, strict=True))


def encode_result(fn: Function, result: Any) -> bytes:
    """A function's return data; a view's record (types.records) is written field by field, as the
    outputs when there are several, or as the one tuple output (getTerms' struct)."""
    if not fn.outputs:
        return b""
    if is_dataclass(result) and not isinstance(result, type):
        result = as_tuple(result)
    values = result if len(fn.outputs) > 1 else (result,)
    return encode(list(fn.outputs), list(values))
