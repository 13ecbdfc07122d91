"""Compile the Vyper test contracts with the pip-installed vyper (0.4.3), once per session.

    from contracts.compile import compile_contract   # tests/ is on pytest's pythonpath
    store = compile_contract("Store")   # tests/contracts/Store.vy
    w3.eth.contract(abi=store.abi, bytecode=store.bytecode)

The EVM version is pinned to the chain's fork (Prague, DESIGN.md section 2) so that a later vyper
default cannot emit opcodes the node does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import vyper
from vyper.compiler.settings import Settings

SOURCES = Path(__file__).resolve().parent
EVM_VERSION = "prague"


@dataclass(frozen=True, eq=False)
class Compiled:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes  # init code (constructor arguments are appended by the caller)
    runtime: bytes  # the code a deployment leaves at the address (no immutables in these contracts)


@cache
def compile_contract(name: str) -> Compiled:
    source = (SOURCES / f"{name}.vy").read_text()
    out = vyper.compile_code(
        source, output_formats=["abi", "bytecode", "bytecode_runtime"], settings=Settings(evm_version=EVM_VERSION)
    )
    return Compiled(name, out["abi"], _hex(out["bytecode"]), _hex(out["bytecode_runtime"]))


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))
