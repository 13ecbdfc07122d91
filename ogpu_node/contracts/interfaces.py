"""Generates `abis/I<Name>.sol` from `abis/<Name>.json`, so Solidity users get the same ABI.

Run `python -m ogpu_node.contracts.interfaces` after editing an ABI; a test fails when they drift.
"""

from __future__ import annotations

import sys
from typing import Any

from ogpu_node.contracts.abi import ABI_DIR, load_abi

NATIVE = ("Stake", "Task", "Bid", "Slashing")
_HEADER = "// SPDX-License-Identifier: MIT\n// Generated from ogpu_node/contracts/abis/{name}.json by ogpu_node.contracts.interfaces: do not edit.\n"
_LOCATION = {"string", "bytes"}


def _struct_name(param: dict[str, Any]) -> str:
    return param["internalType"].split(".")[-1]


def _param(param: dict[str, Any], with_location: bool) -> str:
    kind = param["type"]
    dynamic = kind in _LOCATION or kind.endswith("]") or kind == "tuple"
    if kind == "tuple":
        kind = _struct_name(param)
    location = " memory" if with_location and dynamic else ""
    name = f" {param['name']}" if param.get("name") else ""
    return f"{kind}{location}{name}"


def solidity_interface(name: str) -> str:
    abi = load_abi(name)
    lines = [_HEADER.format(name=name), "pragma solidity ^0.8.20;", "", f"interface I{name} {{"]
    structs: dict[str, list[dict[str, Any]]] = {}
    for entry in abi.raw:
        for param in [*entry.get("inputs", []), *entry.get("outputs", [])]:
            if param["type"] == "tuple":
                structs[_struct_name(param)] = param["components"]
    for struct, fields in structs.items():
        lines.append(f"    struct {struct} {{")
        lines += [f"        {f['type']} {f['name']};" for f in fields]
        lines += ["    }", ""]
    for entry in abi.raw:
        if entry["type"] != "event":
            continue
        params = ", ".join(
            f"{p['type']}{' indexed' if p['indexed'] else ''} {p['name']}" for p in entry["inputs"]
        )
        lines.append(f"    event {entry['name']}({params});")
    lines.append("")
    for entry in abi.raw:
        if entry["type"] != "function":
            continue
        inputs = ", ".join(_param(p, True) for p in entry["inputs"])
        mutability = {"payable": " payable", "view": " view", "pure": " pure"}.get(entry["stateMutability"], "")
        outputs = ", ".join(_param(p, True) for p in entry["outputs"])
        returns = f" returns ({outputs})" if outputs else ""
        lines.append(f"    function {entry['name']}({inputs}) external{mutability}{returns};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    for name in NATIVE:
        (ABI_DIR / f"I{name}.sol").write_text(solidity_interface(name))
        print(f"wrote ogpu_node/contracts/abis/I{name}.sol")
    return 0


if __name__ == "__main__":
    sys.exit(main())
