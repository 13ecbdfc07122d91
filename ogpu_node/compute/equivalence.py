"""The equivalence functions e(r, r') a batch task's prescription can name (DESIGN.md §6).

- `exact`: the canonical checkpoint bytes hash the same (needs a numeric profile);
- `allclose`: every weight tensor has the same name and shape and is close (rtol/atol).

A stream's `tokens` and `possible` compare generated responses: `generate.check`.
"""

from __future__ import annotations

import torch

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
