"""The prescription's data: its typed error, its fields as frozen dataclasses, and its canonical JSON.

`canonical_json` is what the chain commits to (`prescription_hash`), so `to_json` writes every field
the parser reads, in one fixed form: wei amounts as decimal strings, absent optional fields left out.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.protocol import DEVICE_KINDS, TaskKind

KINDS = tuple(kind.name.lower() for kind in TaskKind)  # ("batch", "stream")
DATASET_FORMATS = ("tensors", "text")
OPTIMIZERS = ("adam", "sgd")
OPTIMIZER_FIELDS = ("name", "lr", "momentum", "weight_decay", "betas", "eps", "schedule", "warmup_steps",
                    "total_steps")  # compute.optim.OptimizerSpec's fields; compute checks their values
PAYMENT_KINDS = {"batch": "per-checkpoint", "stream": "per-unit"}

TOP_KEYS = ("kind", "D", "M", "I", "f", "e", "H")
BATCH_I = ("steps", "checkpoints", "segment_window_s", "batch_size", "optimizer", "seed", "confirm_window_s")
STREAM_I = ("response_method", "response_weight", "max_response_ms", "price_per_unit", "settle_window_s")
COMMON_I = ("hardware", "numeric_profile", "max_payment", "council_size")
DEFAULT_TEMPERATURE = 1.0  # e.temperature of `possible` when the document names none


class InvalidPrescription(ValueError):
    """A prescription that cannot be accepted; `field_path` names the field (`prescription.I.steps`)."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")


@dataclass(frozen=True)
class Dataset:
    blob: bytes  # 32-byte blob hash (Merkle root, ogpu_node/types/merkle.py)
    format: str  # tensors | text


@dataclass(frozen=True)
class Model:
    family: str
    hparams: dict[str, Any]
    initial_weights: bytes | None = None  # blob hash of a safetensors file


@dataclass(frozen=True)
class Hardware:
    min_memory_mib: int
    devices: tuple[str, ...]

    @property
    def device_mask(self) -> int:
        return sum(1 << DEVICE_KINDS.index(d) for d in self.devices)


@dataclass(frozen=True)
class Instructions:
    max_payment: int  # wei: batch escrow, stream budget
    council_size: int
    hardware: Hardware
    numeric_profile: str | None = None
    # batch
    steps: int | None = None
    checkpoints: int | None = None
    segment_window_s: int | None = None
    batch_size: int | None = None
    optimizer: dict[str, Any] | None = None
    seed: int | None = None
    confirm_window_s: int | None = None
    # stream
    response_method: str | None = None
    response_weight: int | None = None  # bps, weighted only
    max_response_ms: int | None = None
    price_per_unit: int | None = None  # wei
    settle_window_s: int | None = None


@dataclass(frozen=True)
class Payment:
    kind: str  # per-checkpoint | per-unit
    council_share_bps: int
    lateness_bps_per_second: int = 0  # batch only


@dataclass(frozen=True)
class Equivalence:
    kind: str
    rtol: float | None = None  # allclose
    atol: float | None = None  # allclose
    top_k: int | None = None  # possible
    top_p: float | None = None  # possible
    margin: float | None = None  # possible (the verifier's default when absent)
    temperature: float | None = None  # possible: > 0, DEFAULT_TEMPERATURE when the document names none


@dataclass(frozen=True)
class Halting:
    bid_window_s: int
    min_bids: int
    first_n: int | None = None


@dataclass(frozen=True)
class Prescription:
    kind: str
    D: Dataset | None
    M: Model
    I: Instructions  # noqa: E741 - the design's name
    f: Payment
    e: Equivalence
    H: Halting | None = field(default=None)

    @classmethod
    def from_json(cls, doc: Any) -> Prescription:
        """From a parsed JSON object, or JSON text/bytes; raises InvalidPrescription."""
        from ogpu_node.types.prescription.parse import parse  # the parser builds these classes

        return parse(doc)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    def canonical_json(self) -> bytes:
        return canonical_json(self)

    def prescription_hash(self) -> bytes:
        return prescription_hash(self)


# --- encoding ------------------------------------------------------------------------------------


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _to_json(p: Prescription) -> dict[str, Any]:
    i = p.I
    instr = _drop_none({
        "max_payment": str(i.max_payment),
        "council_size": i.council_size,
        "hardware": {"min_memory_mib": i.hardware.min_memory_mib, "devices": list(i.hardware.devices)},
        "numeric_profile": i.numeric_profile,
        "steps": i.steps,
        "checkpoints": i.checkpoints,
        "segment_window_s": i.segment_window_s,
        "batch_size": i.batch_size,
        "optimizer": copy.deepcopy(i.optimizer),
        "seed": i.seed,
        "confirm_window_s": i.confirm_window_s,
        "response_method": i.response_method,
        "response_weight": i.response_weight,
        "max_response_ms": i.max_response_ms,
        "price_per_unit": None if i.price_per_unit is None else str(i.price_per_unit),
        "settle_window_s": i.settle_window_s,
    })
    payment: dict[str, Any] = {"kind": p.f.kind, "council_share_bps": p.f.council_share_bps}
    if p.kind == "batch":
        payment["lateness_bps_per_second"] = p.f.lateness_bps_per_second
    doc: dict[str, Any] = {
        "kind": p.kind,
        "M": _drop_none({
            "family": p.M.family,
            "hparams": copy.deepcopy(p.M.hparams),
            "initial_weights": None if p.M.initial_weights is None else _hex(p.M.initial_weights),
        }),
        "I": instr,
        "f": payment,
        "e": _drop_none({"kind": p.e.kind, "rtol": p.e.rtol, "atol": p.e.atol, "top_k": p.e.top_k,
                         "top_p": p.e.top_p, "margin": p.e.margin,
                         # the default is left out, so naming it or not gives one prescription hash
                         "temperature": None if p.e.temperature == DEFAULT_TEMPERATURE else p.e.temperature}),
    }
    if p.D is not None:
        doc["D"] = {"blob": _hex(p.D.blob), "format": p.D.format}
    if p.H is not None:
        doc["H"] = _drop_none({"bid_window_s": p.H.bid_window_s, "min_bids": p.H.min_bids, "first_n": p.H.first_n})
    return doc


def canonical_json(p: Prescription) -> bytes:
    """`to_json()` with sorted keys and no spaces, UTF-8; wei amounts are decimal strings, floats
    Python's shortest round-trip repr. These are the bytes `prescription_hash` hashes."""
    return json.dumps(p.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def prescription_hash(p: Prescription) -> bytes:
    """The blob hash of canonical_json(p): the `prescriptionHash` given to submitTask / submitStream, and
    the name under which the client uploads the document for providers to fetch."""
    return merkle_root(canonical_json(p))
