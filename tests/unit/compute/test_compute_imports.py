"""The compute package's import graph: which modules load torch, and the leaf `profile`.

A training worker sets its numeric profile before torch loads (profile.py), so what the worker
imports first — the package, `profile`, `errors`, `serve` — must not load torch; the apps import
`tensorfile` and `worker` without paying for torch either. Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ogpu_node.compute as compute

TORCH_FREE = ("ogpu_node.compute", "ogpu_node.compute.profile", "ogpu_node.compute.errors",
              "ogpu_node.compute.tensorfile", "ogpu_node.compute.worker", "ogpu_node.compute.serve")


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    _run(f"import sys, {module}; assert 'torch' not in sys.modules, sorted(sys.modules)")


def test_profile_is_a_leaf():
    _run("import sys, ogpu_node.compute.profile\n"
         "loaded = {m for m in sys.modules if m.startswith('ogpu_node.compute.')}\n"
         "assert loaded == {'ogpu_node.compute.profile', 'ogpu_node.compute.errors'}, loaded")


def test_a_lazy_name_loads_its_module_on_first_use():
    _run("import sys\n"
         "from ogpu_node.compute import PROFILES, Worker, profile_env\n"
         "assert 'torch' not in sys.modules\n"
         "from ogpu_node.compute import estimate\n"
         "assert 'torch' in sys.modules and callable(estimate)")


def test_every_exported_name_resolves_and_none_is_a_submodule_name():
    assert sorted(compute.__all__) == sorted(compute._HOME)
    for name in compute.__all__:
        assert getattr(compute, name) is not None
    submodules = {m.name for m in pkgutil.iter_modules(compute.__path__)}
    assert set(compute.__all__) & submodules == {"equivalence"}  # the one exported module
    with pytest.raises(AttributeError):
        compute.no_such_name  # noqa: B018
    assert set(compute.__all__) <= set(dir(compute))
