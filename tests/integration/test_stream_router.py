"""The node's side of stream tasks (docs/streams.md) over a real dev node's HTTP and WebSocket: signed
requests, councils, the three response methods, verdicts and fault evidence, refusals.

The providers here are scripted WebSocket workers whose answer is a fixed function of the request, one
of them answering wrongly; the real provider app serving a trained model is tests/e2e/test_stream_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from contracts.web3tx import checksum, send
from eth_utils import keccak
from web3 import Web3
from websockets.sync.client import connect

from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.addresses import BID, SLASHING, STAKE, TASK
from ogpu_node.contracts.layout import StreamTerms
from ogpu_node.types.protocol import ResponseMethod
from ogpu_node.types.signing import StreamLogin, StreamReceipt, StreamRequest, StreamResponse, StreamVerdict

pytestmark = pytest.mark.timeout(300)
ETHER = 10**18
COUNCIL = 3


def honest(prompt: bytes, seed: int, max_tokens: int) -> bytes:
    return keccak(prompt + seed.to_bytes(8, "big"))[:max_tokens]


def wrong(prompt: bytes, seed: int, max_tokens: int) -> bytes:
    return keccak(b"wrong" + prompt + seed.to_bytes(8, "big"))[:max_tokens]


class Chain:
    def __init__(self, url: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
        self.chain_id = self.w3.eth.chain_id
        self.genesis_hash = bytes(self.w3.eth.get_block(0)["hash"])
        self.abis = {name: load_abi(name) for name in ("Task", "Bid", "Stake", "Slashing")}

    def call(self, key: Any, address: bytes, contract: str, fn: str, *args: Any, value: int = 0) -> Any:
        f = self.abis[contract].function(fn)
        from eth_abi import encode

        data = f.selector + encode(list(f.inputs), list(args))
        receipt = send(self.w3, key, gas=3_000_000, to=address, data=data, value=value)
        return receipt

    def sign(self, key: Any, message: Any) -> bytes:
        return key.sign_hash(message.signing_root(self.chain_id, self.genesis_hash))

    def rpc(self, method: str, *params: Any) -> dict[str, Any]:
        return self.w3.provider.make_request(method, list(params))


class Worker(threading.Thread):
    """A provider's streamWork subscription that answers with `answer` and checks with `honest`."""

    def __init__(self, chain: Chain, key: Any, ws_url: str, answer: Any, delay_s: float = 0.0,
                 partials: int = 0) -> None:
        super().__init__(daemon=True)
        self.chain, self.key, self.answer, self.delay_s = chain, key, answer, delay_s
        self.partials = partials  # send the response in this many ogpu_streamPartial pieces first
        self.address = key.address
        self.ws = connect(ws_url)
        self.faults: list[dict[str, Any]] = []
        self.receipts: list[dict[str, Any]] = []
        self.requests = 0
        self._ids = iter(range(1, 1 << 30))
        self.stopped = threading.Event()
        now = int(time.time())
        login = {"provider": "0x" + self.address.hex(), "timestamp": hex(now),
                 "signature": "0x" + chain.sign(key, StreamLogin(self.address, now)).hex()}
        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "ogpu_subscribe", "params": ["streamWork", login]}))
        reply = json.loads(self.ws.recv(timeout=10))
        assert "result" in reply, reply

    def _send(self, method: str, *params: Any) -> None:
        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}))

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                message = json.loads(self.ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            except Exception:
                return
            if message.get("method") != "ogpu_subscription":
                assert "error" not in message, message
                continue
            work = message["params"]["result"]
            task_id, request_id = int(work["taskId"], 16), bytes.fromhex(work.get("requestId", "0x")[2:])
            if work["type"] == "request":
                self.requests += 1
                time.sleep(self.delay_s)
                prompt = bytes.fromhex(work["prompt"][2:])
                response = self.answer(prompt, int(work["seed"], 16), int(work["maxTokens"], 16))
                step = -(-len(response) // self.partials) if self.partials else 0
                for offset in range(0, len(response), step or len(response) + 1):
                    self._send("ogpu_streamPartial", {"taskId": work["taskId"], "requestId": work["requestId"],
                                                      "offset": hex(offset),
                                                      "tokens": "0x" + response[offset:offset + step].hex()})
                    time.sleep(0.05)
                version = int(work["termsVersion"], 16)
                signed = self.chain.sign(self.key, StreamResponse(task_id, request_id, version, keccak(response)))
                self._send("ogpu_streamRespond", {"taskId": work["taskId"], "requestId": work["requestId"],
                                                  "termsVersion": work["termsVersion"], "response": "0x" + response.hex(),
                                                  "signature": "0x" + signed.hex()})
            elif work["type"] == "check":
                prompt = bytes.fromhex(work["prompt"][2:])
                mine = honest(prompt, int(work["seed"], 16), int(work["maxTokens"], 16))
                verdicts = []
                for r in work["responses"]:
                    member, h = bytes.fromhex(r["member"][2:]), bytes.fromhex(r["responseHash"][2:])
                    agrees = bytes.fromhex(r["response"][2:]) == mine
                    signature = self.chain.sign(self.key, StreamVerdict(task_id, request_id, member, h, agrees))
                    verdicts.append({"taskId": work["taskId"], "requestId": work["requestId"], "member": r["member"],
                                     "responseHash": r["responseHash"], "agrees": agrees,
                                     "signature": "0x" + signature.hex()})
                self._send("ogpu_streamVerdicts", verdicts)
            elif work["type"] == "fault":
                self.faults.append(work)
            elif work["type"] == "receipt":
                self.receipts.append(work)

    def close(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5)
        self.ws.close()


def stream_terms(**values: int) -> tuple:
    defaults = {"budget": 10 * ETHER, "council_size": COUNCIL, "price_per_unit": 10**12, "response_method": 0,
                "response_weight": 0, "max_response_time": 5_000, "settle_window": 600, "numeric_profile": bytes(32)}
    return tuple(values.get(f.name, defaults.get(f.name, 0)) for f in dataclasses.fields(StreamTerms))


@pytest.fixture
def setup(dev_node, dev_accounts) -> Iterator[tuple[Chain, Any, list[Any], str]]:
    chain = Chain(dev_node.http_url)
    client, providers = dev_accounts[0], dev_accounts[1:5]
    for key in providers:
        assert chain.call(key, STAKE, "Stake", "stake", value=200 * ETHER)["status"] == 1
        assert chain.call(key, STAKE, "Stake", "registerResources", 0, 4096, 1, "")["status"] == 1
        assert chain.call(key, STAKE, "Stake", "setRoles", 2)["status"] == 1
    yield chain, client, providers, dev_node.ws_url


def open_stream(chain: Chain, client: Any, providers: list[Any], **terms: int) -> int:
    receipt = chain.call(client, TASK, "Task", "submitStream", b"\x01" * 32, stream_terms(**terms), value=12 * ETHER)
    assert receipt["status"] == 1
    task_id = int.from_bytes(receipt["logs"][-1]["topics"][1], "big")
    for key in providers:
        assert chain.call(key, BID, "Bid", "subscribe", task_id)["status"] == 1
    return task_id


def request_object(chain: Chain, client: Any, task_id: int, prompt: bytes, *, nonce: int, version: int = 1,
                   block: int | None = None, seed: int = 7, max_tokens: int = 16) -> dict[str, Any]:
    block = chain.w3.eth.block_number if block is None else block
    message = StreamRequest(task_id, version, block, seed, max_tokens, keccak(prompt), nonce)
    signature = chain.sign(client, message)
    return {"taskId": hex(task_id), "termsVersion": hex(version), "blockNumber": hex(block), "seed": hex(seed),
            "maxTokens": hex(max_tokens), "nonce": hex(nonce), "prompt": "0x" + prompt.hex(),
            "signature": "0x" + signature.hex()}


def request(chain: Chain, client: Any, task_id: int, prompt: bytes, **fields: Any) -> dict[str, Any]:
    return chain.rpc("ogpu_streamRequest", request_object(chain, client, task_id, prompt, **fields))


def status_until(chain: Chain, request_id: str, wanted: set[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = chain.rpc("ogpu_streamStatus", request_id)["result"]
        if status["status"] in wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_methods_answers_and_a_proved_fault(setup) -> None:
    chain, client, providers, ws_url = setup
    # Three subscribers: every request's council is all of them; the last answers wrongly and slowly.
    task_id = open_stream(chain, client, providers[:3], response_method=ResponseMethod.OPTIMISTIC)
    bad = providers[2]
    workers = [Worker(chain, k, ws_url, wrong if k is bad else honest, delay_s=0.3 if k is bad else 0) for k in providers[:3]]
    for w in workers:
        w.start()
    try:
        # Optimistic: the first (honest) response at once, before the slow one arrives.
        reply = request(chain, client, task_id, b"hello", nonce=1)["result"]
        assert reply["status"] == "answered" and not reply["validated"]
        assert bytes.fromhex(reply["response"][2:]) == honest(b"hello", 7, 16)
        assert len(reply["responses"]) < COUNCIL
        final = status_until(chain, reply["requestId"], {"validated", "faulty"})
        assert final["status"] == "validated"
        bad_address = "0x" + bad.address.hex()
        assert [f["offender"] for f in final["faults"]] == [bad_address]
        assert bad_address not in final["agreed"] and len(final["agreed"]) == 2
        # The members that signed against the wrong response get the evidence; the wrong one does not.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(w.faults for w in workers[:2]):
            time.sleep(0.05)
        assert all(w.faults for w in workers[:2]) and not workers[2].faults
        evidence = workers[0].faults[0]
        # Evidence a contract can check: submit it (Slashing.reportStreamFault) when the contract has it.
        if any(f.name == "reportStreamFault" for f in chain.abis["Slashing"].functions.values()):
            receipt = chain.call(providers[0], SLASHING, "Slashing", "reportStreamFault",
                                 bytes.fromhex(evidence["request"][2:]), bytes.fromhex(evidence["response"][2:]),
                                 [bytes.fromhex(v[2:]) for v in evidence["verdicts"]])
            assert receipt["status"] == 1
            subscribers = chain.w3.eth.call({"to": checksum(BID), "data": "0x" + (
                chain.abis["Bid"].function("subscribersOf").selector + (task_id).to_bytes(32, "big")).hex()})
            assert bad.address.hex() not in bytes(subscribers).hex()
            # Two subscribers left of three: the stream is interrupted and requests are refused.
            refused = request(chain, client, task_id, b"again", nonce=2)
            assert "Interrupted" in refused["error"]["message"], refused
    finally:
        for w in workers:
            w.close()


@pytest.mark.parametrize("method", [ResponseMethod.WEIGHTED, ResponseMethod.UNANIMOUS])
def test_weighted_and_unanimous_never_return_the_wrong_answer(setup, method) -> None:
    chain, client, providers, ws_url = setup
    task_id = open_stream(chain, client, providers[:3], response_method=method, response_weight=6666)
    bad = providers[0]
    # The wrong member is the fastest: it is never the answer.
    workers = [Worker(chain, k, ws_url, wrong if k is bad else honest, delay_s=0 if k is bad else 0.2)
               for k in providers[:3]]
    for w in workers:
        w.start()
    try:
        for nonce in range(1, 4):
            reply = request(chain, client, task_id, b"prompt %d" % nonce, nonce=nonce)
            if method == ResponseMethod.WEIGHTED:
                result = reply["result"]
                assert bytes.fromhex(result["response"][2:]) == honest(b"prompt %d" % nonce, 7, 16)
                assert len(result["agreed"]) == 2
            else:  # unanimous: one wrong member means no answer at all
                assert "council did not agree" in reply["error"]["message"], reply
                result = reply["error"]["data"]
            final = status_until(chain, result["requestId"], {"validated", "faulty", "failed"}, timeout=5)
            deadline = time.monotonic() + 10
            while not final["faults"] and time.monotonic() < deadline:
                time.sleep(0.05)
                final = chain.rpc("ogpu_streamStatus", result["requestId"])["result"]
            assert [f["offender"] for f in final["faults"]] == ["0x" + bad.address.hex()]
    finally:
        for w in workers:
            w.close()


def test_refusals_change_nothing(setup) -> None:
    chain, client, providers, ws_url = setup
    # Forming: fewer than c subscribers.
    task_id = open_stream(chain, client, providers[:2])
    reply = request(chain, client, task_id, b"x", nonce=1)
    assert "stream is Forming: 2 of 3 subscribers" in reply["error"]["message"], reply
    assert chain.call(providers[2], BID, "Bid", "subscribe", task_id)["status"] == 1
    workers = [Worker(chain, k, ws_url, honest) for k in providers[:3]]
    for w in workers:
        w.start()
    try:
        stranger = providers[3]
        cases = {
            "not signed by the stream's client": lambda: request(chain, stranger, task_id, b"x", nonce=2),
            "unknown terms version 2": lambda: request(chain, client, task_id, b"x", nonce=3, version=2),
            "blockNumber must be one of the last": lambda: request(chain, client, task_id, b"x", nonce=4, block=10**6),
            "maxTokens: must be 1 to 1024": lambda: request(chain, client, task_id, b"x", nonce=5, max_tokens=5000),
            "prompt: must be 1 to 4096 bytes": lambda: request(chain, client, task_id, b"y" * 5000, nonce=6),
            "Task: no task 999": lambda: request(chain, client, 999, b"x", nonce=7),
        }
        for expected, make in cases.items():
            reply = make()
            assert expected in reply.get("error", {}).get("message", ""), (expected, reply)
        assert all(w.requests == 0 for w in workers)
        ok = request(chain, client, task_id, b"x", nonce=8)["result"]
        assert ok["status"] in ("answered", "validated")
        again = request(chain, client, task_id, b"x", nonce=8)
        assert "request already received" in again["error"]["message"]
        # A response from a connection that is not a logged-in member is refused.
        with connect(ws_url) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ogpu_streamRespond",
                                "params": [{"taskId": hex(task_id), "requestId": ok["requestId"]}]}))
            assert "no streamWork subscription" in json.loads(ws.recv(timeout=10))["error"]["message"]
        # Receipts reach the provider's subscription only when the client signed them.
        member = providers[0].address
        receipt = StreamReceipt(task_id, member, 16, 1)
        good = {"taskId": hex(task_id), "provider": "0x" + member.hex(), "cumulativeUnits": hex(16),
                "termsVersion": "0x1", "signature": "0x" + chain.sign(client, receipt).hex()}
        assert chain.rpc("ogpu_streamReceipts", [good])["result"] == 1
        forged = dict(good, signature="0x" + chain.sign(stranger, receipt).hex())
        assert "not signed by the stream's client" in chain.rpc("ogpu_streamReceipts", [forged])["error"]["message"]
        deadline = time.monotonic() + 10
        while not workers[0].receipts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [int(r["cumulativeUnits"], 16) for r in workers[0].receipts] == [16]
    finally:
        for w in workers:
            w.close()


def test_a_member_that_misses_the_response_time_is_skipped_and_counted(setup) -> None:
    chain, client, providers, ws_url = setup
    task_id = open_stream(chain, client, providers[:3], response_method=ResponseMethod.WEIGHTED,
                          response_weight=6666, max_response_time=500)
    slow = providers[1]
    workers = [Worker(chain, k, ws_url, honest, delay_s=2.0 if k is slow else 0) for k in providers[:3]]
    for w in workers:
        w.start()
    try:
        reply = request(chain, client, task_id, b"quick", nonce=1)["result"]
        assert len(reply["agreed"]) == 2
        final = status_until(chain, reply["requestId"], {"validated"}, timeout=10)
        assert final["skipped"] == ["0x" + slow.address.hex()]
        task = chain.rpc("ogpu_streamTask", hex(task_id))["result"]
        assert task["missed"] == {"0x" + slow.address.hex(): "0x1"}
        assert task["state"] == "Active" and len(task["connected"]) == 3
    finally:
        for w in workers:
            w.close()



def test_tokens_stream_to_a_subscriber_then_the_answer_then_its_status(setup) -> None:
    """`ogpu_subscribe("streamTokens", request)`: the first member's partial tokens in order, then the
    decided answer, then the final status; a partial from outside the council is refused."""
    chain, client, providers, ws_url = setup
    task_id = open_stream(chain, client, providers[:3], response_method=ResponseMethod.UNANIMOUS)
    workers = [Worker(chain, k, ws_url, honest, partials=4 if i == 0 else 0, delay_s=0 if i == 0 else 0.5)
               for i, k in enumerate(providers[:3])]
    outsider = Worker(chain, providers[3], ws_url, honest)  # logged in, never started: the test reads its socket
    for w in workers:
        w.start()
    try:
        with connect(ws_url) as ws:
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ogpu_subscribe", "params": [
                "streamTokens", request_object(chain, client, task_id, b"stream me", nonce=1, max_tokens=16)]}))
            reply = json.loads(ws.recv(timeout=10))
            sub_id = reply["result"]
            notes: list[dict[str, Any]] = []
            while not notes or notes[-1]["type"] != "status":
                message = json.loads(ws.recv(timeout=20))
                assert message["params"]["subscription"] == sub_id
                notes.append(message["params"]["result"])
        kinds = [n["type"] for n in notes]
        assert kinds[-2:] == ["answer", "status"] and set(kinds[:-2]) == {"tokens"} and len(kinds) > 3
        streamed = b"".join(bytes.fromhex(n["tokens"][2:]) for n in notes[:-2])
        assert [int(n["offset"], 16) for n in notes[:-2]] == sorted(int(n["offset"], 16) for n in notes[:-2])
        expected = honest(b"stream me", 7, 16)
        assert streamed == expected and {n["member"] for n in notes[:-2]} == {"0x" + providers[0].address.hex()}
        assert bytes.fromhex(notes[-2]["response"][2:]) == expected and notes[-1]["status"] == "validated"
        # Partials name a request: one from a provider outside its council is an error, not a token.
        outsider._send("ogpu_streamPartial", {"taskId": hex(task_id), "requestId": notes[-1]["requestId"],
                                              "offset": "0x0", "tokens": "0x00"})
        reply = json.loads(outsider.ws.recv(timeout=10))
        assert "not a member" in reply["error"]["message"], reply
    finally:
        outsider.close()
        for w in workers:
            w.close()
