"""Safetensors files without torch: the one place their headers are read and tensors copied.

The apps (client, provider) use this to read a checkpoint's metadata and to extract weights, and the
trainer to read a spec's metadata; everything goes through the `safetensors` library
(`safe_open(...).metadata()`, `save_file`) on numpy, so importing this module never loads torch.
A header is bounded before it is parsed: a hostile file cannot make us read or decode gigabytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as np_load
from safetensors.numpy import save_file

MAX_HEADER = 16 * 1024 * 1024  # bytes of JSON header we accept before parsing it
META_KEY = "ogpu"  # the checkpoint's own metadata lives under this key of `__metadata__`


class TensorFileError(ValueError):
    """Not a safetensors file, or one whose header is oversized or malformed."""


def _check_header(prefix: bytes, size: int) -> None:
    if len(prefix) < 8:
        raise TensorFileError("truncated safetensors header")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_HEADER or 8 + n > size:
        raise TensorFileError("truncated or oversized safetensors header")


def check_header(data: bytes) -> None:
    """Raise TensorFileError unless `data` starts with a header of at most MAX_HEADER bytes that
    fits in it: what to call before handing untrusted bytes to a safetensors loader."""
    _check_header(data[:8], len(data))


def _string_map(meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TensorFileError("safetensors __metadata__ is not a map of strings")
    return dict(meta)


def read_metadata(source: Path | bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file or buffer (`{}` when absent)."""
    if isinstance(source, bytes):
        _check_header(source[:8], len(source))
        n = int.from_bytes(source[:8], "little")
        try:
            header = json.loads(source[8 : 8 + n])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise TensorFileError(f"bad safetensors header: {exc}") from None
        if not isinstance(header, dict):
            raise TensorFileError("safetensors header is not an object")
        return _string_map(header.get("__metadata__"))
    path = Path(source)
    with open(path, "rb") as f:
        _check_header(f.read(8), path.stat().st_size)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise TensorFileError(f"not a safetensors file: {exc}") from None


def ogpu_metadata(source: Path | bytes) -> dict[str, Any]:
    """The checkpoint metadata (JSON under `META_KEY`), `{}` when absent or not an object."""
    raw = read_metadata(source).get(META_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TensorFileError(f"bad {META_KEY} metadata: {exc}") from None
    return meta if isinstance(meta, dict) else {}


def load_arrays(source: Path | bytes) -> dict[str, np.ndarray]:
    """Every tensor as a numpy array."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    _check_header(data[:8], len(data))
    try:
        return np_load(data)
    except SafetensorError as exc:
        raise TensorFileError(f"not a safetensors file: {exc}") from None


def save_arrays(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (callers wanting atomicity write to a temporary path and rename)."""
    save_file(tensors, str(path), metadata=metadata)
