"""The client's side of stream tasks (ogpu_node/apps/client/streams.py): signed requests whose id the
node recomputes, answers checked before anyone is paid, cumulative receipts that grow across
invocations, and the served weights taken from a batch task's result."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_hash.auto import keccak

from ogpu_node.apps.client import ClientError, NodeError, ReceiptLedger
from ogpu_node.apps.client.streams import (
    build_request,
    check_answer,
    receipt_json,
    request_json,
    served_weights,
    sign_request,
)
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.crypto.signatures import recover_signer
from ogpu_node.types.prescription import Equivalence
from ogpu_node.types.signing import StreamReceipt, StreamRequest, StreamResponse

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CHAIN_ID, GENESIS = 1337, bytes(range(32))
CLIENT, *MEMBERS = derive_dev_accounts(5)


def parsed(params: dict[str, str]) -> tuple[StreamRequest, bytes, bytes]:
    """The request as the node reads `ogpu_streamRequest`'s parameter (hex quantities, 0x-hex bytes)."""
    prompt = bytes.fromhex(params["prompt"][2:])
    request = StreamRequest(
        int(params["taskId"], 16), int(params["termsVersion"], 16), int(params["blockNumber"], 16),
        int(params["seed"], 16), int(params["maxTokens"], 16), keccak(prompt), int(params["nonce"], 16))
    return request, prompt, bytes.fromhex(params["signature"][2:])


# -- requests --


def test_rule_request_id_is_recomputed_by_the_node_and_recovers_the_client():
    request = build_request(7, 2, 41, "héllo".encode(), 32, seed=5)
    request_id, signature = sign_request(CLIENT, request, CHAIN_ID, GENESIS)
    node_request, prompt, node_signature = parsed(request_json(request, "héllo".encode(), signature))
    assert node_request == request and prompt == "héllo".encode()
    assert node_request.request_id(CHAIN_ID, GENESIS) == request_id
    assert recover_signer(request_id, node_signature) == CLIENT.address
    assert request.prompt_hash == keccak("héllo".encode())
    assert (request.task_id, request.terms_version, request.block_number, request.seed, request.max_tokens) == (
        7, 2, 41, 5, 32)


def test_rule_request_id_depends_on_the_chain():
    request = build_request(1, 1, 1, b"x", 1, seed=0, nonce=0)
    assert sign_request(CLIENT, request, CHAIN_ID, GENESIS)[0] != sign_request(CLIENT, request, 1, GENESIS)[0]


def test_rule_nonce_and_seed_are_random_unless_given():
    a, b = build_request(1, 1, 1, b"same", 8), build_request(1, 1, 1, b"same", 8)
    assert a.nonce != b.nonce and a.seed != b.seed  # equal prompts are distinct requests
    assert build_request(1, 1, 1, b"same", 8, seed=9, nonce=3).nonce == 3


@pytest.mark.parametrize("prompt, max_tokens, seed, message", [
    (b"", 8, None, "prompt: must be 1 to 4096 bytes"),
    (b"x" * 4097, 8, None, "prompt: must be 1 to 4096 bytes (UTF-8), got 4097"),
    (b"x", 0, None, "max tokens: must be 1 to 1024, got 0"),
    (b"x", 1025, None, "max tokens: must be 1 to 1024, got 1025"),
    (b"x", 8, 1 << 64, "seed: must be 0 to"),
])
def test_rule_request_bounds_are_the_nodes(prompt, max_tokens, seed, message):
    with pytest.raises(ClientError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_request(1, 1, 1, prompt, max_tokens, seed)


def test_rule_a_prompt_of_exactly_4096_bytes_is_accepted():
    assert build_request(1, 1, 1, b"x" * 4096, 1024).max_tokens == 1024


# -- answers --


def answer_json(request_id: bytes, response: bytes, signers: dict, version: int = 1, **changes) -> dict:
    """An `ogpu_streamRequest` result as the node writes it, the members signing `response` over `version`."""
    h = keccak(response)
    responses = [{"member": "0x" + m.address.hex(), "responseHash": "0x" + h.hex(), "ms": "0x5",
                  "signature": "0x" + m.sign_hash(StreamResponse(3, request_id, v, h).signing_root(
                      CHAIN_ID, GENESIS)).hex()} for m, v in signers.items()]
    doc = {"requestId": "0x" + request_id.hex(), "taskId": "0x3", "status": "answered", "method": "weighted",
           "response": "0x" + response.hex(), "text": response.decode(), "responseHash": "0x" + h.hex(),
           "council": ["0x" + m.address.hex() for m in MEMBERS[:3]],
           "agreed": ["0x" + m.address.hex() for m in signers], "skipped": [], "responses": responses,
           "validated": False, "error": None, "faults": []}
    doc.update(changes)
    return doc


def test_rule_only_members_whose_signature_checks_are_paid():
    rid = keccak(b"request")
    raw = answer_json(rid, b"ok then", {MEMBERS[0]: 1, MEMBERS[1]: 1, MEMBERS[2]: 2})  # the third signed v2
    answer = check_answer(raw, rid, 1, CHAIN_ID, GENESIS)
    assert answer.text == "ok then" and answer.response_hash == keccak(b"ok then")
    assert answer.agreed == tuple(m.address for m in MEMBERS[:3])
    assert answer.verified == (MEMBERS[0].address, MEMBERS[1].address)
    assert check_answer(raw, rid, None, CHAIN_ID, GENESIS).verified == ()  # version unknown: nobody paid


def test_rule_an_answer_that_does_not_hash_or_names_another_request_is_refused():
    rid = keccak(b"request")
    raw = answer_json(rid, b"ok", {MEMBERS[0]: 1})
    with pytest.raises(NodeError, match="does not hash to responseHash"):
        check_answer({**raw, "response": "0x" + b"ko".hex()}, rid, 1, CHAIN_ID, GENESIS)
    with pytest.raises(NodeError, match="another request"):
        check_answer(raw, keccak(b"other"), 1, CHAIN_ID, GENESIS)


def test_rule_receipt_is_signed_by_the_client_over_the_cumulative_units():
    receipt = StreamReceipt(3, MEMBERS[0].address, 120, 2)
    item = receipt_json(CLIENT, receipt, CHAIN_ID, GENESIS)
    assert (int(item["taskId"], 16), item["provider"], int(item["cumulativeUnits"], 16),
            int(item["termsVersion"], 16)) == (3, "0x" + MEMBERS[0].address.hex(), 120, 2)
    signature = bytes.fromhex(item["signature"][2:])
    assert recover_signer(receipt.signing_root(CHAIN_ID, GENESIS), signature) == CLIENT.address


# -- the ledger --


def test_rule_cumulative_units_grow_across_invocations(tmp_path):
    path = tmp_path / "client" / "streams.json"
    a, b = MEMBERS[0].address, MEMBERS[1].address
    first = ReceiptLedger(path)  # one invocation…
    first.record_request("c", b"\x01" * 32, 3, 1)
    assert first.credit("c", b"\x01" * 32, (a, b), 10) == {a: 10, b: 10}
    second = ReceiptLedger(path)  # …and the next, reading the file the first wrote
    second.record_request("c", b"\x02" * 32, 3, 1)
    assert second.credit("c", b"\x02" * 32, (a,), 7) == {a: 17}
    assert second.units("c", 3, 1, a) == 17 and second.units("c", 3, 1, b) == 10
    # A member is credited once per request (a repeated status pays nothing twice)…
    assert second.credit("c", b"\x02" * 32, (a, b), 7) == {a: 17, b: 17}
    assert second.credit("c", b"\x02" * 32, (a, b), 7) == {a: 17, b: 17}
    # …and units are counted per terms version and per chain.
    second.record_request("c", b"\x03" * 32, 3, 2)
    assert second.credit("c", b"\x03" * 32, (a,), 5) == {a: 5}
    second.record_request("d", b"\x01" * 32, 3, 1)
    assert second.credit("d", b"\x01" * 32, (a,), 4) == {a: 4}
    assert json.loads(path.read_bytes())["chains"]["c"]["units"][f"3/1/0x{a.hex()}"] == 17


def test_rule_a_lost_ledger_never_counts_below_what_was_settled(tmp_path):
    ledger = ReceiptLedger(tmp_path / "streams.json")
    ledger.record_request("c", b"\x01" * 32, 3, 1)
    member = MEMBERS[0].address
    assert ledger.credit("c", b"\x01" * 32, (member,), 10, floors={member: 500}) == {member: 510}


def test_rule_a_request_this_client_did_not_send_is_not_credited(tmp_path):
    ledger = ReceiptLedger(tmp_path / "streams.json")
    with pytest.raises(ClientError, match="was not sent by this client"):
        ledger.credit("c", b"\x09" * 32, (MEMBERS[0].address,), 10)
    assert ledger.request("c", b"\x09" * 32) is None


def test_rule_a_ledger_that_is_not_ours_is_one_clear_error(tmp_path):
    path = tmp_path / "streams.json"
    path.write_text("[1, 2]")
    with pytest.raises(ClientError, match="is not one this client wrote"):
        ReceiptLedger(path).units("c", 1, 1, MEMBERS[0].address)


# -- the examples and the served weights --


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A few steps of examples/char-lm-train.json on the corpus examples/make_data.py writes."""
    from ogpu_node.compute import spec_from_prescription, train_segment
    from ogpu_node.compute.prescription import validate
    from ogpu_node.types.merkle import merkle_root

    tmp = tmp_path_factory.mktemp("trained")
    data = tmp / "corpus.txt"
    made = subprocess.run([sys.executable, str(EXAMPLES / "make_data.py"), "text", str(data)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    doc = json.loads((EXAMPLES / "char-lm-train.json").read_text())
    doc["D"]["blob"] = "0x" + merkle_root(data.read_bytes()).hex()
    p = validate(doc)
    result = train_segment(spec_from_prescription(p, data.read_bytes(), seed=1), None, 30)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])  # it learns
    checkpoint = tmp / "final.ckpt"
    checkpoint.write_bytes(result.checkpoint)
    return checkpoint, doc["M"]


def test_rule_a_checkpoint_or_its_extracted_weights_are_served_weights(trained, tmp_path):
    from ogpu_node.apps.client.blobs import file_blob_hash
    from ogpu_node.apps.client.results import extract_weights
    from ogpu_node.compute.tensorfile import load_arrays

    checkpoint, model = trained
    # `task result --out`: the weights alone, served as they are.
    weights = tmp_path / "model.ckpt"
    extract_weights(checkpoint, weights, file_blob_hash(checkpoint))
    assert served_weights(weights, model["family"], model["hparams"], tmp_path) == weights
    # `task result --checkpoint`: the whole checkpoint, reduced to the same weights.
    reduced = served_weights(checkpoint, model["family"], model["hparams"], tmp_path)
    assert reduced != checkpoint
    ours, theirs = load_arrays(reduced), load_arrays(weights)  # (the header's metadata order may differ)
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_rule_weights_of_another_model_are_refused_before_submitting(trained, tmp_path):
    checkpoint, model = trained
    with pytest.raises(ClientError, match="initial_weights: "):
        served_weights(checkpoint, model["family"], {**model["hparams"], "n_embd": 32}, tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(ClientError, match="is not a safetensors file"):
        served_weights(junk, model["family"], model["hparams"], tmp_path)


@pytest.mark.skipif("temperature" not in {f.name for f in dataclasses.fields(Equivalence)},
                    reason="e.temperature lands with the prescription's stream fields (contracts helper)")
def test_stream_example_serves_the_train_examples_model(trained):
    from ogpu_node.compute.prescription import validate

    doc = json.loads((EXAMPLES / "char-lm-stream.json").read_text())
    assert doc["M"] == trained[1]  # the same family and hparams as the model it serves
    doc["M"]["initial_weights"] = "0x" + keccak(b"weights").hex()  # what `stream submit --weights` fills
    p = validate(doc)
    assert (p.kind, p.I.council_size, p.I.response_method, p.I.response_weight) == ("stream", 3, "weighted", 6666)
    assert (p.e.kind, p.e.temperature, p.e.top_p) == ("possible", 0.8, 0.9)


def test_rule_a_malformed_answer_is_one_clear_error():
    rid = keccak(b"request")
    raw = answer_json(rid, b"ok", {MEMBERS[0]: 1})
    with pytest.raises(NodeError, match="taskId is not a hex quantity"):
        check_answer({**raw, "taskId": "seven"}, rid, 1, CHAIN_ID, GENESIS)
    with pytest.raises(NodeError, match="response is not 0x-hex"):
        check_answer({**raw, "response": "0xzz"}, rid, 1, CHAIN_ID, GENESIS)
    with pytest.raises(NodeError, match="not an object"):
        check_answer([raw], rid, 1, CHAIN_ID, GENESIS)
