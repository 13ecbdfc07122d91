from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_hash.auto import keccak

from ogpu_node.contracts.streams import STREAM_TERMS
from ogpu_node.contracts.task import TERMS, Terms
from ogpu_node.types import prescription as pm
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import (
    DEFAULT_TEMPERATURE,
    InvalidPrescription,
    Prescription,
    check_against_chain,
    prescription_hash,
    terms_record,
    to_stream_terms,
    to_terms,
)
from ogpu_node.types.protocol import NO_PROFILE, profile_id
from ogpu_node.types.records import TermsRecord, as_tuple
from tests.malformed_documents import edit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BLOB = "0x" + "ab" * 32

BATCH = {
    "kind": "batch",
    "D": {"blob": BLOB, "format": "tensors"},
    "M": {"family": "mlp", "hparams": {"in_dim": 4, "out_dim": 2}},
    "I": {
        "steps": 100, "checkpoints": 4, "segment_window_s": 60, "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.001}, "seed": 1,
        "hardware": {"min_memory_mib": 1024, "devices": ["cpu", "cuda"]},
        "numeric_profile": "cpu-avx2-1t", "max_payment": "1000", "council_size": 3,
        "confirm_window_s": 3600,
    },
    "f": {"kind": "per-checkpoint", "council_share_bps": 1000, "lateness_bps_per_second": 5},
    "e": {"kind": "exact"},
    "H": {"bid_window_s": 120, "first_n": 4, "min_bids": 2},
}

STREAM = {
    "kind": "stream",
    "M": {"family": "char-transformer", "hparams": {}, "initial_weights": BLOB},
    "I": {
        "hardware": {"min_memory_mib": 0, "devices": ["mps", "rocm"]}, "max_payment": 10**18,
        "council_size": 5, "response_method": "weighted", "response_weight": 6000,
        "max_response_ms": 2000, "price_per_unit": "1000", "settle_window_s": 600,
    },
    "f": {"kind": "per-unit", "council_share_bps": 0},
    "e": {"kind": "possible", "top_k": 40, "top_p": 0.9, "margin": 0.001},
}


def error(doc) -> InvalidPrescription:
    with pytest.raises(InvalidPrescription) as info:
        Prescription.from_json(doc)
    assert "\n" not in str(info.value)
    assert str(info.value) == f"{info.value.field_path}: {info.value.message}"
    return info.value


def test_batch_parses_and_normalises():
    p = Prescription.from_json(BATCH)
    assert p.I.max_payment == 1000 and p.D.blob == bytes.fromhex("ab" * 32)
    assert p.H.first_n == 4 and p.I.hardware.devices == ("cpu", "cuda")


@pytest.mark.parametrize("doc", [BATCH, STREAM])
def test_json_round_trip(doc):
    p = Prescription.from_json(doc)
    again = Prescription.from_json(p.to_json())
    assert again == p and again.to_json() == p.to_json()
    assert Prescription.from_json(json.dumps(doc)) == p
    assert Prescription.from_json(json.dumps(doc).encode()) == p


def test_hash_is_the_blob_hash_of_canonical_json():
    p = Prescription.from_json(BATCH)
    canonical = json.dumps(p.to_json(), sort_keys=True, separators=(",", ":")).encode()
    assert p.canonical_json() == canonical and b" " not in canonical
    assert prescription_hash(p) == p.prescription_hash() == merkle_root(canonical)
    # key order and int-vs-string wei do not change the hash; content does
    reordered = dict(reversed(list(edit(BATCH, "I.max_payment", 1000).items())))
    assert Prescription.from_json(reordered).prescription_hash() == p.prescription_hash()
    assert Prescription.from_json(edit(BATCH, "I.seed", 2)).prescription_hash() != p.prescription_hash()


def test_to_terms_matches_the_contract():
    terms = to_terms(Prescription.from_json(BATCH))
    assert len(terms) == len(TERMS) == 16
    t = Terms(*terms)
    t.validate()
    assert (t.max_payment, t.council_size, t.council_share_bps, t.checkpoints, t.segment_window) == (1000, 3, 1000, 4, 60)
    assert (t.bid_window, t.first_n, t.min_bids, t.lateness_bps_per_second, t.confirm_window) == (120, 4, 2, 5, 3600)
    assert (t.response_method, t.response_weight, t.equivalence, t.min_memory_mib, t.device_mask) == (0, 0, 0, 1024, 0b11)
    assert t.numeric_profile == keccak(b"cpu-avx2-1t") == profile_id("cpu-avx2-1t")
    allclose = edit(edit(BATCH, "e", {"kind": "allclose", "rtol": 1e-3, "atol": 0}), "H.first_n", delete=True)
    t2 = Terms(*to_terms(Prescription.from_json(allclose)))
    assert t2.equivalence == 1 and t2.first_n == 0
    t3 = Terms(*to_terms(Prescription.from_json(edit(allclose, "I.numeric_profile", delete=True))))
    assert t3.numeric_profile == NO_PROFILE  # no profile named: any provider
    with pytest.raises(InvalidPrescription, match=r"^prescription.kind: "):
        to_stream_terms(Prescription.from_json(BATCH))


def test_terms_record_names_each_term():
    record = terms_record(Prescription.from_json(BATCH))
    assert isinstance(record, TermsRecord)
    assert as_tuple(record) == to_terms(Prescription.from_json(BATCH))
    assert (record.max_payment, record.council_size, record.council_share_bps, record.checkpoints) == (1000, 3, 1000, 4)
    assert (record.segment_window, record.bid_window, record.first_n, record.min_bids) == (60, 120, 4, 2)
    assert (record.lateness_bps_per_second, record.confirm_window, record.response_method) == (5, 3600, 0)
    assert (record.response_weight, record.equivalence, record.min_memory_mib, record.device_mask) == (0, 0, 1024, 0b11)
    assert record.numeric_profile == profile_id("cpu-avx2-1t")


def test_to_stream_terms():
    p = Prescription.from_json(STREAM)
    terms = to_stream_terms(p)
    assert len(terms) == len(STREAM_TERMS)
    assert dict(zip(STREAM_TERMS, terms, strict=True)) == {
        "budget": 10**18, "council_size": 5, "price_per_unit": 1000, "response_method": 1,
        "response_weight": 6000, "max_response_time": 2000, "settle_window": 600, "min_memory_mib": 0,
        "device_mask": 0b1100, "numeric_profile": NO_PROFILE,
    }
    named = to_stream_terms(Prescription.from_json(edit(STREAM, "I.numeric_profile", "cuda-sm90")))
    assert dict(zip(STREAM_TERMS, named, strict=True))["numeric_profile"] == keccak(b"cuda-sm90")
    with pytest.raises(InvalidPrescription, match=r"^prescription.kind: "):
        to_terms(p)


@pytest.mark.parametrize(
    ("doc", "where", "words"),
    [
        (edit(BATCH, "D", delete=True), "prescription.D", "required"),
        (edit(BATCH, "D.blob", "0x1234"), "prescription.D.blob", "32-byte"),
        (edit(BATCH, "D.format", "csv"), "prescription.D.format", "one of"),
        (edit(BATCH, "I.council_size", 0), "prescription.I.council_size", "must be at least 1"),
        (edit(BATCH, "I.council_size", 101), "prescription.I.council_size", "at most 100"),
        (edit(BATCH, "I.checkpoints", 101), "prescription.I.checkpoints", "exceed the 100 steps"),
        (edit(BATCH, "I.max_payment", "-5"), "prescription.I.max_payment", "decimal string"),
        (edit(BATCH, "I.max_payment", 0), "prescription.I.max_payment", "at least 1"),
        (edit(BATCH, "I.max_payment", 1.5), "prescription.I.max_payment", "decimal string"),
        (edit(BATCH, "f.council_share_bps", 10_001), "prescription.f.council_share_bps", "at most 10000"),
        (edit(BATCH, "f.council_share_bps", -1), "prescription.f.council_share_bps", "at least 0"),
        (edit(BATCH, "f.lateness_bps_per_second", 10_001), "prescription.f.lateness_bps_per_second", "at most"),
        (edit(BATCH, "f.kind", "per-unit"), "prescription.f.kind", "per-checkpoint"),
        (edit(BATCH, "I.numeric_profile", delete=True), "prescription.I.numeric_profile", "exact"),
        (edit(BATCH, "surprise", 1), "prescription.surprise", "unknown key"),
        (edit(BATCH, "I.hardware.gpus", 1), "prescription.I.hardware.gpus", "unknown key"),
        (edit(BATCH, "I.optimizer.nesterov", True), "prescription.I.optimizer.nesterov", "unknown key"),
        (edit(BATCH, "I.optimizer.name", "lion"), "prescription.I.optimizer.name", "adam, sgd"),
        (edit(BATCH, "I.optimizer.lr", 0), "prescription.I.optimizer.lr", "above 0"),
        (edit(BATCH, "I.bid_window_s", 5), "prescription.I.bid_window_s", "belongs in H"),
        (edit(BATCH, "I.price_per_unit", 5), "prescription.I.price_per_unit", "not a field of a batch task"),
        (edit(BATCH, "I.steps", True), "prescription.I.steps", "integer"),
        (edit(BATCH, "I.segment_window_s", 0), "prescription.I.segment_window_s", "at least 1"),
        (edit(BATCH, "I.confirm_window_s", 10 * 365 * 24 * 3600 + 1), "prescription.I.confirm_window_s", "at most"),
        (edit(BATCH, "I.hardware.devices", []), "prescription.I.hardware.devices", "non-empty"),
        (edit(BATCH, "I.hardware.devices", ["cpu", "tpu"]), "prescription.I.hardware.devices[1]", "one of"),
        (edit(BATCH, "I.hardware.devices", ["cpu", "cpu"]), "prescription.I.hardware.devices", "twice"),
        (edit(BATCH, "e", {"kind": "tokens"}), "prescription.e.kind", "batch task"),
        (edit(BATCH, "e", {"kind": "allclose", "rtol": -1, "atol": 0}), "prescription.e.rtol", "at least 0"),
        (edit(BATCH, "e", {"kind": "allclose", "rtol": 0.1}), "prescription.e.atol", "required"),
        (edit(BATCH, "e.top_k", 5), "prescription.e.top_k", "not a parameter of exact"),
        (edit(BATCH, "H", delete=True), "prescription.H", "required"),
        (edit(BATCH, "H.first_n", 1), "prescription.H.first_n", "min_bids"),
        (edit(BATCH, "H.min_bids", 0), "prescription.H.min_bids", "at least 1"),
        (edit(BATCH, "M.initial_weights", "ab" * 32), "prescription.M.initial_weights", "0x"),
        (edit(BATCH, "M.hparams", [1]), "prescription.M.hparams", "JSON object"),
        (edit(BATCH, "kind", "oneshot"), "prescription.kind", "batch, stream"),
        (edit(STREAM, "H", {"bid_window_s": 1, "min_bids": 1}), "prescription.H", "stream"),
        (edit(STREAM, "I.steps", 10), "prescription.I.steps", "not a field of a stream task"),
        (edit(STREAM, "I.response_weight", delete=True), "prescription.I.response_weight", "required"),
        (edit(STREAM, "I.response_method", "optimistic"), "prescription.I.response_weight", "weighted"),
        (edit(STREAM, "I.price_per_unit", 10**19), "prescription.I.price_per_unit", "budget"),
        (edit(STREAM, "f.lateness_bps_per_second", 1), "prescription.f.lateness_bps_per_second", "stream"),
        (edit(STREAM, "e.top_p", 1.5), "prescription.e.top_p", "at most 1.0"),
        (edit(STREAM, "e.top_p", float("nan")), "prescription.e.top_p", "finite"),
        (edit(STREAM, "e.temperature", 0), "prescription.e.temperature", "above 0.0"),
        (edit(STREAM, "e.temperature", -0.5), "prescription.e.temperature", "above 0.0"),
        (edit(STREAM, "e.temperature", "hot"), "prescription.e.temperature", "finite number"),
        (edit(STREAM, "e", {"kind": "tokens", "temperature": 0.5}), "prescription.e.temperature",
         "not a parameter of tokens"),
        (edit(BATCH, "e.temperature", 0.5), "prescription.e.temperature", "not a parameter of exact"),
        (edit(BATCH, "e", {"kind": "possible", "top_k": 5}), "prescription.e.kind", "batch task"),
        ([], "prescription", "JSON object"),
        ("{not json", "prescription", "not valid JSON"),
        ('{"kind": "batch", "kind": "stream"}', "prescription", "duplicate key"),
    ],
)
def test_errors_name_the_field(doc, where, words):
    err = error(doc)
    assert err.field_path == where, str(err)
    assert words in err.message, str(err)


def test_council_size_message_matches_design():
    assert str(error(edit(BATCH, "I.council_size", 0))) == "prescription.I.council_size: must be at least 1"


def test_optional_fields_may_be_absent():
    doc = edit(edit(edit(BATCH, "I.seed", delete=True), "H.first_n", delete=True), "f.lateness_bps_per_second",
               delete=True)
    p = Prescription.from_json(doc)
    assert p.I.seed is None and p.H.first_n is None and p.f.lateness_bps_per_second == 0
    stream = edit(edit(STREAM, "I.response_method", "unanimous"), "I.response_weight", delete=True)
    assert to_stream_terms(Prescription.from_json(stream))[3:5] == (2, 0)


def test_possible_temperature_defaults_to_one_and_the_default_is_left_out_of_the_document():
    """`possible` samples at e.temperature (> 0, 1.0 when absent); naming 1.0 or nothing is one
    prescription (one hash), another temperature another; other kinds have none."""
    default = Prescription.from_json(STREAM)
    assert default.e.temperature == DEFAULT_TEMPERATURE == 1.0
    assert "temperature" not in default.to_json()["e"]
    named_one = Prescription.from_json(edit(STREAM, "e.temperature", 1))
    assert named_one == default and named_one.prescription_hash() == default.prescription_hash()
    warm = Prescription.from_json(edit(STREAM, "e.temperature", 0.8))
    assert warm.e.temperature == 0.8 and warm.to_json()["e"]["temperature"] == 0.8
    assert Prescription.from_json(warm.to_json()) == warm
    assert warm.prescription_hash() != default.prescription_hash()
    assert Prescription.from_json(edit(STREAM, "e", {"kind": "tokens"})).e.temperature is None
    assert Prescription.from_json(BATCH).e.temperature is None


def test_check_against_chain():
    p = Prescription.from_json(BATCH)
    check_against_chain(p, qualifying_providers=3, escrow_wei=1000)
    with pytest.raises(InvalidPrescription, match=r"^prescription.I.council_size: 3 exceeds the 2 providers"):
        check_against_chain(p, qualifying_providers=2, escrow_wei=1000)
    with pytest.raises(InvalidPrescription, match=r"^prescription.I.max_payment: 1000 wei exceeds"):
        check_against_chain(p, qualifying_providers=10, escrow_wei=999)


@pytest.mark.parametrize("name", ["mlp-exact.json", "char-transformer-allclose.json"])
def test_examples_parse(name):
    p = Prescription.from_json((EXAMPLES / name).read_text())
    Terms(*to_terms(p)).validate()


def test_the_stream_example_parses():
    p = Prescription.from_json((EXAMPLES / "char-lm-stream.json").read_text())
    assert (p.e.kind, p.e.temperature, p.e.top_p) == ("possible", 0.8, 0.9)
    assert len(to_stream_terms(p)) == len(STREAM_TERMS)


def test_frozen():
    p = Prescription.from_json(BATCH)
    with pytest.raises(AttributeError):
        p.kind = "stream"  # type: ignore[misc]


# --- bounds on the input -------------------------------------------------------------------------


def test_deeply_nested_json_is_refused_before_parsing():
    # py-evm raises the recursion limit to 100000, so json.loads of this would overflow the C stack and
    # kill the process: run it in a child under that limit, where a crash is a return code, not a lost run.
    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from ogpu_node.types.prescription import InvalidPrescription, Prescription\n"
        "doc = '{\"kind\": ' + '[' * 100_000 + ']' * 100_000 + '}'\n"
        "for text in (doc, doc.encode()):\n"
        "    try:\n"
        "        Prescription.from_json(text)\n"
        "    except InvalidPrescription as exc:\n"
        "        print(exc)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["prescription: nests deeper than 64 levels"] * 2


def test_nesting_inside_strings_does_not_count():
    doc = edit(BATCH, "M.hparams", {"note": "[" * 1000 + "{" * 1000})
    assert Prescription.from_json(json.dumps(doc)).M.hparams["note"] == "[" * 1000 + "{" * 1000


def test_free_form_values_are_bounded_in_depth():
    # hparams are level 3 (document, M, hparams): 61 more levels are allowed, as in JSON text.
    deepest, too_deep = {}, {}
    for _ in range(61):
        deepest = {"x": deepest}
    for _ in range(62):
        too_deep = {"x": too_deep}
    assert Prescription.from_json(edit(BATCH, "M.hparams", deepest)).M.hparams == deepest
    assert Prescription.from_json(json.dumps(edit(BATCH, "M.hparams", deepest))).M.hparams == deepest
    for doc in (edit(BATCH, "M.hparams", too_deep), json.dumps(edit(BATCH, "M.hparams", too_deep))):
        with pytest.raises(InvalidPrescription, match=r"nests deeper than 64 levels$"):
            Prescription.from_json(doc)


def test_oversized_text_is_refused_before_parsing():
    big = json.dumps(edit(BATCH, "M.hparams", {"pad": "x" * pm.MAX_PRESCRIPTION_BYTES}))
    for doc in (big, big.encode()):
        with pytest.raises(InvalidPrescription, match=rf"^prescription: larger than {pm.MAX_PRESCRIPTION_BYTES} bytes$"):
            Prescription.from_json(doc)
    multibyte = "é" * (pm.MAX_PRESCRIPTION_BYTES // 2 + 1)  # fewer characters than the bound, more bytes
    with pytest.raises(InvalidPrescription, match="larger than"):
        Prescription.from_json(json.dumps(edit(BATCH, "M.hparams", {"pad": multibyte}), ensure_ascii=False))
