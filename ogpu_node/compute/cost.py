"""Rough cost of a batch prescription, for a provider deciding whether and what to bid.

Nothing is allocated: the model is built on torch's meta device. These are estimates:
- params: exact (the model's parameter count);
- FLOPs: the usual 6 × params × samples per step (forward 2, backward 4 per parameter and sample;
  for `char-transformer` a sample is a token, so block_size × batch_size), ignoring attention's
  T² term — the same convention as `Worker.measure_throughput`, so total_flops / throughput is a
  time estimate on that machine;
- memory_mib: float32 weights + gradients + optimizer state (Adam 2 slots, SGD with momentum 1)
  + an upper-ish bound on activations (every module's output for one batch, plus the attention
  matrices and the logits' softmax) + the decoded dataset. It excludes the process's own baseline
  (torch alone takes a few hundred MiB).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ogpu_node.compute.errors import InvalidModelSpec, InvalidTrainSpec
from ogpu_node.compute.models import CharTransformerConfig, CNNConfig, build_model, config_from_hparams
from ogpu_node.types.prescription import Prescription

FLOAT = 4  # bytes: everything trains in float32
MIB = 2**20


class Estimate(NamedTuple):
    params: int
    flops_per_step: float
    total_flops: float
    memory_mib: float


def _sample_shape(cfg: object) -> tuple[tuple[int, ...], int]:
    """(one sample's input shape, bytes per stored sample)."""
    if isinstance(cfg, CharTransformerConfig):
        return (cfg.block_size,), 1  # a text sample is a window onto the byte corpus
    if isinstance(cfg, CNNConfig):
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    else:
        shape = (cfg.in_dim,)  # type: ignore[attr-defined]
    return shape, FLOAT * math.prod(shape) + 8  # float32 features + an int64 label


def _activation_bytes(model: torch.nn.Module, cfg: object, batch: int, shape: tuple[int, ...]) -> int:
    """Bytes of every module's output for one batch, from a forward pass on the meta device."""
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            if isinstance(cfg, CharTransformerConfig):
                x = torch.zeros((batch, *shape), dtype=torch.long, device="meta")
            else:
                x = torch.zeros((batch, *shape), device="meta")
            model(x)
    finally:
        for h in handles:
            h.remove()
    if isinstance(cfg, CharTransformerConfig):
        t = cfg.block_size
        total += cfg.n_layer * batch * cfg.n_head * t * t * FLOAT * 2  # scores and softmax
        total += batch * t * cfg.vocab_size * FLOAT  # the loss's softmax over the logits
    return total


def estimate(p: Prescription, n_samples: int) -> Estimate:
    """The cost of batch prescription `p` over a dataset of `n_samples` samples (for text: bytes)."""
    if p.kind != "batch" or p.I.batch_size is None or p.I.steps is None:
        raise InvalidTrainSpec("prescription.kind: only a batch task has a training cost")
    try:
        cfg = config_from_hparams(p.M.family, p.M.hparams)
        with torch.device("meta"):
            model = build_model(p.M.family, p.M.hparams)
    except (InvalidModelSpec, RuntimeError, OverflowError) as e:
        raise InvalidTrainSpec(f"prescription.M.hparams: {e}") from None
    params = sum(t.numel() for t in model.parameters())
    batch = p.I.batch_size
    shape, sample_bytes = _sample_shape(cfg)
    tokens = batch * (cfg.block_size if isinstance(cfg, CharTransformerConfig) else 1)
    flops_per_step = 6.0 * params * tokens

    optimizer = p.I.optimizer or {}
    slots = 2 if optimizer.get("name", "adam") == "adam" else (1 if optimizer.get("momentum") else 0)
    state = (2 + slots) * params * FLOAT  # weights, gradients, optimizer slots
    try:
        activations = _activation_bytes(model, cfg, batch, shape)
    except (RuntimeError, OverflowError) as e:  # a batch whose activations overflow torch's int64 sizes
        raise InvalidTrainSpec(f"prescription: too large to estimate ({e})") from None
    memory = state + activations + max(n_samples, 0) * sample_bytes
    return Estimate(params, flops_per_step, flops_per_step * p.I.steps, memory / MIB)
