"""Parsing and structural checks of a prescription: JSON in, a `Prescription` out or one
`InvalidPrescription` naming the offending field (`prescription.I.council_size: must be at least 1`).

Text is bounded before it is parsed (size, and bracket nesting by a cheap scan: see ogpu_node/jsontext.py
for why json.loads cannot be trusted with deep input), and free-form values (`M.hparams`,
`I.optimizer`) are bounded in depth when they are copied, so a parsed document can always be encoded
again (`canonical_json`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ogpu_node.jsontext import nesting_exceeds
from ogpu_node.types.prescription.schema import (
    BATCH_I,
    COMMON_I,
    DATASET_FORMATS,
    DEFAULT_TEMPERATURE,
    KINDS,
    OPTIMIZER_FIELDS,
    OPTIMIZERS,
    PAYMENT_KINDS,
    STREAM_I,
    TOP_KEYS,
    Dataset,
    Equivalence,
    Halting,
    Hardware,
    Instructions,
    InvalidPrescription,
    Model,
    Payment,
    Prescription,
)
from ogpu_node.types.protocol import (
    BATCH_EQUIVALENCES,
    BPS,
    DEVICE_KINDS,
    EQUIVALENCE_KINDS,
    MAX_CHECKPOINTS,
    MAX_COUNCIL,
    MAX_UINT256,
    MAX_WINDOW,
    RESPONSE_METHODS,
)

MAX_PRESCRIPTION_BYTES = 1 << 20  # a prescription is a few hundred bytes; hparams leave room to spare
MAX_NESTING = 64  # JSON levels, counting the document itself; a real one nests five or six

_BLOB_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_WEI_RE = re.compile(r"^[0-9]+$")
_WEI_DIGITS = len(str(MAX_UINT256))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidPrescription("prescription", f"duplicate key {k!r:.60}")
        out[k] = v
    return out


def _obj(value: Any, path: str, allowed: tuple[str, ...], hints: dict[str, str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPrescription(path, "must be a JSON object")
    for key in sorted(value, key=str):
        if key not in allowed:
            hint = (hints or {}).get(key, "unknown key")
            raise InvalidPrescription(f"{path}.{str(key):.60}", hint)  # someone else's key: shown short
    return value


def _required(obj: dict[str, Any], path: str, key: str) -> Any:
    if key not in obj or obj[key] is None:
        raise InvalidPrescription(f"{path}.{key}", "required")
    return obj[key]


def _int(value: Any, path: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPrescription(path, f"must be an integer, got {value!r:.60}")
    if value < lo:
        raise InvalidPrescription(path, f"must be at least {lo}")
    if hi is not None and value > hi:
        raise InvalidPrescription(path, f"must be at most {hi}")
    return value


def _wei(value: Any, path: str, lo: int = 1) -> int:
    if isinstance(value, str):
        if len(value) > _WEI_DIGITS:  # before int(): Python refuses to convert over 4300 digits
            raise InvalidPrescription(path, f"must be at most {MAX_UINT256}")
        if not _WEI_RE.match(value):
            raise InvalidPrescription(path, f"must be wei as a decimal string or an integer, got {value!r:.60}")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPrescription(path, f"must be wei as a decimal string or an integer, got {value!r:.60}")
    return _int(value, path, lo, MAX_UINT256)


def _number(value: Any, path: str, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidPrescription(path, f"must be a finite number, got {value!r:.60}")
    if value < lo or (lo_open and value == lo):
        raise InvalidPrescription(path, f"must be {'above' if lo_open else 'at least'} {lo}")
    if hi is not None and value > hi:
        raise InvalidPrescription(path, f"must be at most {hi}")
    return float(value)


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        raise InvalidPrescription(path, f"must be one of {', '.join(choices)}, got {value!r:.60}")
    return value


def _blob(value: Any, path: str) -> bytes:
    if not isinstance(value, str) or not _BLOB_RE.match(value):
        raise InvalidPrescription(path, "must be a 32-byte blob hash, 0x and 64 hex digits")
    return bytes.fromhex(value[2:])


def _json_value(value: Any, path: str, depth: int) -> Any:
    """A deep copy of plain JSON (objects with string keys, lists, strings, finite numbers, bools, null);
    `depth` is the value's level in the document (the document itself is level 1)."""
    if isinstance(value, dict | list | tuple) and depth > MAX_NESTING:
        raise InvalidPrescription(path, f"nests deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidPrescription(path, f"keys must be strings, got {k!r:.60}")
            out[k] = _json_value(v, f"{path}.{k}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
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
    return Model(family=family, hparams=_json_value(hparams, f"{p}.hparams", 3),
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
    return _json_value(o, p, 3)


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
        steps = _int(_required(i, p, "steps"), f"{p}.steps", 1, 2**64 - 1)  # bounded: estimates multiply it
        checkpoints = _int(_required(i, p, "checkpoints"), f"{p}.checkpoints", 1, MAX_CHECKPOINTS)
        if checkpoints > steps:
            raise InvalidPrescription(f"{p}.checkpoints", f"{checkpoints} checkpoints exceed the {steps} steps")
        seed = i.get("seed")
        return Instructions(
            **common, steps=steps, checkpoints=checkpoints,
            segment_window_s=_window(i, p, "segment_window_s"),
            batch_size=_int(_required(i, p, "batch_size"), f"{p}.batch_size", 1, 2**32 - 1),
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
    params = {"allclose": ("rtol", "atol"), "possible": ("temperature", "top_k", "top_p", "margin")}
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
            temperature=_number(e.get("temperature", DEFAULT_TEMPERATURE), f"{p}.temperature", 0.0, lo_open=True),
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


def _load(text: str | bytes | bytearray) -> Any:
    """JSON text → plain objects, bounded in size and nesting before json.loads sees it."""
    if len(text) > MAX_PRESCRIPTION_BYTES:  # a str's characters are at most its UTF-8 bytes
        raise InvalidPrescription("prescription", f"larger than {MAX_PRESCRIPTION_BYTES} bytes")
    if isinstance(text, bytes | bytearray):
        data = bytes(text)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPrescription("prescription", "not UTF-8") from None
    else:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > MAX_PRESCRIPTION_BYTES:
            raise InvalidPrescription("prescription", f"larger than {MAX_PRESCRIPTION_BYTES} bytes")
    if nesting_exceeds(data, MAX_NESTING):
        raise InvalidPrescription("prescription", f"nests deeper than {MAX_NESTING} levels")
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        if isinstance(exc, InvalidPrescription):
            raise
        raise InvalidPrescription("prescription", f"not valid JSON ({exc})") from None


def parse(doc: Any) -> Prescription:
    """A prescription from a parsed JSON object, or JSON text/bytes; raises InvalidPrescription."""
    if isinstance(doc, str | bytes | bytearray):
        doc = _load(doc)
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
