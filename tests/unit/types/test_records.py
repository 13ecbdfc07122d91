"""The view records of types/records.py are the ABI's outputs, field for field, in order."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.types.records import STRUCT_RECORDS, VIEW_RECORDS, TaskRecord, camel, decode_record


def _outputs(contract: str, function: str) -> list[dict]:
    [entry] = [e for e in json.loads((ABI_DIR / f"{contract}.json").read_text())
               if e["type"] == "function" and e["name"] == function]
    return entry["outputs"]


@pytest.mark.parametrize("view", sorted(VIEW_RECORDS))
def test_record_fields_are_the_view_outputs_in_order(view):
    names = [o["name"] for o in _outputs(*view)]
    assert [camel(f.name) for f in fields(VIEW_RECORDS[view])] == names


@pytest.mark.parametrize("view", sorted(STRUCT_RECORDS))
def test_struct_record_fields_are_the_tuple_components_in_order(view):
    [out] = _outputs(*view)
    assert [camel(f.name) for f in fields(STRUCT_RECORDS[view])] == [c["name"] for c in out["components"]]


def test_decode_record_refuses_a_result_of_another_length():
    with pytest.raises(ValueError, match="TaskRecord: expected 11 values, got 2"):
        decode_record(TaskRecord, (1, 2))
