"""Optimizers (Adam, SGD) and the learning-rate schedule, both plain functions of a spec."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ogpu_node.compute.errors import InvalidTrainSpec

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class OptimizerSpec:
    """`lr` is the peak rate; `cosine` warms up linearly for `warmup_steps`, then decays to 0 at
    `total_steps`. The schedule is a pure function of the step, so its state is the step."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam only
    eps: float = 1e-8  # adam only
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise InvalidTrainSpec(f"optimizer.name: {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise InvalidTrainSpec(
                f"optimizer.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}"
            )
        if not self.lr > 0:
            raise InvalidTrainSpec(f"optimizer.lr: must be positive, got {self.lr!r}")
        if self.schedule == "cosine" and self.total_steps <= self.warmup_steps:
            raise InvalidTrainSpec("optimizer.total_steps: must exceed warmup_steps for a cosine schedule")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OptimizerSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidTrainSpec(f"optimizer.{unknown[0]}: unknown field")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def lr_at(spec: OptimizerSpec, step: int) -> float:
    """Learning rate used for the update that takes the model from `step` to `step + 1`."""
    if spec.schedule == "constant":
        return spec.lr
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / (spec.total_steps - spec.warmup_steps))
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(spec: OptimizerSpec, model: nn.Module) -> torch.optim.Optimizer:
    # foreach/fused pinned off: one code path, the same on every machine.
    params = list(model.parameters())
    if spec.name == "adam":
        return torch.optim.Adam(
            params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, foreach=False
        )
    return torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, foreach=False
    )
