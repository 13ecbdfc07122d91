"""The example prescriptions train on the datasets examples/make_data.py writes, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ogpu_node.compute import spec_from_prescription, train_segment
from ogpu_node.compute.prescription import validate
from ogpu_node.types.merkle import merkle_root

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("name, kind", [("mlp-exact.json", "mlp"), ("char-transformer-cpu.json", "text")])
def test_example_trains_on_its_generated_data(tmp_path, name, kind):
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), kind, str(data)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    doc = json.loads((EXAMPLES / name).read_text())
    doc["D"]["blob"] = "0x" + merkle_root(data.read_bytes()).hex()
    p = validate(doc)
    spec = spec_from_prescription(p, data.read_bytes(), seed=1)
    losses = train_segment(spec, None, 40).losses
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10])  # it learns


def test_make_data_explains_its_usage():
    result = subprocess.run([sys.executable, str(EXAMPLES / "make_data.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "make_data.py mlp" in result.stderr
