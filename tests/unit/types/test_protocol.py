"""Protocol constants live in one module, ogpu_node/types/protocol.py: no copy anywhere else.

A copy drifts (a state renumbered in the contract but not in the client shows a wrong status), so this
test reads every Python file of the package, the tests and the benchmarks and fails on an assignment
to a protocol constant's name (`STATE_RUNNING = 2`, `KIND_BATCH = 0`, `BPS = 10_000`,
`STATE_NAMES = {...}`) outside that module.
"""

from __future__ import annotations

import ast
from enum import Enum
from pathlib import Path

from ogpu_node.types import protocol

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("ogpu_node", "tests", "benchmarks", "examples")
PREFIXES = {
    protocol.TaskState: ("STATE",),
    protocol.Phase: ("PHASE",),
    protocol.DeadlineKind: ("DEADLINE",),
    protocol.CancelReason: ("CANCEL",),
    protocol.Outcome: ("OUTCOME",),
    protocol.Penalty: ("PENALTY",),
    protocol.Offence: ("OFFENCE",),
    protocol.Role: ("ROLE",),
    protocol.TaskKind: ("KIND",),
    protocol.Equivalence: ("EQUIVALENCE",),
    protocol.DeviceKind: ("DEVICE", "DEVICE_KIND"),
    protocol.ResponseMethod: ("METHOD", "RESPONSE", "RESPONSE_METHOD"),
}
# Tables of names that used to be copied beside the numbers.
TABLES = {"STATE_NAMES", "PHASE_NAMES", "CANCEL_REASONS", "OUTCOMES", "FAULTS"}


def forbidden_names() -> set[str]:
    names = {name for name, value in vars(protocol).items()
             if name.isupper() and not name.startswith("_") and not isinstance(value, type)}
    for enum, prefixes in PREFIXES.items():
        assert issubclass(enum, Enum)
        names |= {f"{prefix}_{member.name}" for prefix in prefixes for member in enum}
    return names | TABLES


def assigned_names(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Name):
                found.append((target.id, node.lineno))
            elif isinstance(target, ast.Attribute):
                found.append((target.attr, node.lineno))
    return found


def test_no_protocol_constant_is_assigned_outside_its_module():
    forbidden = forbidden_names()
    assert {"STATE_RUNNING", "KIND_BATCH", "PHASE_REVEAL", "ROLE_PROVIDER", "BPS", "MAX_COUNCIL"} <= forbidden
    home = ROOT / "ogpu_node" / "types" / "protocol.py"
    copies = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == home or ".venv" in path.parts:
                continue
            for name, line in assigned_names(ast.parse(path.read_text(), str(path))):
                if name.lstrip("_") in forbidden:
                    copies.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not copies, "protocol constants copied outside ogpu_node/types/protocol.py:\n" + "\n".join(copies)


def test_the_check_catches_a_copy():
    tree = ast.parse("STATE_RUNNING = 2\n_KIND_BATCH, X = 0, 1\nclass C:\n    ROLE_PROVIDER: int = 2\n")
    names = {name.lstrip("_") for name, _ in assigned_names(tree)}
    assert {"STATE_RUNNING", "KIND_BATCH", "ROLE_PROVIDER"} <= names & forbidden_names()
