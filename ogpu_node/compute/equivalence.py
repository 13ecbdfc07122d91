"""The equivalence functions e(r, r') a prescription can name (DESIGN.md §6).

- `exact`: the canonical checkpoint bytes hash the same (needs a numeric profile);
- `allclose`: every weight tensor has the same name and shape and is close (rtol/atol);
- `tokens`: greedy outputs are equal;
- `possible`: a sampled response could have come from the model — each token lies in the
  verifier's top-k / top-p truncated set at its step, within a logit margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ogpu_node.compute.checkpoint import checkpoint_hash, read_tensors


def exact(a: bytes, b: bytes) -> bool:
    return checkpoint_hash(a) == checkpoint_hash(b)


def _weights(data: bytes) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_tensors(data).items() if k.startswith("model/")}


def allclose(a: bytes, b: bytes, rtol: float, atol: float) -> bool:
    wa, wb = _weights(a), _weights(b)
    if wa.keys() != wb.keys():
        return False
    return all(
        wa[k].shape == wb[k].shape
        and wa[k].dtype == wb[k].dtype
        and torch.allclose(wa[k], wb[k], rtol=rtol, atol=atol, equal_nan=False)
        for k in wa
    )


def tokens(outputs_a: Sequence[int], outputs_b: Sequence[int]) -> bool:
    return list(outputs_a) == list(outputs_b)


def _next_logits(model: nn.Module, context: list[int]) -> torch.Tensor:
    block_size = model.config.block_size
    idx = torch.tensor([context[-block_size:]], dtype=torch.long)
    return model(idx)[0, -1].to(torch.float64)


@torch.no_grad()
def greedy(model: nn.Module, prompt: Sequence[int], n: int) -> list[int]:
    """n tokens of greedy decoding (ties: the lowest id) after `prompt`."""
    model.eval()
    context, out = list(prompt), []
    for _ in range(n):
        token = int(torch.argmax(_next_logits(model, context)))
        out.append(token)
        context.append(token)
    return out


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: Sequence[int],
    n: int,
    seed: int,
    top_k: int | None = None,
    top_p: float | None = None,
) -> list[int]:
    """n tokens sampled from the top-k / top-p truncated distribution (how an honest provider answers)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    context, out = list(prompt), []
    for _ in range(n):
        logits = _next_logits(model, context)
        keep = _truncated(logits, top_k, top_p, margin=0.0)
        probs = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        token = int(torch.multinomial(probs, 1, generator=gen))
        out.append(token)
        context.append(token)
    return out


def _truncated(logits: torch.Tensor, top_k: int | None, top_p: float | None, margin: float) -> torch.Tensor:
    """Mask of the tokens in the truncated set, widened to every token whose logit is within
    `margin` of the set's weakest member (so tiny numeric differences do not flip a verdict)."""
    order = torch.argsort(logits, descending=True, stable=True)
    size = logits.numel()
    if top_k is not None:
        size = min(size, top_k)
    if top_p is not None:
        cumulative = torch.cumsum(torch.softmax(logits[order], dim=-1), dim=0)
        size = min(size, int(torch.searchsorted(cumulative, torch.tensor(top_p, dtype=cumulative.dtype))) + 1)
    threshold = logits[order[size - 1]]
    return logits >= threshold - margin


@torch.no_grad()
def possible(
    model: nn.Module,
    prompt: Sequence[int],
    response_tokens: Sequence[int],
    top_k: int | None = None,
    top_p: float | None = None,
    margin: float = 1e-3,
) -> bool:
    """Could `response_tokens` have been sampled from `model` after `prompt` with this truncation?"""
    if top_k is None and top_p is None:
        raise ValueError("possible: needs top_k or top_p (untruncated sampling can produce any token)")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"possible: top_k must be positive, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"possible: top_p must be in (0, 1], got {top_p}")
    model.eval()
    context = list(prompt)
    for token in response_tokens:
        logits = _next_logits(model, context)
        if not 0 <= token < logits.numel() or not bool(_truncated(logits, top_k, top_p, margin)[token]):
            return False
        context.append(token)
    return True
