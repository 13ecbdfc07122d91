from __future__ import annotations

from pathlib import Path

import pytest
import torch
from unit.compute.compute_tasks import edited

from ogpu_node.compute import Estimate, InvalidTrainSpec, build_model, estimate
from ogpu_node.types.prescription import Prescription

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MLP = Prescription.from_json((EXAMPLES / "mlp-exact.json").read_text())
CHAR = Prescription.from_json((EXAMPLES / "char-transformer-allclose.json").read_text())


def test_mlp_params_and_flops():
    est = estimate(MLP, n_samples=1000)
    params = (8 * 32 + 32) + (32 * 32 + 32) + (32 * 3 + 3)
    assert est == Estimate(params, 6.0 * params * 32, 6.0 * params * 32 * 300, est.memory_mib)
    # weights, grads and two Adam slots, plus the dataset, are a lower bound
    assert est.memory_mib * 2**20 > 4 * params * 4 + 1000 * (8 * 4 + 8)


def test_char_transformer_counts_tokens_per_step():
    est = estimate(CHAR, n_samples=100_000)
    params = sum(t.numel() for t in build_model("char-transformer", CHAR.M.hparams).parameters())
    assert est.params == params
    assert est.flops_per_step == 6.0 * params * 64 * 64  # batch 64 × block_size 64 tokens
    assert est.total_flops == est.flops_per_step * 5000


def test_memory_grows_with_data_batch_and_optimizer_state():
    base = estimate(MLP, 1000).memory_mib
    assert estimate(MLP, 100_000).memory_mib > base
    assert estimate(edited(MLP, "I.batch_size", 512), 1000).memory_mib > base
    assert estimate(edited(MLP, "I.optimizer", {"name": "sgd", "lr": 0.1}), 1000).memory_mib < base


def test_a_huge_model_is_estimated_without_allocating_it():
    state = torch.get_rng_state()
    huge = edited(MLP, "M.hparams", {"in_dim": 100_000, "out_dim": 100_000, "hidden": [100_000]})
    est = estimate(huge, 10)
    assert est.params > 2 * 10**10 and est.memory_mib > 4 * 2 * 10**10 * 4 / 2**20
    assert torch.equal(torch.get_rng_state(), state)


def test_cnn_estimate():
    cnn = edited(edited(MLP, "M.family", "cnn"), "M.hparams", {"n_classes": 2})
    est = estimate(cnn, 10)
    assert est.params == sum(t.numel() for t in build_model("cnn", {"n_classes": 2}).parameters())
    assert est.memory_mib > 0


def test_only_a_buildable_batch_task_is_estimated():
    with pytest.raises(InvalidTrainSpec, match="prescription.M.hparams: mlp.out_dim"):
        estimate(edited(MLP, "M.hparams", {"in_dim": 8}), 10)
    stream = Prescription.from_json({
        "kind": "stream", "M": {"family": "char-transformer"},
        "I": {"hardware": {"min_memory_mib": 0, "devices": ["cpu"]}, "max_payment": "10", "council_size": 1,
              "response_method": "optimistic", "max_response_ms": 500, "price_per_unit": "1",
              "settle_window_s": 600},
        "f": {"kind": "per-unit", "council_share_bps": 0}, "e": {"kind": "tokens"},
    })
    with pytest.raises(InvalidTrainSpec, match="batch"):
        estimate(stream, 10)
