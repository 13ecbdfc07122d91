"""Tiny learnable tasks for each model family, built in the tests (no data files)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ogpu_node.compute import OptimizerSpec, TensorDataset, TrainSpec, dataset_from_text
from ogpu_node.types.prescription import Prescription

TEXT_HPARAMS = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}


def mlp_spec(seed: int = 7, optimizer: OptimizerSpec | None = None) -> TrainSpec:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()  # linearly separable
    return TrainSpec(
        "mlp",
        {"in_dim": 8, "out_dim": 2},
        optimizer or OptimizerSpec("adam", 1e-2),
        TensorDataset(x, y),
        16,
        seed,
    )


def cnn_spec(seed: int = 7) -> TrainSpec:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(32) % 2
    x = 0.1 * torch.randn(32, 1, 16, 16, generator=g)
    x[y == 0, :, :8, :] += 1.0  # class 0: bright top half
    x[y == 1, :, 8:, :] += 1.0  # class 1: bright bottom half
    return TrainSpec("cnn", {"n_classes": 2}, OptimizerSpec("adam", 1e-2), TensorDataset(x, y), 8, seed)


def text_spec(seed: int = 7, dropout: float = 0.0) -> TrainSpec:
    corpus = b"hello world. " * 20
    return TrainSpec(
        "char-transformer",
        {**TEXT_HPARAMS, "dropout": dropout},
        OptimizerSpec("adam", 3e-3, schedule="cosine", warmup_steps=3, total_steps=100),
        dataset_from_text(corpus, 16),
        8,
        seed,
    )


def edited(p: Prescription, path: str, value: Any) -> Prescription:
    """``p`` with the dotted field ``path`` (e.g. ``I.batch_size``) set to ``value``."""
    doc = copy.deepcopy(p.to_json())
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return Prescription.from_json(doc)
