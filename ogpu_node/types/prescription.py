"""The prescription T = {D, M, I, f(I'), e(r, r'), H} (DESIGN.md §6): types, JSON codec, structural checks.

A prescription is a JSON document stored as a blob; the chain records `prescription_hash(p)` (the blob
hash of its canonical JSON: keys sorted, no spaces, UTF-8, so providers fetch it by that hash) and the terms it enforces (`to_terms` for
`Task.submitTask`, `to_stream_terms` for `Task.submitStream`). This module is pure: it checks shapes,
types and ranges and names the offending field (`InvalidPrescription`, one line:
`prescription.I.council_size: must be at least 1`). Checks that need the computation layer (the model
builds, the numeric profile is known, `possible` truncates) are in `ogpu_node.compute.prescription`;
checks against chain state (qualifying providers, escrow) are `check_against_chain`.
The format is documented in docs/tasks.md, "Prescription format".
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from eth_hash.auto import keccak  # ogpu_node.crypto is a sibling layer: types may not import it

from ogpu_node.types.merkle import merkle_root

# Mirrors of the chain's limits (ogpu_node/contracts/task.py, scheduler.py, stake.py; types/ may not
# import contracts/, a test checks they agree).
MAX_COUNCIL = 100
MAX_CHECKPOINTS = 1_000
MAX_WINDOW = 10 * 365 * 24 * 3600
BPS = 10_000
MAX_UINT256 = 2**256 - 1
DEVICE_KINDS = ("cpu", "cuda", "rocm", "mps")  # bit i of deviceMask = DEVICE_KINDS[i]

KINDS = ("batch", "stream")
DATASET_FORMATS = ("tensors", "text")
OPTIMIZERS = ("adam", "sgd")
OPTIMIZER_FIELDS = ("name", "lr", "momentum", "weight_decay", "betas", "eps", "schedule", "warmup_steps",
                    "total_steps")  # compute.optim.OptimizerSpec's fields; compute checks their values
RESPONSE_METHODS = ("optimistic", "weighted", "unanimous")  # on chain: 0, 1, 2
PAYMENT_KINDS = {"batch": "per-checkpoint", "stream": "per-unit"}
EQUIVALENCE_KINDS = ("exact", "allclose", "tokens", "possible")
BATCH_EQUIVALENCES = ("exact", "allclose")  # tokens/possible compare generated outputs: streams only
EQUIVALENCE_EXACT, EQUIVALENCE_OTHER = 0, 1  # Terms.equivalence: 0 exact (commit first), 1 otherwise

_BLOB_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_WEI_RE = re.compile(r"^[0-9]+$")

TOP_KEYS = ("kind", "D", "M", "I", "f", "e", "H")
BATCH_I = ("steps", "checkpoints", "segment_window_s", "batch_size", "optimizer", "seed", "confirm_window_s")
STREAM_I = ("response_method", "response_weight", "max_response_ms", "price_per_unit", "settle_window_s")
COMMON_I = ("hardware", "numeric_profile", "max_payment", "council_size")


class InvalidPrescription(ValueError):
    """A prescription that cannot be accepted; `field_path` names the field (`prescription.I.steps`)."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")


# --- types ---------------------------------------------------------------------------------------


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
        return parse(doc)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    def canonical_json(self) -> bytes:
        return canonical_json(self)

    def prescription_hash(self) -> bytes:
        return prescription_hash(self)


# --- parsing -------------------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidPrescription("prescription", f"duplicate key {k!r}")
        out[k] = v
    return out


def _obj(value: Any, path: str, allowed: tuple[str, ...], hints: dict[str, str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPrescription(path, "must be a JSON object")
    for key in sorted(value, key=str):
        if key not in allowed:
            hint = (hints or {}).get(key, "unknown key")
            raise InvalidPrescription(f"{path}.{key}", hint)
    return value


def _required(obj: dict[str, Any], path: str, key: str) -> Any:
    if key not in obj or obj[key] is None:
        raise InvalidPrescription(f"{path}.{key}", "required")
    return obj[key]


def _int(value: Any, path: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPrescription(path, f"must be an integer, got {value!r}")
    if value < lo:
        raise InvalidPrescription(path, f"must be at least {lo}")
    if hi is not None and value > hi:
        raise InvalidPrescription(path, f"must be at most {hi}")
    return value


def _wei(value: Any, path: str, lo: int = 1) -> int:
    if isinstance(value, str):
        if not _WEI_RE.match(value):
            raise InvalidPrescription(path, f"must be wei as a decimal string or an integer, got {value!r}")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPrescription(path, f"must be wei as a decimal string or an integer, got {value!r}")
    return _int(value, path, lo, MAX_UINT256)


def _number(value: Any, path: str, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidPrescription(path, f"must be a finite number, got {value!r}")
    if value < lo or (lo_open and value == lo):
        raise InvalidPrescription(path, f"must be {'above' if lo_open else 'at least'} {lo}")
    if hi is not None and value > hi:
        raise InvalidPrescription(path, f"must be at most {hi}")
    return float(value)


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        raise InvalidPrescription(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _blob(value: Any, path: str) -> bytes:
    if not isinstance(value, str) or not _BLOB_RE.match(value):
        raise InvalidPrescription(path, "must be a 32-byte blob hash, 0x and 64 hex digits")
    return bytes.fromhex(value[2:])


def _json_value(value: Any, path: str) -> Any:
    """A deep copy of plain JSON (objects with string keys, lists, strings, finite numbers, bools, null)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidPrescription(path, f"keys must be strings, got {k!r}")
            out[k] = _json_value(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidPrescription(path, "must be a finite number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InvalidPrescription(path, f"must be plain JSON, got {type(value).__name__}")


def _window(obj: dict[str, Any], path: str, key: str) -> int:
    return _int(_required(obj, path, key), f"{path}.{key}", 1, MAX_WINDOW)


def _dataset(value: Any) -> Dataset:
    p = "prescription.D"
    d = _obj(value, p, ("blob", "format"))
    return Dataset(blob=_blob(_required(d, p, "blob"), f"{p}.blob"),
                   format=_choice(_required(d, p, "format"), f"{p}.format", DATASET_FORMATS))


def _model(value: Any) -> Model:
    p = "prescription.M"
    m = _obj(value, p, ("family", "hparams", "initial_weights"))
    family = _required(m, p, "family")
    if not isinstance(family, str) or not family:
        raise InvalidPrescription(f"{p}.family", "must be a non-empty string")
    hparams = m.get("hparams", {})
    if not isinstance(hparams, dict):
        raise InvalidPrescription(f"{p}.hparams", "must be a JSON object")
    weights = m.get("initial_weights")
    return Model(family=family, hparams=_json_value(hparams, f"{p}.hparams"),
                 initial_weights=None if weights is None else _blob(weights, f"{p}.initial_weights"))


def _hardware(value: Any) -> Hardware:
    p = "prescription.I.hardware"
    h = _obj(value, p, ("min_memory_mib", "devices"))
    memory = _int(_required(h, p, "min_memory_mib"), f"{p}.min_memory_mib", 0, 2**64 - 1)
    devices = _required(h, p, "devices")
    if not isinstance(devices, list) or not devices:
        raise InvalidPrescription(f"{p}.devices", f"must be a non-empty list of {', '.join(DEVICE_KINDS)}")
    for i, d in enumerate(devices):
        _choice(d, f"{p}.devices[{i}]", DEVICE_KINDS)
    if len(set(devices)) != len(devices):
        raise InvalidPrescription(f"{p}.devices", "lists a device twice")
    return Hardware(min_memory_mib=memory, devices=tuple(sorted(devices, key=DEVICE_KINDS.index)))


def _optimizer(value: Any) -> dict[str, Any]:
    p = "prescription.I.optimizer"
    o = _obj(value, p, OPTIMIZER_FIELDS)
    _choice(_required(o, p, "name"), f"{p}.name", OPTIMIZERS)
    _number(_required(o, p, "lr"), f"{p}.lr", 0.0, lo_open=True)
    return _json_value(o, p)


def _instructions(value: Any, kind: str) -> Instructions:
    p = "prescription.I"
    own, other = (BATCH_I, STREAM_I) if kind == "batch" else (STREAM_I, BATCH_I)
    hints = {k: f"not a field of a {kind} task" for k in other}
    hints.update({k: "belongs in H, the halting rule" for k in ("bid_window_s", "first_n", "min_bids")})
    i = _obj(value, p, COMMON_I + own, hints)
    common: dict[str, Any] = {
        "hardware": _hardware(_required(i, p, "hardware")),
        "max_payment": _wei(_required(i, p, "max_payment"), f"{p}.max_payment"),
        "council_size": _int(_required(i, p, "council_size"), f"{p}.council_size", 1, MAX_COUNCIL),
    }
    profile = i.get("numeric_profile")
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise InvalidPrescription(f"{p}.numeric_profile", "must be a non-empty string")
    common["numeric_profile"] = profile
    if kind == "batch":
        steps = _int(_required(i, p, "steps"), f"{p}.steps", 1)
        checkpoints = _int(_required(i, p, "checkpoints"), f"{p}.checkpoints", 1, MAX_CHECKPOINTS)
        if checkpoints > steps:
            raise InvalidPrescription(f"{p}.checkpoints", f"{checkpoints} checkpoints exceed the {steps} steps")
        seed = i.get("seed")
        return Instructions(
            **common, steps=steps, checkpoints=checkpoints,
            segment_window_s=_window(i, p, "segment_window_s"),
            batch_size=_int(_required(i, p, "batch_size"), f"{p}.batch_size", 1),
            optimizer=_optimizer(_required(i, p, "optimizer")),
            seed=None if seed is None else _int(seed, f"{p}.seed", 0, 2**64 - 1),
            confirm_window_s=_window(i, p, "confirm_window_s"),
        )
    method = _choice(_required(i, p, "response_method"), f"{p}.response_method", RESPONSE_METHODS)
    weight = i.get("response_weight")
    if method == "weighted":
        weight = _int(_required(i, p, "response_weight"), f"{p}.response_weight", 1, BPS)
    elif weight is not None:
        raise InvalidPrescription(f"{p}.response_weight", "only a weighted response method takes a weight")
    price = _wei(_required(i, p, "price_per_unit"), f"{p}.price_per_unit")
    if price > common["max_payment"]:
        raise InvalidPrescription(f"{p}.price_per_unit", "exceeds max_payment, the stream's budget")
    return Instructions(
        **common, response_method=method, response_weight=weight,
        max_response_ms=_int(_required(i, p, "max_response_ms"), f"{p}.max_response_ms", 1, 2**32 - 1),
        price_per_unit=price, settle_window_s=_window(i, p, "settle_window_s"),
    )


def _payment(value: Any, kind: str) -> Payment:
    p = "prescription.f"
    allowed = ("kind", "council_share_bps", "lateness_bps_per_second") if kind == "batch" else (
        "kind", "council_share_bps")
    f = _obj(value, p, allowed, {"lateness_bps_per_second": "stream payments have no lateness discount"})
    pkind = _choice(_required(f, p, "kind"), f"{p}.kind", tuple(PAYMENT_KINDS.values()))
    if pkind != PAYMENT_KINDS[kind]:
        raise InvalidPrescription(f"{p}.kind", f"a {kind} task is paid {PAYMENT_KINDS[kind]}, not {pkind}")
    return Payment(
        kind=pkind,
        council_share_bps=_int(_required(f, p, "council_share_bps"), f"{p}.council_share_bps", 0, BPS),
        lateness_bps_per_second=_int(f.get("lateness_bps_per_second", 0), f"{p}.lateness_bps_per_second", 0, BPS),
    )


def _equivalence(value: Any, kind: str) -> Equivalence:
    p = "prescription.e"
    params = {"allclose": ("rtol", "atol"), "possible": ("top_k", "top_p", "margin")}
    if not isinstance(value, dict):
        raise InvalidPrescription(p, "must be a JSON object")
    ekind = _choice(_required(value, p, "kind"), f"{p}.kind", EQUIVALENCE_KINDS)
    hints = {k: f"not a parameter of {ekind}" for ks in params.values() for k in ks}
    e = _obj(value, p, ("kind", *params.get(ekind, ())), hints)
    if kind == "batch" and ekind not in BATCH_EQUIVALENCES:
        raise InvalidPrescription(f"{p}.kind", f"a batch task compares checkpoints: one of {', '.join(BATCH_EQUIVALENCES)}")
    if ekind == "allclose":
        return Equivalence(kind=ekind, rtol=_number(_required(e, p, "rtol"), f"{p}.rtol", 0.0),
                           atol=_number(_required(e, p, "atol"), f"{p}.atol", 0.0))
    if ekind == "possible":
        top_k, top_p, margin = e.get("top_k"), e.get("top_p"), e.get("margin")
        return Equivalence(
            kind=ekind,
            top_k=None if top_k is None else _int(top_k, f"{p}.top_k", 1),
            top_p=None if top_p is None else _number(top_p, f"{p}.top_p", 0.0, 1.0, lo_open=True),
            margin=None if margin is None else _number(margin, f"{p}.margin", 0.0),
        )
    return Equivalence(kind=ekind)


def _halting(value: Any) -> Halting:
    p = "prescription.H"
    h = _obj(value, p, ("bid_window_s", "min_bids", "first_n"))
    min_bids = _int(_required(h, p, "min_bids"), f"{p}.min_bids", 1, 2**32 - 1)
    first_n = h.get("first_n")
    if first_n is not None:
        first_n = _int(first_n, f"{p}.first_n", 1, 2**32 - 1)
        if first_n < min_bids:
            raise InvalidPrescription(f"{p}.first_n", f"must be at least min_bids ({min_bids})")
    return Halting(bid_window_s=_window(h, p, "bid_window_s"), min_bids=min_bids, first_n=first_n)


def parse(doc: Any) -> Prescription:
    if isinstance(doc, bytes | bytearray):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPrescription("prescription", "not UTF-8") from None
    if isinstance(doc, str):
        try:
            doc = json.loads(doc, object_pairs_hook=_reject_duplicates)
        except ValueError as exc:
            if isinstance(exc, InvalidPrescription):
                raise
            raise InvalidPrescription("prescription", f"not valid JSON ({exc})") from None
    top = _obj(doc, "prescription", TOP_KEYS)
    kind = _choice(_required(top, "prescription", "kind"), "prescription.kind", KINDS)
    if top.get("D") is None:
        if kind == "batch":
            raise InvalidPrescription("prescription.D", "required: a batch task needs a dataset")
        dataset = None
    else:
        dataset = _dataset(top["D"])
    model = _model(_required(top, "prescription", "M"))
    instructions = _instructions(_required(top, "prescription", "I"), kind)
    payment = _payment(_required(top, "prescription", "f"), kind)
    equivalence = _equivalence(_required(top, "prescription", "e"), kind)
    if kind == "batch":
        halting: Halting | None = _halting(_required(top, "prescription", "H"))
    elif top.get("H") is not None:
        raise InvalidPrescription("prescription.H", "a stream task has no halting rule (providers subscribe)")
    else:
        halting = None
    if equivalence.kind == "exact" and instructions.numeric_profile is None:
        raise InvalidPrescription("prescription.I.numeric_profile", "required when e.kind is exact")
    return Prescription(kind=kind, D=dataset, M=model, I=instructions, f=payment, e=equivalence, H=halting)


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
                         "top_p": p.e.top_p, "margin": p.e.margin}),
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


def training_seed(p: Prescription, assignment_seed: bytes) -> int:
    """The trainer's seed: the chain's assignment seed (fixed when bidding closed, so nobody could
    train ahead or reuse another task's weights) mixed with the client's optional `I.seed`."""
    return int.from_bytes(keccak(assignment_seed + (p.I.seed or 0).to_bytes(8, "big")), "big")


# --- terms ---------------------------------------------------------------------------------------


def to_terms(p: Prescription) -> tuple[int, ...]:
    """Task.submitTask's Terms, in order: maxPayment, councilSize, councilShareBps, checkpoints,
    segmentWindow, bidWindow, firstN, minBids, latenessBpsPerSecond, confirmWindow, responseMethod,
    responseWeight, equivalence, minMemoryMiB, deviceMask."""
    if p.kind != "batch" or p.H is None:
        raise InvalidPrescription("prescription.kind", "Task.submitTask takes a batch task; use to_stream_terms")
    i = p.I
    assert i.checkpoints is not None and i.segment_window_s is not None and i.confirm_window_s is not None
    return (
        i.max_payment, i.council_size, p.f.council_share_bps, i.checkpoints, i.segment_window_s,
        p.H.bid_window_s, p.H.first_n or 0, p.H.min_bids, p.f.lateness_bps_per_second, i.confirm_window_s,
        0, 0,  # response method and weight: stream terms
        EQUIVALENCE_EXACT if p.e.kind == "exact" else EQUIVALENCE_OTHER,
        i.hardware.min_memory_mib, i.hardware.device_mask,
    )


def to_stream_terms(p: Prescription) -> tuple[int, ...]:
    """Task.submitStream's StreamTerms, in order: budget, councilSize, pricePerUnit, responseMethod,
    responseWeight, maxResponseTime (ms), settleWindow, minMemoryMiB, deviceMask."""
    if p.kind != "stream":
        raise InvalidPrescription("prescription.kind", "Task.submitStream takes a stream task; use to_terms")
    i = p.I
    assert i.response_method is not None and i.price_per_unit is not None
    assert i.max_response_ms is not None and i.settle_window_s is not None
    return (
        i.max_payment, i.council_size, i.price_per_unit, RESPONSE_METHODS.index(i.response_method),
        i.response_weight or 0, i.max_response_ms, i.settle_window_s, i.hardware.min_memory_mib,
        i.hardware.device_mask,
    )


def check_against_chain(p: Prescription, qualifying_providers: int, escrow_wei: int) -> None:
    """What only the chain knows, checked by the client app before it submits: enough providers whose
    registered resources meet the terms to seat the council, and escrow to cover max_payment."""
    if p.I.council_size > qualifying_providers:
        raise InvalidPrescription(
            "prescription.I.council_size",
            f"{p.I.council_size} exceeds the {qualifying_providers} providers whose resources qualify",
        )
    if p.I.max_payment > escrow_wei:
        raise InvalidPrescription(
            "prescription.I.max_payment", f"{p.I.max_payment} wei exceeds the escrow of {escrow_wei} wei"
        )


# --- segments ------------------------------------------------------------------------------------


def segment_bounds(p: Prescription, k: int) -> tuple[int, int]:
    """Global steps (first, last) of segment k: checkpoint k is the state after step ⌊steps·k/K⌋."""
    steps, checkpoints = p.I.steps, p.I.checkpoints
    assert steps is not None and checkpoints is not None, "a batch prescription"
    if not 1 <= k <= checkpoints:
        raise ValueError(f"checkpoint {k} is outside 1..{checkpoints}")
    return steps * (k - 1) // checkpoints, steps * k // checkpoints


def drawn_step(p: Prescription, k: int, step_index: int) -> int:
    """The step inside segment k whose state hash council members commit under `exact`, from the
    council's `stepIndex`: one of first+1 … last (the start state is public, the end is the result)."""
    first, last = segment_bounds(p, k)
    return first + 1 + step_index % (last - first)
