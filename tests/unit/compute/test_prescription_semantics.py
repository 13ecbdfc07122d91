from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ogpu_node.compute.prescription import check_semantics, validate
from ogpu_node.types.prescription import InvalidPrescription, Prescription

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MLP = (EXAMPLES / "mlp-exact.json").read_text()
CHAR = (EXAMPLES / "char-transformer-allclose.json").read_text()
BLOB = "0x" + "cd" * 32
STREAM = {
    "kind": "stream",
    "M": {"family": "char-transformer", "hparams": {"n_layer": 1}, "initial_weights": BLOB},
    "I": {
        "hardware": {"min_memory_mib": 0, "devices": ["cuda"]}, "max_payment": "1000000",
        "council_size": 3, "response_method": "optimistic", "max_response_ms": 500,
        "price_per_unit": "10", "settle_window_s": 600,
    },
    "f": {"kind": "per-unit", "council_share_bps": 0},
    "e": {"kind": "possible", "top_k": 20},
}


def with_(doc, path, value):
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


def semantic_error(doc) -> InvalidPrescription:
    p = Prescription.from_json(doc)  # structurally fine
    with pytest.raises(InvalidPrescription) as info:
        check_semantics(p)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("text", [MLP, CHAR])
def test_examples_validate(text):
    assert validate(text) == Prescription.from_json(text)


def test_stream_validates():
    validate(STREAM)
    validate(with_(STREAM, "e", {"kind": "possible", "top_p": 0.95, "margin": 0.01}))
    validate(with_(STREAM, "e", {"kind": "tokens"}))


def test_building_allocates_nothing_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    huge = with_(Prescription.from_json(MLP).to_json(), "M.hparams", {"in_dim": 100_000, "out_dim": 100_000,
                                                                        "hidden": [100_000]})
    validate(huge)  # 2·10^10 parameters would not fit in memory
    assert torch.equal(torch.get_rng_state(), state)


BASE = Prescription.from_json(MLP).to_json()


@pytest.mark.parametrize(
    ("doc", "where", "words"),
    [
        (with_(BASE, "M.family", "resnet"), "prescription.M.family", "unknown model family 'resnet'"),
        (with_(BASE, "M.hparams", {"in_dim": 0, "out_dim": 2}), "prescription.M.hparams", "mlp.in_dim"),
        (with_(BASE, "M.hparams", {"in_dim": 4}), "prescription.M.hparams", "mlp.out_dim: required"),
        (with_(BASE, "M.hparams", {"in_dim": 4, "out_dim": 2, "depth": 3}), "prescription.M.hparams",
         "mlp.depth: unknown hyperparameter"),
        (with_(BASE, "I.numeric_profile", "gpu-fast"), "prescription.I.numeric_profile",
         "unknown numeric profile 'gpu-fast'"),
        (with_(BASE, "D.format", "text"), "prescription.D.format", "char-transformer"),
        (with_(BASE, "I.optimizer", {"name": "adam", "lr": 0.1, "schedule": "linear"}),
         "prescription.I.optimizer.schedule", "not one of"),
        (with_(BASE, "I.optimizer", {"name": "adam", "lr": 0.1, "schedule": "cosine", "total_steps": 0}),
         "prescription.I.optimizer.total_steps", "warmup_steps"),
        (with_(STREAM, "e", {"kind": "possible"}), "prescription.e", "top_k or top_p"),
        (with_(STREAM, "e", {"kind": "possible", "margin": 0.1}), "prescription.e", "top_k or top_p"),
        (with_(with_(STREAM, "M", {"family": "mlp", "hparams": {"in_dim": 2, "out_dim": 2}}), "e",
               {"kind": "tokens"}), "prescription.e.kind", "char-transformer"),
    ],
)
def test_semantic_errors_name_the_field(doc, where, words):
    err = semantic_error(doc)
    assert err.field_path == where, str(err)
    assert words in err.message, str(err)


def test_exact_without_profile_on_a_built_object():
    p = Prescription.from_json(MLP)
    with pytest.raises(InvalidPrescription, match=r"^prescription.I.numeric_profile: required"):
        check_semantics(replace(p, I=replace(p.I, numeric_profile=None)))
