"""Safetensors files without torch: the one place their headers are read and tensors copied.

The apps (client, provider) use this to read a checkpoint's metadata, to check a header against a
model and to extract weights, and the trainer to read a spec's metadata; tensors go through the
`safetensors` library on numpy, so importing this module never loads torch. A header is bounded
before it is parsed — at most MAX_HEADER bytes, nesting at most MAX_NESTING levels (ogpu_node/jsontext.py
says why the depth matters) — so a hostile file cannot make us read, decode or recurse through
gigabytes, and `read_header` checks what it declares (dtypes, shapes, offsets) against the bytes there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.numpy import save_file

from ogpu_node.jsontext import MAX_NESTING, JsonBoundsError, loads_bounded

MAX_HEADER = 16 * 1024 * 1024  # bytes of JSON header we accept before parsing it
META_KEY = "ogpu"  # the checkpoint's own metadata lives under this key of `__metadata__`
# Bytes per element of each safetensors dtype we read; a header naming another is refused.
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class TensorFileError(ValueError):
    """Not a safetensors file, or one whose header is oversized or malformed."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a header declares it."""

    dtype: str  # a key of DTYPE_SIZES
    shape: tuple[int, ...]


def _check_header(prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise TensorFileError("truncated safetensors header")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_HEADER or 8 + n > size:
        raise TensorFileError("truncated or oversized safetensors header")
    return n


def check_header(data: bytes) -> None:
    """Raise TensorFileError unless `data` starts with a header of at most MAX_HEADER bytes that
    fits in it: what to call before handing untrusted bytes to a safetensors loader."""
    _check_header(data[:8], len(data))


def _loads(text: bytes | str, what: str) -> Any:
    try:
        return loads_bounded(text, max_bytes=MAX_HEADER, max_nesting=MAX_NESTING)
    except JsonBoundsError as exc:
        raise TensorFileError(f"bad {what}: {exc}") from None


def _header_object(data: bytes) -> dict[str, Any]:
    n = _check_header(data[:8], len(data))
    header = _loads(data[8 : 8 + n], "safetensors header")
    if not isinstance(header, dict):
        raise TensorFileError("safetensors header is not an object")
    return header


def _string_map(meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TensorFileError("safetensors __metadata__ is not a map of strings")
    return dict(meta)


def _naturals(value: object, count: int | None) -> list[int] | None:
    """`value` as a list of non-negative integers (of length `count` when given), else None."""
    if not isinstance(value, list) or (count is not None and len(value) != count):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return None
    return value


def read_header(data: bytes) -> dict[str, TensorInfo]:
    """Each tensor's dtype and shape as the header of safetensors bytes `data` declares them, once
    checked as the safetensors loader checks them: known dtypes, offsets that tile the data section
    exactly, and each tensor's byte length equal to its shape's. No tensor is copied."""
    header = _header_object(data)
    data_len = len(data) - 8 - int.from_bytes(data[:8], "little")
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            _string_map(entry)
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_SIZES:
            raise TensorFileError(f"tensor {name!r}: no known dtype")
        shape, offsets = _naturals(entry.get("shape"), None), _naturals(entry.get("data_offsets"), 2)
        if shape is None or offsets is None:
            raise TensorFileError(f"tensor {name!r}: shape and data_offsets must be non-negative integers")
        begin, end = offsets
        if end < begin or end - begin != math.prod(shape) * DTYPE_SIZES[entry["dtype"]]:
            raise TensorFileError(f"tensor {name!r}: data_offsets do not match its dtype and shape")
        tensors[name] = TensorInfo(entry["dtype"], tuple(shape))
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise TensorFileError("safetensors data_offsets leave a gap or overlap")
        position = end
    if position != data_len:
        raise TensorFileError(f"safetensors data section is {data_len} bytes, its tensors cover {position}")
    return tensors


def read_metadata(source: Path | bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file or buffer (`{}` when absent)."""
    if isinstance(source, bytes):
        return _string_map(_header_object(source).get("__metadata__"))
    path = Path(source)
    with open(path, "rb") as f:
        _check_header(f.read(8), path.stat().st_size)
    try:  # the library parses the header (serde_json, its own recursion limit of 128)
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise TensorFileError(f"not a safetensors file: {exc}") from None


def ogpu_metadata(source: Path | bytes) -> dict[str, Any]:
    """The checkpoint metadata (JSON under `META_KEY`), `{}` when absent or not an object."""
    raw = read_metadata(source).get(META_KEY)
    if raw is None:
        return {}
    meta = _loads(raw, f"{META_KEY} metadata")
    return meta if isinstance(meta, dict) else {}


def load_arrays(source: Path | bytes) -> dict[str, np.ndarray]:
    """Every tensor as a numpy array."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    _check_header(data[:8], len(data))
    try:
        return np_load(data)
    except SafetensorError as exc:
        raise TensorFileError(f"not a safetensors file: {exc}") from None


def encode_arrays(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Safetensors bytes of `tensors` (callers write them with `files.atomic_write`)."""
    return np_save(tensors, metadata=metadata)


def save_arrays(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (callers wanting atomicity use `encode_arrays` and `files.atomic_write`)."""
    save_file(tensors, str(path), metadata=metadata)
