"""`ogpu-node stream …` (the client's side of stream tasks) as a user runs it: arguments refused with one
line before any key or network is touched; against a real `ogpu-node run --dev` with no providers, a
stream opened with its served weights (budget + the chain's minimum deposit escrowed), requests the node
refuses with its rule (Forming, not the client's signature), a new terms version, a retraction; and with
three scripted members (no model: tests/integration/test_stream_router.py's workers), answers and the
cumulative receipts that pay the members that agreed."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
from pathlib import Path

import pytest
from e2e.cli_run import ROOT, assert_one_line_error, cli
from web3 import Web3

from ogpu_node.config import DEV_GENESIS
from ogpu_node.types.prescription import Equivalence

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
OTHER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # dev account 1
EXAMPLE = ROOT / "examples" / "char-lm-stream.json"
TASK = Web3.to_checksum_address("0x0000000000000000000000000000000000001001")
CLIENT_DEPOSIT_BPS = json.loads(DEV_GENESIS.read_text())["config"]["ogpu"]["clientDepositBps"]
TASK_ID = re.compile(r"^Task ID: (\d+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prescription(tmp_path: Path) -> Path:
    doc = json.loads(EXAMPLE.read_text())
    if "temperature" not in {f.name for f in dataclasses.fields(Equivalence)}:
        doc["e"].pop("temperature")  # until the parser takes e.temperature (the prescription's stream fields)
    path = tmp_path / "stream.json"
    path.write_text(json.dumps(doc))
    return path


def weights_file(tmp_path: Path) -> Path:
    """Freshly initialised weights of the example's model, as `task result --out` writes them."""
    from ogpu_node.compute.models import build_model
    from ogpu_node.compute.tensorfile import save_arrays

    model = json.loads(EXAMPLE.read_text())["M"]
    state = build_model(model["family"], model["hparams"]).state_dict()
    path = tmp_path / "model.safetensors"
    save_arrays(path, {name: t.detach().numpy() for name, t in state.items()})
    return path


@pytest.mark.parametrize("args, message", [
    (["request", "abc", "hi"], "task id: expected a positive integer, got 'abc'"),
    (["request", "0", "hi"], "task id: expected a positive integer, got '0'"),
    (["request", "1", ""], "prompt: empty"),
    (["request", "1", "x" * 4097], "prompt: longer than 4096 bytes"),
    (["request", "1", "é" * 2049], "prompt: longer than 4096 bytes"),  # bytes, not characters
    (["request", "1", "hi", "--max-tokens", "0"], "--max-tokens: must be 1 to 1024, got 0"),
    (["request", "1", "hi", "--max-tokens", "1025"], "--max-tokens: must be 1 to 1024, got 1025"),
    (["status", "0x12"], "request id: expected 0x and 64 hex digits"),
    (["retract", "1.5"], "task id: expected a positive integer, got '1.5'"),
    (["update-terms", "1"], "give at least one of --price, --method, --weight"),
])
def test_bad_arguments_are_one_line_before_any_network_access(args, message):
    # The node's port is closed: each error comes before the client tries it.
    result = cli("stream", *args, "--rpc-url", f"http://127.0.0.1:{free_port()}", "--private-key", DEV_KEY)
    assert_one_line_error(result, message)


def test_a_batch_prescription_is_refused_by_stream_submit(tmp_path):
    result = cli("stream", "submit", ROOT / "examples" / "char-lm-train.json", "--rpc-url",
                 f"http://127.0.0.1:{free_port()}", "--private-key", DEV_KEY)
    assert_one_line_error(result, "prescription.kind: `stream submit` opens a stream")


def test_weights_of_another_model_are_refused_before_paying(tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # a valid, empty tensor file
    result = cli("stream", "submit", prescription(tmp_path), "--weights", other, "--rpc-url",
                 f"http://127.0.0.1:{free_port()}", "--private-key", DEV_KEY)
    assert_one_line_error(result, "initial_weights: missing tensor")


def test_unreachable_node_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("stream", "request", "1", "hello", "--rpc-url", url, "--private-key", DEV_KEY,
                 "--datadir", tmp_path / "client")
    assert_one_line_error(result, "cannot reach the node", url)


def test_stream_submitted_then_refused_while_forming_then_retracted(node_factory, tmp_path):
    node = node_factory()
    url, datadir = node.http_url, tmp_path / "client"
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    doc = json.loads(EXAMPLE.read_text())
    budget = int(doc["I"]["max_payment"])

    submitted = cli("stream", "submit", prescription(tmp_path), "--weights", weights_file(tmp_path),
                    "--rpc-url", url, "--private-key", DEV_KEY, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    assert TASK_ID.search(submitted.stdout).group(1) == "1"
    assert re.search(r"^Uploaded model\.safetensors: 0x[0-9a-f]{64} \(\d+ bytes\)$", submitted.stderr, re.M)
    assert "The stream forms once 3 providers subscribe; 0 qualify now" in submitted.stderr
    assert w3.eth.get_balance(TASK) == budget + budget * CLIENT_DEPOSIT_BPS // 10_000

    ask = ["--rpc-url", url, "--datadir", datadir]
    forming = cli("stream", "request", "1", "Once upon a time", *ask, "--private-key", DEV_KEY)
    assert_one_line_error(forming, "the node refused the request: stream is Forming: 0 of 3 subscribers")
    stranger = cli("stream", "request", "1", "hello", *ask, "--private-key", OTHER_KEY)
    assert_one_line_error(stranger, "request is not signed by the stream's client or its request key")
    assert_one_line_error(cli("stream", "request", "2", "hello", *ask, "--private-key", DEV_KEY),
                          "task 2 does not exist (tasks: 1)")
    unknown = cli("stream", "status", "0x" + "ab" * 32, "--rpc-url", url)
    assert_one_line_error(unknown, "request 0x" + "ab" * 32 + " is unknown to the node")

    updated = cli("stream", "update-terms", "1", "--price", "2000000000000", "--rpc-url", url, "--private-key", DEV_KEY)
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.startswith("Stream 1 is at terms version 2 (tx 0x")
    not_weighted = cli("stream", "update-terms", "1", "--method", "unanimous", "--weight", "5000", "--rpc-url", url,
                       "--private-key", DEV_KEY)
    assert_one_line_error(not_weighted, "only a weighted response method takes a weight")
    assert_one_line_error(cli("stream", "retract", "1", "--rpc-url", url, "--private-key", OTHER_KEY),
                          "retract: reverted:")

    retracted = cli("stream", "retract", "1", "--rpc-url", url, "--private-key", DEV_KEY)
    assert retracted.returncode == 0, retracted.stderr
    assert retracted.stdout.startswith("Retracted stream 1 in tx 0x")
    closing = cli("stream", "request", "1", "hello", *ask, "--private-key", DEV_KEY)
    assert_one_line_error(closing, "stream 1 is Closing: it takes no requests")


def test_requests_are_answered_and_the_agreeing_members_paid_cumulatively(node_factory, tmp_path, dev_accounts):
    """`stream request` against three scripted members (tests/integration/test_stream_router.py's workers,
    answering honestly): the answer is theirs, and each member that agreed receives a receipt whose
    cumulative units grow across invocations (kept in the datadir) and that Task.settle pays."""
    from integration.test_stream_router import ETHER, Chain, Worker, honest

    from ogpu_node.contracts.addresses import BID, STAKE
    from ogpu_node.contracts.addresses import TASK as TASK_RAW
    from ogpu_node.types.prescription import Prescription, to_stream_terms

    node = node_factory()
    url, datadir = node.http_url, tmp_path / "client"
    chain = Chain(url)
    client, providers = dev_accounts[0], dev_accounts[1:4]
    for key in providers:
        assert chain.call(key, STAKE, "Stake", "stake", value=200 * ETHER)["status"] == 1
        assert chain.call(key, STAKE, "Stake", "registerResources", 0, 4096, 1, "")["status"] == 1
        assert chain.call(key, STAKE, "Stake", "setRoles", 2)["status"] == 1
    doc = json.loads(prescription(tmp_path).read_text())
    doc["M"]["initial_weights"] = "0x" + bytes(32).hex()  # the scripted members serve no model
    p = Prescription.from_json(doc)  # the example's terms: weighted 6666, council 3, 10^12 wei per token
    opened = chain.call(client, TASK_RAW, "Task", "submitStream", b"\x01" * 32, to_stream_terms(p),
                        value=2 * p.I.max_payment)
    task_id = int.from_bytes(opened["logs"][-1]["topics"][1], "big")
    for key in providers:
        assert chain.call(key, BID, "Bid", "subscribe", task_id)["status"] == 1
    workers = {"0x" + k.address.hex(): Worker(chain, k, node.ws_url, honest) for k in providers}
    for w in workers.values():
        w.start()
    try:
        owed: dict[str, int] = dict.fromkeys(workers, 0)
        asked = []
        for prompt, max_tokens in (("hello", 16), ("again", 8)):
            out = cli("stream", "request", str(task_id), prompt, "--max-tokens", str(max_tokens), "--seed", "7",
                      "--json", "--rpc-url", url, "--datadir", datadir, "--private-key", DEV_KEY)
            assert out.returncode == 0, out.stderr
            answer = json.loads(out.stdout)
            assert bytes.fromhex(answer["response"][2:]) == honest(prompt.encode(), 7, max_tokens)
            assert answer["status"] in ("answered", "validated") and len(answer["agreed"]) >= 2  # ⌈0.6666·3⌉
            assert answer["paid"] == answer["agreed"] and answer["receipts"]["signed"] == len(answer["paid"])
            asked.append((answer["requestId"], max_tokens, set(answer["paid"])))
        # Without --json: the answer alone on stdout, what the node did on stderr.
        out = cli("stream", "request", str(task_id), "hi", "--max-tokens", "4", "--seed", "9", "--rpc-url", url,
                  "--datadir", datadir, "--private-key", DEV_KEY)
        assert out.returncode == 0, out.stderr
        assert out.stdout == honest(b"hi", 9, 4).decode("utf-8", "replace") + "\n"
        said = re.search(r"^Request (0x[0-9a-f]{64}): weighted, (?:not validated yet|validated); (\d) of 3 agreed: "
                         r"(.*)$", out.stderr, re.M)
        assert said, out.stderr
        agreed = set(said.group(3).split(", "))
        assert len(agreed) == int(said.group(2)) >= 2 and f"Receipts: {len(agreed)} signed" in out.stderr
        asked.append((said.group(1), 4, agreed))
        for _, units, paid in asked:
            for member in paid:
                owed[member] += units
        # A member that agreed after the answer is paid by `stream status`; the others are not paid twice.
        for request_id, units, paid in asked:
            out = cli("stream", "status", request_id, "--json", "--rpc-url", url, "--datadir", datadir,
                      "--private-key", DEV_KEY)
            assert out.returncode == 0, out.stderr
            for member in set(json.loads(out.stdout)["paid"]) - paid:
                owed[member] += units
        deadline = time.monotonic() + 20  # a bound: it ends as soon as every member holds its receipt
        while time.monotonic() < deadline and any(
                max((int(r["cumulativeUnits"], 16) for r in w.receipts), default=0) != owed[m]
                for m, w in workers.items()):
            time.sleep(0.1)
        for member, worker in workers.items():
            assert max((int(r["cumulativeUnits"], 16) for r in worker.receipts), default=0) == owed[member], member
        assert sum(owed.values()) >= 2 * (16 + 8)

        # The latest receipt pays on chain: cumulative units × the terms version's price.
        member, worker = next((m, w) for m, w in workers.items() if owed[m])
        last = max(worker.receipts, key=lambda r: int(r["cumulativeUnits"], 16))
        before = chain.w3.eth.get_balance(Web3.to_checksum_address(member))
        settled = chain.call(worker.key, TASK_RAW, "Task", "settle", task_id, bytes.fromhex(member[2:]), owed[member],
                             1, bytes.fromhex(last["signature"][2:]))
        assert settled["status"] == 1
        gas = settled["gasUsed"] * settled["effectiveGasPrice"]
        assert chain.w3.eth.get_balance(Web3.to_checksum_address(member)) == (
            before - gas + owed[member] * p.I.price_per_unit)
    finally:
        for w in workers.values():
            w.close()
