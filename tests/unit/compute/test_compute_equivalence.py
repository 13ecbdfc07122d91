from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import load, train_segment
from ogpu_node.compute.checkpoint import read_metadata
from ogpu_node.compute.equivalence import allclose, exact, greedy, possible, sample, tokens


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


@pytest.fixture(scope="module")
def lm():
    model, _, _ = load(train_segment(text_spec(), None, 20).checkpoint)
    return model


PROMPT = list(b"hello ")


def test_tokens_accepts_honest_and_rejects_tampered_greedy_outputs(lm):
    honest = greedy(lm, PROMPT, 8)
    assert tokens(honest, greedy(lm, PROMPT, 8))
    assert not tokens(honest, [*honest[:-1], (honest[-1] + 1) % 256])


def test_possible_accepts_honest_sampled_responses(lm):
    for seed in range(3):
        assert possible(lm, PROMPT, sample(lm, PROMPT, 10, seed, top_k=3), top_k=3)
        assert possible(lm, PROMPT, sample(lm, PROMPT, 10, seed, top_p=0.9), top_p=0.9)


def _least_likely(lm, context):
    with torch.no_grad():
        return int(torch.argmin(lm(torch.tensor([context[-16:]]))[0, -1]))


def test_possible_rejects_a_token_outside_the_truncated_set(lm):
    response = sample(lm, PROMPT, 6, seed=0, top_k=3)
    tampered = [*response[:3], _least_likely(lm, PROMPT + response[:3])]
    assert not possible(lm, PROMPT, tampered, top_k=3)
    assert not possible(lm, PROMPT, tampered, top_p=0.9)
    assert not possible(lm, PROMPT, [300], top_k=3)


def test_possible_requires_truncated_sampling(lm):
    with pytest.raises(ValueError, match="top_k or top_p"):
        possible(lm, PROMPT, [1, 2])
