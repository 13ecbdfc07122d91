"""A task's result: the weights of its accepted final checkpoint, and what a checkpoint's header says.

Checkpoints are safetensors files (docs/tasks.md): `model/<name>` tensors, optimizer state, and the
trainer's JSON metadata under `ogpu`. Everything here goes through `compute/tensorfile` (the
safetensors library, torch-free) and `files.atomic_write`. `compute/tensorfile` is imported where it
is used: importing the `compute` package loads torch, which no command but these needs at start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ogpu_node.apps.client.errors import BadCheckpoint
from ogpu_node.files import atomic_write

__all__ = ["checkpoint_metadata", "extract_weights", "header_bound", "mean_recent_loss"]

WEIGHTS_PREFIX = "model/"


def header_bound() -> int:
    """The most header bytes a safetensors file may have before we refuse it."""
    from ogpu_node.compute.tensorfile import MAX_HEADER

    return MAX_HEADER


def checkpoint_metadata(header: bytes) -> dict[str, Any]:
    """The `ogpu` metadata of a checkpoint from the start of its file (8 + header length bytes suffice);
    `{}` when absent. BadCheckpoint when it is not a safetensors header."""
    from ogpu_node.compute.tensorfile import TensorFileError, ogpu_metadata

    try:
        return ogpu_metadata(header)
    except TensorFileError as exc:
        raise BadCheckpoint(str(exc)) from None


def mean_recent_loss(meta: dict[str, Any]) -> float | None:
    """The mean of the finite numbers in `recent_losses` (None without any)."""
    losses = meta.get("recent_losses")
    if not isinstance(losses, list):
        return None
    finite = [x for x in map(_as_float, losses) if x is not None and math.isfinite(x)]
    return sum(finite) / len(finite) if finite else None


def _as_float(x: object) -> float | None:
    """A JSON number as a float; None for anything else, and for an integer too large for a float
    (a header is someone else's document: `float(10**400)` raises)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        return float(x)
    except OverflowError:
        return None


def extract_weights(checkpoint: Path, out_path: Path, checkpoint_hash: bytes) -> int:
    """Write the checkpoint file's `model/<name>` tensors as `<name>` into a safetensors file at ``out_path``
    (atomically), with metadata naming the checkpoint (`ogpu_checkpoint`) and, when the checkpoint says,
    its model `family` and `hparams`; return the number of tensors."""
    from ogpu_node.compute.tensorfile import TensorFileError, encode_arrays, load_arrays, ogpu_metadata

    name = f"checkpoint 0x{checkpoint_hash.hex()}"
    try:
        tensors = load_arrays(Path(checkpoint))
        meta = ogpu_metadata(Path(checkpoint))
    except TensorFileError as exc:
        raise BadCheckpoint(f"{name} is not a safetensors file: {exc}") from None
    weights = {t.removeprefix(WEIGHTS_PREFIX): a for t, a in tensors.items() if t.startswith(WEIGHTS_PREFIX)}
    if not weights:
        raise BadCheckpoint(f"{name} holds no {WEIGHTS_PREFIX} tensors")
    info = {"ogpu_checkpoint": "0x" + checkpoint_hash.hex()}
    if "family" in meta:
        info["family"] = str(meta["family"])
        info["hparams"] = json.dumps(meta.get("hparams"), sort_keys=True, separators=(",", ":"))
    atomic_write(Path(out_path), encode_arrays(weights, metadata=info))
    return len(weights)
