"""Anomaly agents' tensor checks (whitepaper §4): what a checkpoint or a dataset shows before anyone
is penalized. Each check returns one-line flags (empty: nothing found); docs/tasks.md "Anomaly agents".

- `checkpoint_anomalies`: weights or optimizer state holding NaN/Inf, or a weight norm that grew more
  than NORM_GROWTH_LIMIT times in one segment (ckpt_{k-1} → ckpt_k);
- `dataset_anomalies`: a dataset blob whose tensors, read from its header alone, do not match the
  prescription's `D.format` or the model's input shape.

Checkpoints are read through `tensorfile` (the safetensors library on numpy, never pickle), so the
client's `task status` checks them without loading torch; the model registry (torch) is imported only
by `dataset_anomalies`, which the provider runs beside its estimate.
"""

from __future__ import annotations

import math

import numpy as np

from ogpu_node.compute.tensorfile import TensorFileError, TensorInfo, load_arrays, read_header
from ogpu_node.types.prescription import Prescription

NORM_GROWTH_LIMIT = 10.0  # ‖w_k‖ / ‖w_{k-1}‖ above this in one segment is flagged
WEIGHTS_PREFIX = "model/"  # docs/tasks.md "Checkpoint format": model/<name> are the weights
INTEGER_DTYPES = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64")  # class ids


def weight_norm(arrays: dict[str, np.ndarray]) -> float:
    """The L2 norm of all `model/` floating tensors together, accumulated in float64."""
    total = 0.0
    for name, a in arrays.items():
        if name.startswith(WEIGHTS_PREFIX) and np.issubdtype(a.dtype, np.floating):
            flat = a.ravel().astype(np.float64)
            total += float(flat @ flat)
    return math.sqrt(total)


def _non_finite(arrays: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """(tensor, count) of every floating tensor holding NaN or ±Inf, in name order."""
    found = []
    for name in sorted(arrays):
        a = arrays[name]
        if np.issubdtype(a.dtype, np.floating):
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                found.append((name, bad))
    return found


def checkpoint_anomalies(previous: bytes | None, checkpoint: bytes, label: str = "checkpoint") -> list[str]:
    """Flags on ``checkpoint`` (ckpt_k's bytes), named by ``label`` (e.g. "checkpoint 3 (0xab…)").

    ``previous`` is ckpt_{k-1}, or for k = 1 the step-0 state; None skips the norm check. A
    checkpoint that is not a readable safetensors file is itself flagged; an unreadable or all-zero
    ``previous`` skips the norm check (growth from zero has no factor)."""
    try:
        arrays = load_arrays(checkpoint)
    except TensorFileError as exc:
        return [f"{label}: not a readable checkpoint ({exc})"]
    flags = []
    bad = _non_finite(arrays)
    if bad:
        name, count = bad[0]
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        flags.append(f"{label}: {count} NaN/Inf value(s) in {name}{more}")
    if previous is None or bad:
        return flags
    try:
        before = weight_norm(load_arrays(previous))
    except TensorFileError:
        return flags
    after = weight_norm(arrays)
    if before > 0 and math.isfinite(before) and after > NORM_GROWTH_LIMIT * before:
        flags.append(f"{label}: weight norm grew {after / before:.3g}x in one segment ({before:.4g} -> {after:.4g}), "
                     f"more than the {NORM_GROWTH_LIMIT:g}x limit")
    return flags


# -- datasets --


def _tensors_anomaly(p: Prescription, header: dict[str, TensorInfo]) -> str | None:
    """Why the header of a `tensors` dataset does not fit D.format or the model, or None."""
    from ogpu_node.compute.models import CNNConfig, MLPConfig, config_from_hparams  # loads torch

    missing = [t for t in ("features", "labels") if t not in header]
    if missing:
        return f"D.format is tensors but it has no {missing[0]!r} tensor"
    features, labels = header["features"], header["labels"]
    if labels.dtype not in INTEGER_DTYPES:
        return f"labels are {labels.dtype}, D.format tensors needs integer class ids"
    if len(labels.shape) != 1 or len(features.shape) < 2 or features.shape[0] != labels.shape[0]:
        return f"features {features.shape} and labels {labels.shape} do not pair up as (N, ...) and (N,)"
    if labels.shape[0] == 0:
        return "it holds no samples"
    cfg = config_from_hparams(p.M.family, p.M.hparams)
    sample = features.shape[1:]
    if isinstance(cfg, MLPConfig):  # the MLP flattens each sample
        fits, needs = math.prod(sample) == cfg.in_dim, f"{cfg.in_dim} values"
    elif isinstance(cfg, CNNConfig):
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        fits, needs = sample == shape, f"shape {shape}"
    else:
        return f"{p.M.family} trains on a text corpus, D.format is tensors"
    return None if fits else f"samples of shape {sample}, the model {p.M.family} needs {needs}"


def _text_anomaly(p: Prescription, corpus: bytes) -> str | None:
    """Why a `text` corpus does not fit the model (block size, byte vocabulary), or None."""
    from ogpu_node.compute.models import config_from_hparams

    cfg = config_from_hparams(p.M.family, p.M.hparams)
    block, vocab = getattr(cfg, "block_size", None), getattr(cfg, "vocab_size", None)
    if block is None or vocab is None:
        return f"D.format is text, the model {p.M.family} does not train on text"
    if len(corpus) <= block:
        return f"a corpus of {len(corpus)} bytes is not longer than the model's block_size {block}"
    top = int(np.frombuffer(corpus, np.uint8).max())
    return None if top < vocab else f"byte value {top} is outside the model's vocab_size {vocab}"


def dataset_anomalies(p: Prescription, dataset: bytes) -> list[str]:
    """Flags on a batch prescription's dataset blob: its tensors against `D.format` and the model's
    input, from the safetensors header alone for `tensors` (nothing decoded), so a provider flags a
    mismatched dataset before it decodes it or bids. The trainer's TrainSpec still checks the decoded
    values (label range) when it trains."""
    if p.D is None:
        return []
    name = f"dataset 0x{p.D.blob.hex()}"
    if p.D.format == "text":
        why = _text_anomaly(p, dataset)
    else:
        try:
            header = read_header(dataset)
        except TensorFileError as exc:
            return [f"{name}: D.format is tensors but it is not a safetensors file ({exc})"]
        why = _tensors_anomaly(p, header)
    return [] if why is None else [f"{name}: {why}"]


__all__ = ["NORM_GROWTH_LIMIT", "checkpoint_anomalies", "dataset_anomalies", "weight_norm"]
