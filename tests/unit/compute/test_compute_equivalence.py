"""The batch equivalences; the stream ones (`tokens`, `possible`) are tested in test_generate.py."""

from __future__ import annotations

import pytest
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import train_segment
from ogpu_node.compute.checkpoint import read_metadata
from ogpu_node.compute.equivalence import allclose, exact


@pytest.fixture(scope="module")
def ckpt() -> bytes:
    return train_segment(mlp_spec(), None, 5).checkpoint


def _perturb(ckpt: bytes, delta: float) -> bytes:
    tensors = st_load(ckpt)
    tensors["model/net.0.weight"][0, 0] += delta
    return st_save(tensors, metadata={"ogpu": __import__("json").dumps(read_metadata(ckpt))})


def test_exact_accepts_identical_and_rejects_a_1e6_perturbation(ckpt):
    assert exact(ckpt, bytes(ckpt))
    assert not exact(ckpt, _perturb(ckpt, 1e-6))


def test_allclose_accepts_within_and_rejects_beyond_tolerance(ckpt):
    assert allclose(ckpt, ckpt, rtol=0, atol=0)
    assert allclose(ckpt, _perturb(ckpt, 1e-6), rtol=1e-5, atol=1e-5)
    assert not allclose(ckpt, _perturb(ckpt, 1e-3), rtol=1e-5, atol=1e-5)


def test_allclose_rejects_different_tensor_names_or_shapes(ckpt):
    other = train_segment(text_spec(), None, 1).checkpoint
    assert not allclose(ckpt, other, rtol=1, atol=1)
