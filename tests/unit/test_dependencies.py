"""Every distribution the package imports is declared in pyproject's [project.dependencies].

A wheel installed without the dev extras must start: an import that only a dev tool (or a dependency
of a dependency) happens to bring works in the tested .venv and fails for a user. This walks the
package's source with `ast`, maps each top-level import to its distribution with
`importlib.metadata.packages_distributions()`, and fails on one that is not declared. An import guarded
by `except ImportError` makes its module optional (the code gives up before its other imports of it):
it must be declared in an extra instead.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ogpu_node"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503's normalized project name (`eth_abi` and `Eth-ABI` are one distribution)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    assert match, requirement
    return normalize(match.group(1))


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _guards_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level module, line, optional) for each absolute import; optional = inside a `try` whose
    handlers catch ImportError."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, optional))
        if isinstance(node, ast.Try) and any(_guards_import_error(h) for h in node.handlers):
            for child in node.body:
                visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def package_imports() -> dict[str, list[tuple[str, bool]]]:
    """Third-party top-level module → [(file:line, optional)] over ogpu_node/**/*.py."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, line, optional in imports(ast.parse(path.read_text(), str(path))):
            if module in sys.stdlib_module_names or module == "ogpu_node" or module == "__future__":
                continue
            out.setdefault(module, []).append((f"{path.relative_to(ROOT)}:{line}", optional))
    return out


def test_every_imported_distribution_is_a_declared_dependency():
    declared = {requirement_name(r) for r in project()["dependencies"]}
    extras = {requirement_name(r) for name, reqs in project()["optional-dependencies"].items()
              if name != "dev" for r in reqs}
    distributions = importlib.metadata.packages_distributions()
    found = package_imports()
    assert {"eth", "eth_hash", "eth_utils", "requests", "web3", "torch"} <= found.keys()
    missing = []
    for module, sites in sorted(found.items()):
        dists = {normalize(d) for d in distributions.get(module, [module])}
        if not any(optional for _, optional in sites):
            if not dists & declared:
                missing.append(f"{module} ({', '.join(sorted(dists))}) imported at {sites[0][0]}")
        elif not dists & (declared | extras):
            missing.append(f"{module} ({', '.join(sorted(dists))}), optional, at {sites[0][0]}: not in an extra")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_pins_match_the_tested_environment():
    # The pins are what the suite runs against; a local build label (torch's +cpu) is the same release.
    wrong = []
    for requirement in project()["dependencies"]:
        if "==" not in requirement:
            wrong.append(f"{requirement}: not pinned")
            continue
        pinned = requirement.split("==", 1)[1].strip()
        installed = importlib.metadata.version(requirement_name(requirement))
        if installed.split("+", 1)[0] != pinned:
            wrong.append(f"{requirement}: .venv has {installed}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_guarded_and_nested_imports():
    tree = ast.parse(
        "import a.b\nfrom c import d\nfrom . import e\n"
        "def f():\n    import g\n"
        "try:\n    import h\nexcept ImportError:\n    import i\n"
        "try:\n    import j\nexcept ValueError:\n    pass\n"
    )
    assert [(m, optional) for m, _, optional in imports(tree)] == [
        ("a", False), ("c", False), ("g", False), ("h", True), ("i", False), ("j", False),
    ]
