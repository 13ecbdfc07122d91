"""Checkpoints: one canonical safetensors file holding everything the next segment needs.

Layout (format `ogpu-checkpoint/1`):
- tensors `model/<name>` — the model's state_dict;
- tensors `optim/<param name>/<key>` — per-parameter optimizer state (Adam: step, exp_avg,
  exp_avg_sq; SGD with momentum: momentum_buffer), keyed by parameter name, not position;
- one metadata entry `ogpu` — canonical JSON (sorted keys, no spaces): format, family, hparams
  (defaults filled in), optimizer spec, seed, step, data_cursor, scheduler state, and
  recent_losses (the training losses of the last ≤ RECENT_LOSSES steps, oldest first, for charts;
  carried through resumes so that a resumed run writes the same bytes as a straight one).

The same state always serialises to the same bytes, so `H(ckpt)` identifies a state. Nothing is
ever unpickled: loading reads raw tensors and JSON only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ogpu_node.compute.errors import InvalidCheckpoint, InvalidModelSpec, InvalidTrainSpec
from ogpu_node.compute.models import build_model, canonical_hparams
from ogpu_node.compute.optim import OptimizerSpec, lr_at, make_optimizer
from ogpu_node.compute.tensorfile import META_KEY, TensorFileError, check_header, ogpu_metadata
from ogpu_node.types.merkle import merkle_root

FORMAT = "ogpu-checkpoint/1"
RECENT_LOSSES = 16  # losses kept in a checkpoint's metadata


@dataclass(frozen=True)
class TrainState:
    """The non-tensor part of a checkpoint. `step` updates have been applied; the next batch
    starts at sample `data_cursor` of the seed's data stream."""

    family: str
    hparams: dict[str, Any]
    optimizer: OptimizerSpec
    seed: int
    step: int
    data_cursor: int
    recent_losses: tuple[float, ...] = ()  # at most RECENT_LOSSES, oldest first


def recent_losses(previous: Iterable[float], new: Iterable[float]) -> tuple[float, ...]:
    """The last RECENT_LOSSES of `previous` followed by `new`."""
    return (*previous, *new)[-RECENT_LOSSES:]


def _loss_to_json(x: float) -> float | None:
    # Canonical JSON has no NaN/inf: a diverged step's loss is stored as null.
    return x if math.isfinite(x) else None


def _loss_from_json(x: object) -> float:
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise InvalidCheckpoint(f"recent_losses: expected numbers, got {x!r}")
    return float(x)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def checkpoint_hash(data: bytes) -> bytes:
    """H(ckpt): the blob hash (Merkle root) of the canonical checkpoint bytes, the name it is published
    under and the hash the chain compares."""
    return merkle_root(data)


def save(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> bytes:
    tensors: dict[str, torch.Tensor] = {
        f"model/{name}": t.detach().contiguous() for name, t in model.state_dict().items()
    }
    for name, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{key}"] = value.detach().contiguous()
            elif value is not None:
                raise InvalidCheckpoint(f"optimizer state {name}/{key} is not a tensor: {value!r}")
    meta = {
        "format": FORMAT,
        "family": state.family,
        "hparams": canonical_hparams(state.family, state.hparams),
        "optimizer": state.optimizer.to_json(),
        "seed": state.seed,
        "step": state.step,
        "data_cursor": state.data_cursor,
        "scheduler": {
            "name": state.optimizer.schedule,
            "last_step": state.step,
            "next_lr": lr_at(state.optimizer, state.step),
        },
        "recent_losses": [_loss_to_json(x) for x in state.recent_losses[-RECENT_LOSSES:]],
    }
    return st_save(tensors, metadata={META_KEY: canonical_json(meta)})


def read_metadata(data: bytes) -> dict[str, Any]:
    """The checkpoint's JSON metadata, read from the (bounded) header without touching the tensors."""
    try:
        meta = ogpu_metadata(data)
    except TensorFileError as e:
        raise InvalidCheckpoint(f"bad checkpoint header: {e}") from None
    if not meta:
        raise InvalidCheckpoint(f"no {META_KEY} metadata in checkpoint header")
    if meta.get("format") != FORMAT:
        raise InvalidCheckpoint(f"unsupported checkpoint format {meta.get('format')!r}")
    return meta


def _natural(meta: dict[str, Any], key: str) -> int:
    """A non-negative integer field of the metadata (a checkpoint may come from someone else: no
    floats, strings or booleans coerced)."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidCheckpoint(f"bad checkpoint metadata: {key} must be a non-negative integer, got {value!r:.40}")
    return value


def read_tensors(data: bytes) -> dict[str, torch.Tensor]:
    try:
        check_header(data)
        return st_load(data)
    except (SafetensorError, ValueError) as e:  # TensorFileError is a ValueError
        raise InvalidCheckpoint(f"bad safetensors payload: {e}") from None


def load(data: bytes) -> tuple[nn.Module, torch.optim.Optimizer, TrainState]:
    """Rebuild (model, optimizer, state) from checkpoint bytes; every tensor must fit exactly."""
    meta = read_metadata(data)
    try:
        state = TrainState(
            family=meta["family"],
            hparams=meta["hparams"],
            optimizer=OptimizerSpec.from_json(meta["optimizer"]),
            seed=_natural(meta, "seed"),
            step=_natural(meta, "step"),
            data_cursor=_natural(meta, "data_cursor"),
            recent_losses=tuple(_loss_from_json(x) for x in meta["recent_losses"]),
        )
        if len(state.recent_losses) > RECENT_LOSSES:
            raise InvalidCheckpoint(f"recent_losses: more than {RECENT_LOSSES}")
        model = build_model(state.family, state.hparams)
    except (KeyError, TypeError, InvalidModelSpec, InvalidTrainSpec) as e:
        raise InvalidCheckpoint(f"bad checkpoint metadata: {e}") from None
    tensors = read_tensors(data)

    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise InvalidCheckpoint(f"weights do not fit {state.family}: {e}") from None

    optimizer = make_optimizer(state.optimizer, model)
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("model/"):
            continue
        prefix, _, rest = key.partition("/")
        name, _, slot = rest.rpartition("/")
        if prefix != "optim" or name not in params:
            raise InvalidCheckpoint(f"unexpected tensor {key!r}")
        optimizer.state[params[name]][slot] = value
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.optimizer, state.step)
    return model, optimizer, state
