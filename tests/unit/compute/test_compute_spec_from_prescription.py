from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from unit.compute.compute_tasks import edited

from ogpu_node.compute import (
    InvalidTrainSpec,
    OptimizerSpec,
    TensorDataset,
    TextDataset,
    spec_from_prescription,
)
from ogpu_node.compute.trainer import encode_spec, train_segment
from ogpu_node.types.prescription import Prescription

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MLP = Prescription.from_json((EXAMPLES / "mlp-exact.json").read_text())
CHAR = Prescription.from_json((EXAMPLES / "char-transformer-allclose.json").read_text())


def _tensors(n=40, in_dim=8, classes=3) -> bytes:
    g = torch.Generator().manual_seed(0)
    return st_save({"features": torch.randn(n, in_dim, generator=g), "labels": torch.arange(n) % classes})


def test_tensor_prescription_becomes_a_train_spec():
    spec = spec_from_prescription(MLP, _tensors(), seed=123)
    assert spec.family == "mlp" and spec.hparams == {"in_dim": 8, "out_dim": 3, "hidden": [32, 32]}
    assert spec.optimizer == OptimizerSpec("adam", 0.001)
    assert spec.batch_size == 32 and spec.seed == 123
    assert isinstance(spec.dataset, TensorDataset) and len(spec.dataset) == 40
    assert len(train_segment(spec, None, 2).losses) == 2


def test_text_prescription_uses_the_models_block_size():
    spec = spec_from_prescription(CHAR, b"to be or not to be, " * 10, seed=5)
    assert isinstance(spec.dataset, TextDataset) and spec.dataset.block_size == 64
    assert spec.optimizer.schedule == "cosine" and spec.optimizer.total_steps == 5000


def test_same_inputs_give_the_same_encoded_spec():
    a = encode_spec(spec_from_prescription(MLP, _tensors(), seed=9))
    assert a == encode_spec(spec_from_prescription(MLP, _tensors(), seed=9))


@pytest.mark.parametrize(
    ("p", "data", "words"),
    [
        (MLP, b"not safetensors", "prescription.D: dataset: not a safetensors file"),
        (MLP, _tensors(classes=5), r"prescription.D: dataset: labels outside \[0, 3\)"),
        (MLP, _tensors(in_dim=4), "prescription.D"),
        (edited(MLP, "M.hparams", {"in_dim": 8}), _tensors(), "prescription.M.hparams: mlp.out_dim: required"),
        (edited(MLP, "I.optimizer", {"name": "adam", "lr": 0.1, "schedule": "step"}), _tensors(),
         "prescription.I.optimizer.schedule"),
        (edited(MLP, "D.format", "text"), b"x" * 100, "prescription.D: text data trains a char-transformer"),
        (CHAR, b"too short", "prescription.D: dataset: corpus of 9 bytes"),
    ],
)
def test_problems_are_invalid_train_spec_naming_the_field(p, data, words):
    with pytest.raises(InvalidTrainSpec, match=words):
        spec_from_prescription(p, data, seed=1)
