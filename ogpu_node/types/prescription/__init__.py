"""The prescription T = {D, M, I, f(I'), e(r, r'), H} (DESIGN.md §6): types, JSON codec, structural checks.

A prescription is a JSON document stored as a blob; the chain records `prescription_hash(p)` (the blob
hash of its canonical JSON: keys sorted, no spaces, UTF-8, so providers fetch it by that hash) and the
terms it enforces (`terms_record`/`to_terms` for `Task.submitTask`, `to_stream_terms` for
`Task.submitStream`). This package is pure: it checks shapes, types and ranges and names the offending
field (`InvalidPrescription`, one line: `prescription.I.council_size: must be at least 1`). Checks that
need the computation layer (the model builds, the numeric profile is known, `possible` truncates) are
in `ogpu_node.compute.prescription`; checks against chain state (qualifying providers, escrow) are
`check_against_chain`. The format is documented in docs/tasks.md, "Prescription format".

- `schema`: the dataclasses, `InvalidPrescription`, the canonical JSON and its hash;
- `parse`: JSON in (bounded in size and nesting), a `Prescription` out;
- `terms`: the chain's terms, the trainer's seed, checkpoint segments.

The limits it checks are the chain's own, from `ogpu_node.types.protocol`.
"""

from __future__ import annotations

from ogpu_node.types.prescription.parse import MAX_NESTING, MAX_PRESCRIPTION_BYTES, parse
from ogpu_node.types.prescription.schema import (
    BATCH_I,
    COMMON_I,
    DATASET_FORMATS,
    KINDS,
    OPTIMIZER_FIELDS,
    OPTIMIZERS,
    PAYMENT_KINDS,
    STREAM_I,
    TOP_KEYS,
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
from ogpu_node.types.protocol import (
    BATCH_EQUIVALENCES,
    BPS,
    DEVICE_KINDS,
    EQUIVALENCE_KINDS,
    MAX_CHECKPOINTS,
    MAX_COUNCIL,
    MAX_UINT256,
    MAX_WINDOW,
    RESPONSE_METHODS,
)

__all__ = [
    "BATCH_EQUIVALENCES", "BATCH_I", "BPS", "COMMON_I", "DATASET_FORMATS", "DEVICE_KINDS", "EQUIVALENCE_KINDS",
    "KINDS", "MAX_CHECKPOINTS", "MAX_COUNCIL", "MAX_NESTING", "MAX_PRESCRIPTION_BYTES", "MAX_UINT256",
    "MAX_WINDOW", "OPTIMIZERS", "OPTIMIZER_FIELDS", "PAYMENT_KINDS", "RESPONSE_METHODS", "STREAM_I", "TOP_KEYS",
    "Dataset", "Equivalence", "Halting", "Hardware", "Instructions", "InvalidPrescription", "Model", "Payment",
    "Prescription", "canonical_json", "check_against_chain", "drawn_step", "parse", "prescription_hash",
    "segment_bounds", "terms_record", "to_stream_terms", "to_terms", "training_seed",
]
