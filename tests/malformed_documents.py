"""Task documents made to hurt a provider (issue 10): a corpus of malformed prescriptions and
safetensors files (datasets, initial weights, checkpoints), and a hypothesis strategy of prescriptions
mutated field by field. Each case has a name, so a failure says which document did it.

`GOOD` is a small batch prescription every provider here can bid on; `good_dataset()` its data and
`good_weights()` initial weights of its model. The bad cases derive from them, so each one is wrong
in exactly the way its name says.
"""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from safetensors.numpy import save

from ogpu_node.compute.tensorfile import MAX_HEADER, META_KEY

IN_DIM, CLASSES, SAMPLES = 16, 3, 64
NESTED = 100_000  # brackets: past the C stack under py-evm's recursion limit (ogpu_node/jsontext.py)

GOOD: dict[str, Any] = {
    "kind": "batch",
    "D": {"blob": "0x" + "00" * 32, "format": "tensors"},  # set to the uploaded dataset's hash
    "M": {"family": "mlp", "hparams": {"in_dim": IN_DIM, "out_dim": CLASSES, "hidden": [8]}},
    "I": {
        "steps": 30, "checkpoints": 3, "segment_window_s": 3600, "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.01}, "seed": 1,
        "hardware": {"min_memory_mib": 0, "devices": ["cpu"]}, "numeric_profile": "cpu-avx2-1t",
        "max_payment": str(10**18), "council_size": 1, "confirm_window_s": 3600,
    },
    "f": {"kind": "per-checkpoint", "council_share_bps": 1000, "lateness_bps_per_second": 0},
    "e": {"kind": "exact"},
    # Two bids needed and an hour to gather them: a lone provider's bid leaves the task in bidding.
    "H": {"bid_window_s": 3600, "min_bids": 2},
}


def edit(doc: dict[str, Any], path: str, value: Any = ..., delete: bool = False) -> dict[str, Any]:
    """A copy of `doc` with the field at dotted `path` set to `value` (or deleted)."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return doc


def nested_prescription() -> bytes:
    """Issue 10's first attack: `{"kind":` + `[`×100000 + `]`×100000 + `}`."""
    return b'{"kind":' + b"[" * NESTED + b"]" * NESTED + b"}"


def bad_prescriptions(good: dict[str, Any]) -> dict[str, bytes]:
    """Prescription blobs no provider may bid on, nor crash on: not JSON, too deep, too large, or
    JSON of the wrong shape, ranges or model. `good` is GOOD with its dataset hash filled in."""
    def text(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    deep_hparams: dict[str, Any] = {}
    for _ in range(70):
        deep_hparams = {"x": deep_hparams}
    return {
        "nested-100k": nested_prescription(),
        "nested-100k-in-a-field": text(good)[:-1] + b', "pad": ' + b"[" * NESTED + b"]" * NESTED + b"}",
        "not-json": b"{not json",
        "not-utf8": b"\xff\xfe{}",
        "empty": b"",
        "a-list": b"[]",
        "a-number": b"1e400",
        "duplicate-keys": b'{"kind": "batch", "kind": "stream"}',
        "larger-than-1-mib": text(edit(good, "M.hparams.pad", "x" * (1 << 20))),
        "kind-stream": text(edit(good, "kind", "stream")),
        "unknown-key": text(edit(good, "surprise", 1)),
        "steps-a-boolean": text(edit(good, "I.steps", True)),
        "steps-10e400": text(good).replace(b'"steps": 30', b'"steps": 1' + b"0" * 400),
        "wei-5000-digits": text(edit(good, "I.max_payment", "9" * 5000)),
        "council-0": text(edit(good, "I.council_size", 0)),
        "no-dataset": text(edit(good, "D", delete=True)),
        "unknown-family": text(edit(good, "M.family", "resnet")),
        "hparams-70-deep": text(edit(good, "M.hparams", deep_hparams)),
        "hparams-not-an-object": text(edit(good, "M.hparams", [1])),
        "a-million-layers": text(edit(good, "M.hparams.hidden", [4] * 100_000)),
        "width-2-to-the-62": text(edit(good, "M.hparams.in_dim", 2**62)),
        "lr-nan": text(good).replace(b'"lr": 0.01', b'"lr": NaN'),
        "optimizer-unknown": text(edit(good, "I.optimizer.name", "lion")),
        "profile-unknown": text(edit(good, "I.numeric_profile", "tpu-v9")),
        "text-data-for-an-mlp": text(edit(good, "D.format", "text")),
    }


# --- safetensors ---------------------------------------------------------------------------------


def good_dataset() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, IN_DIM)).astype(np.float32)
    return save({"features": x, "labels": (x[:, :CLASSES].argmax(axis=1)).astype(np.int64)})


def good_weights() -> bytes:
    """A state_dict of GOOD's model (`net.0` 16→8, `net.2` 8→3)."""
    return save(_weights())


def _weights() -> dict[str, np.ndarray]:
    return {"net.0.weight": np.zeros((8, IN_DIM), np.float32), "net.0.bias": np.zeros(8, np.float32),
            "net.2.weight": np.zeros((CLASSES, 8), np.float32), "net.2.bias": np.zeros(CLASSES, np.float32)}


def _with_header(header: bytes, rest: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + rest


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def bad_safetensors(good: bytes) -> dict[str, bytes]:
    """Files that are not sound safetensors, whatever they hold: truncated, lying or hostile
    headers. `good` is a sound file to truncate."""
    n = int.from_bytes(good[:8], "little")
    nested = b'{"a":' + b"[" * NESTED + b"]" * NESTED + b"}"
    return {
        "empty": b"",
        "short-prefix": b"\x01\x02",
        "header-length-past-the-end": (n + 100).to_bytes(8, "little") + good[8:],
        "header-length-2-to-the-63": (2**63).to_bytes(8, "little") + good[8:],
        "header-over-16-mib": _with_header(b" " * (MAX_HEADER + 1)),
        "header-nested-100k": _with_header(nested),
        "header-not-json": _with_header(b"{{{{"),
        "header-not-utf8": _with_header(b"\xff\xfe{}"),
        "header-a-list": _with_header(b"[]"),
        "metadata-not-strings": _with_header(b'{"__metadata__": {"n": 1}}'),
        "offsets-past-the-end": _with_header(json.dumps({"w": _entry("F32", [9], 0, 36)}).encode()),
        "offsets-overlap": _with_header(
            json.dumps({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}).encode(), bytes(12)),
        "size-not-its-shape": _with_header(json.dumps({"w": _entry("F32", [3], 0, 4)}).encode(), bytes(4)),
        "unknown-dtype": _with_header(json.dumps({"w": _entry("Q7", [1], 0, 1)}).encode(), bytes(1)),
        "negative-shape": _with_header(json.dumps({"w": _entry("U8", [-1], 0, 0)}).encode()),
        "data-truncated": good[:-4],
        "a-pickle": pickle.dumps({"features": [1.0], "labels": [0]}),
        "random-bytes": bytes(range(256)) * 4,
    }


def bad_datasets() -> dict[str, bytes]:
    """Sound safetensors files that are not a dataset GOOD's model trains on."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((SAMPLES, IN_DIM)).astype(np.float32)
    y = np.zeros(SAMPLES, np.int64)
    return {
        "no-labels": save({"features": x}),
        "features-of-width-5": save({"features": x[:, :5].copy(), "labels": y}),
        "features-1-d": save({"features": x[:, 0].copy(), "labels": y}),
        "labels-out-of-range": save({"features": x, "labels": y + 7}),
        "labels-negative": save({"features": x, "labels": y - 1}),
        "labels-floats": save({"features": x, "labels": y.astype(np.float32)}),
        "labels-fewer-than-samples": save({"features": x, "labels": y[:10].copy()}),
        "no-samples": save({"features": x[:0].copy(), "labels": y[:0].copy()}),
        **{f"file-{name}": data for name, data in bad_safetensors(good_dataset()).items()},
    }


def bad_weights() -> dict[str, bytes]:
    """Initial weights that do not load into GOOD's model."""
    w = _weights()
    return {
        "missing-tensor": save({k: v for k, v in w.items() if k != "net.0.bias"}),
        "extra-tensor": save({**w, "net.9.weight": np.zeros(2, np.float32)}),
        "wrong-shape": save({**w, "net.0.weight": np.zeros((3, 3), np.float32)}),
        "float64": save({**w, "net.0.weight": w["net.0.weight"].astype(np.float64)}),
        "int32": save({**w, "net.2.bias": np.zeros(CLASSES, np.int32)}),
        **{f"file-{name}": data for name, data in bad_safetensors(good_weights()).items()},
    }


def bad_checkpoints(good: bytes) -> dict[str, bytes]:
    """Checkpoints (`good` is a real one) with lying or hostile metadata, and unsound files."""
    from safetensors.numpy import load

    tensors = load(good)
    meta = json.loads(json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])["__metadata__"][META_KEY])

    def with_meta(text: str) -> bytes:
        return save(tensors, metadata={META_KEY: text})

    def with_field(key: str, raw: str) -> bytes:
        return with_meta(json.dumps({**meta, key: "@"}).replace('"@"', raw))

    return {
        "meta-nested-100k": with_meta("[" * NESTED + "]" * NESTED),
        "meta-not-json": with_meta("{not json"),
        "meta-a-list": with_meta("[]"),
        "meta-other-format": with_field("format", '"ogpu-checkpoint/0"'),
        "meta-step-a-string": with_field("step", '"3"'),
        "meta-step-negative": with_field("step", "-1"),
        "meta-seed-1e400": with_field("seed", "1e400"),
        "meta-seed-5000-digits": with_field("seed", "9" * 5000),
        "meta-losses-a-string": with_field("recent_losses", '"abc"'),
        "meta-hparams-a-million-layers": with_field("hparams", json.dumps({**meta["hparams"], "hidden": [4] * 10**5})),
        "tensors-missing": save({k: v for k, v in tensors.items() if not k.startswith("optim/")} | {
            "model/net.0.weight": np.zeros((2, 2), np.float32)}, metadata={META_KEY: json.dumps(meta)}),
        **{f"file-{name}": data for name, data in bad_safetensors(good).items()},
    }


# --- a fuzzer: GOOD mutated field by field -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**300), 2**300) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}{key}"
            out += [path, *_paths(value, path + ".")]
    return out


@st.composite
def mutated_prescriptions(draw: Callable[..., Any], good: dict[str, Any]) -> dict[str, Any]:
    """`good` with one to three fields replaced by any JSON value, deleted, or joined by an unknown one."""
    doc = copy.deepcopy(good)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(("replace", "delete", "add")))
        if action == "delete":
            doc = edit(doc, path, delete=True)
        elif action == "add":
            doc = edit(doc, path.rsplit(".", 1)[0] + ".extra" if "." in path else "extra", draw(JSON_VALUES))
        else:
            doc = edit(doc, path, draw(JSON_VALUES))
    return doc
