"""The prescription T = {D, M, I, f(I'), e(r, r'), H} (DESIGN.md §6): types, JSON codec, structural checks.

A prescription is a JSON document stored as a blob; the chain records `prescription_hash(p)` (the blob
hash of its canonical JSON: keys sorted, no spaces, UTF-8, so providers fetch it by that hash) and the
terms it enforces (`terms_record`/`to_terms` for `Task.submitTask`, `to_stream_terms` for
`Task.submitStream`). This package is pure: it checks shapes, types and ranges and names the offending
field (`InvalidPrescription`, one line: `prescription.I.council_size: must be at least 1`). Checks that
need the computation layer (the model builds, the numeric profile is known, `possible` truncates) are
in `ogpu_node.compute.prescription`; checks against chain state (qualifying providers, escrow) are
`check_against_chain`. The format is documented in docs/tasks.md, "Prescription format".

- `schema`: the dataclasses, `InvalidPrescription`, the format's key tables, the canonical JSON and its hash;
- `parse`: JSON in (bounded in size and nesting), a `Prescription` out;
- `terms`: the chain's terms, the trainer's seed, checkpoint segments.

The limits it checks are the chain's own, from `ogpu_node.types.protocol`; the format's key tables
(`TOP_KEYS`, `BATCH_I` …) are in `schema`.
"""

from __future__ import annotations

from ogpu_node.types.prescription.parse import MAX_NESTING, MAX_PRESCRIPTION_BYTES, parse
from ogpu_node.types.prescription.schema import (
    DEFAULT_TEMPERATURE,
    Dataset,
    Equivalence,
    Halting,
    Hardware,
    Instructions,
    InvalidPrescription,
    Model,
    Payment,
    Prescription,
    canonical_json,
    prescription_hash,
)
from ogpu_node.types.prescription.terms import (
    check_against_chain,
    drawn_step,
    segment_bounds,
    terms_record,
    to_stream_terms,
    to_terms,
    training_seed,
)
from ogpu_node.types.protocol import BPS, DEVICE_KINDS, MAX_CHECKPOINTS, MAX_COUNCIL, MAX_WINDOW

__all__ = [
    "BPS", "DEFAULT_TEMPERATURE", "DEVICE_KINDS", "MAX_CHECKPOINTS", "MAX_COUNCIL", "MAX_NESTING", "MAX_PRESCRIPTION_BYTES", "MAX_WINDOW",
    "Dataset", "Equivalence", "Halting", "Hardware", "Instructions", "InvalidPrescription", "Model", "Payment",
    "Prescription", "canonical_json", "check_against_chain", "drawn_step", "parse", "prescription_hash",
    "segment_bounds", "terms_record", "to_stream_terms", "to_terms", "training_seed",
]
