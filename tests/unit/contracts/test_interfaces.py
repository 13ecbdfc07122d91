"""abis/I<Name>.sol is generated from abis/<Name>.json and must not drift from it."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.contracts.interfaces import NATIVE, solidity_interface

ROOT = Path(__file__).resolve().parents[3]
SOLCJS = ROOT / ".tools" / "node_modules" / ".bin" / "solcjs"


@pytest.mark.parametrize("name", NATIVE)
def test_generated_interface_matches_the_committed_file(name):
    committed = (ABI_DIR / f"I{name}.sol").read_text()
    assert committed == solidity_interface(name), (
        f"ogpu_node/contracts/abis/I{name}.sol is stale: run `python -m ogpu_node.contracts.interfaces`"
    )


def _canonical(abi):
    def entry(e):
        keep = {k: e[k] for k in ("type", "name", "stateMutability") if k in e}
        keep["inputs"] = [(p["type"], p.get("indexed", False)) for p in e.get("inputs", [])]
        keep["outputs"] = [p["type"] for p in e.get("outputs", [])]
        return json.dumps(keep, sort_keys=True)

    return sorted(entry(e) for e in abi)


@pytest.mark.parametrize("name", NATIVE)
def test_solidity_compiles_the_interface_to_the_same_abi(name, tmp_path):
    solcjs = shutil.which("solcjs") or (str(SOLCJS) if SOLCJS.exists() else None)
    assert solcjs, "solcjs is missing: `make test` installs it into .tools/"
    source = tmp_path / f"I{name}.sol"
    source.write_text((ABI_DIR / f"I{name}.sol").read_text())
    subprocess.run(
        [solcjs, "--abi", "--base-path", str(tmp_path), "-o", str(tmp_path / "out"), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    [abi_file] = (tmp_path / "out").glob(f"*I{name}.abi")
    assert _canonical(json.loads(abi_file.read_text())) == _canonical(json.loads((ABI_DIR / f"{name}.json").read_text()))
