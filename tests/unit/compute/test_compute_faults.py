"""The fault matrix: every dishonest executor's checkpoint loads, claims the honest task, step and
data cursor, and is caught by the equivalence functions."""

from __future__ import annotations

import pytest
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import Fault, InvalidTrainSpec, load, train_faulty, train_segment
from ogpu_node.compute.checkpoint import read_metadata
from ogpu_node.compute.equivalence import allclose, exact
from ogpu_node.types.protocol import FAULT_KINDS

TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}  # examples/char-transformer-allclose.json


@pytest.fixture(scope="module", params=["fresh", "resumed"])
def honest(request):
    spec = mlp_spec()
    start = None if request.param == "fresh" else train_segment(spec, None, 4).checkpoint
    return spec, start, train_segment(spec, start, 6)


def _claims_the_honest_state(faulty: bytes, honest: bytes) -> None:
    load(faulty)  # well-formed
    got, want = read_metadata(faulty), read_metadata(honest)
    for key in ("family", "hparams", "optimizer", "seed", "step", "data_cursor", "scheduler"):
        assert got[key] == want[key], key


@pytest.mark.parametrize("fault", [Fault("perturb"), Fault("skip-steps"), Fault("reorder-data"),
                                   Fault("copy-weights"), Fault("copy-weights", other_seed=99)])
def test_each_fault_is_well_formed_and_fails_exact(honest, fault):
    spec, start, result = honest
    faulty = train_faulty(spec, start, 6, fault)
    _claims_the_honest_state(faulty.checkpoint, result.checkpoint)
    assert not exact(faulty.checkpoint, result.checkpoint)


@pytest.mark.parametrize("kind", ["skip-steps", "reorder-data", "copy-weights"])
def test_training_faults_fail_allclose(honest, kind):
    spec, start, result = honest
    assert not allclose(train_faulty(spec, start, 6, Fault(kind)).checkpoint, result.checkpoint, **TOLERANCE)


def test_perturb_magnitude_decides_whether_allclose_catches_it(honest):
    spec, start, result = honest
    tiny = train_faulty(spec, start, 6, Fault("perturb", 1e-6)).checkpoint
    large = train_faulty(spec, start, 6, Fault("perturb", 1e-2)).checkpoint
    assert allclose(tiny, result.checkpoint, **TOLERANCE)  # only exact catches 1e-6
    assert not allclose(large, result.checkpoint, **TOLERANCE)


def test_faults_work_for_the_transformer_with_dropout():
    spec = text_spec(dropout=0.1)
    honest = train_segment(spec, None, 4).checkpoint
    for kind in FAULT_KINDS:
        faulty = train_faulty(spec, None, 4, Fault(kind)).checkpoint
        _claims_the_honest_state(faulty, honest)
        assert not exact(faulty, honest), kind


def test_faulty_training_is_reproducible():
    spec = mlp_spec()
    for kind in FAULT_KINDS:
        assert train_faulty(spec, None, 3, Fault(kind)).checkpoint == train_faulty(spec, None, 3, Fault(kind)).checkpoint


def test_skip_steps_needs_a_step_to_skip():
    with pytest.raises(InvalidTrainSpec, match="skip-steps"):
        train_faulty(mlp_spec(), None, 0, Fault("skip-steps"))


def test_fault_parse_and_json():
    assert Fault.parse("perturb") == Fault("perturb")
    assert Fault.parse("perturb:1e-3") == Fault("perturb", magnitude=1e-3)
    assert Fault.parse("copy-weights:42") == Fault("copy-weights", other_seed=42)
    assert Fault.from_json(Fault("copy-weights", other_seed=3).to_json()) == Fault("copy-weights", other_seed=3)
    for bad, words in [("lie", "not one of"), ("perturb:big", "bad argument"), ("skip-steps:2", "no argument")]:
        with pytest.raises(ValueError, match=words):
            Fault.parse(bad)
