"""Bounds the prescription parser puts on values someone else chose (issue 10): numbers that later
code multiplies or converts are capped, and an error message quotes at most a short piece of the
offending value, so a 1 MiB string or a 5,000-digit number is one short line."""

from __future__ import annotations

import json

import pytest

from ogpu_node.types.prescription import InvalidPrescription, Prescription
from tests.malformed_documents import GOOD, edit


def error(doc) -> InvalidPrescription:
    with pytest.raises(InvalidPrescription) as info:
        Prescription.from_json(json.dumps(doc) if not isinstance(doc, str) else doc)
    return info.value


@pytest.mark.parametrize(("path", "most"), [("I.steps", 2**64 - 1), ("I.batch_size", 2**32 - 1)])
def test_steps_and_batch_size_are_capped(path, most):
    assert Prescription.from_json(edit(GOOD, path, most)) is not None
    err = error(edit(GOOD, path, most + 1))
    assert (err.field_path, err.message) == (f"prescription.{path}", f"must be at most {most}")


def test_wei_with_thousands_of_digits_is_refused_before_int_converts_it():
    err = error(edit(GOOD, "I.max_payment", "9" * 5000))  # int() itself raises past 4300 digits
    assert err.field_path == "prescription.I.max_payment" and err.message.startswith("must be at most ")


@pytest.mark.parametrize("doc", [
    edit(GOOD, "I.steps", "x" * 100_000),
    edit(GOOD, "D.format", "y" * 100_000),
    edit(GOOD, "z" * 100_000, 1),
    edit(GOOD, "M.family", "w" * 100_000),
])
def test_messages_quote_only_a_short_piece_of_a_long_value(doc):
    from ogpu_node.compute.prescription import validate

    with pytest.raises(InvalidPrescription) as info:
        validate(doc)
    assert len(str(info.value)) < 200, str(info.value)[:300]
