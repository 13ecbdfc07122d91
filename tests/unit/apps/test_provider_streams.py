"""The provider's stream side without a chain (docs/streams.md): which streams it subscribes to and
when it stops, the receipt book, and its answers to the node's streamWork notifications — signed
responses and verdicts checked by recovering their signers — over a real WebSocket to a stand-in node."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket as tws
from eth_hash.auto import keccak

from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.apps.provider.stream_decisions import (
    ConsiderStream,
    ForgetStream,
    SettleNow,
    StopServing,
    StreamCore,
    StreamOffer,
    sampling_params,
    stream_infeasible,
    stream_unprofitable,
    token_cost,
)
from ogpu_node.apps.provider.stream_receipts import ReceiptBook, receipt_signer
from ogpu_node.apps.provider.stream_ws import (
    STREAM_FAULTS,
    FaultEvidence,
    Receipt,
    Served,
    Signer,
    StreamWork,
    corrupt,
    serve_node,
    ws_url_from_rpc,
)
from ogpu_node.cli.provider import STREAM_FAULTS as CLI_STREAM_FAULTS
from ogpu_node.crypto import Keypair, derive_dev_accounts
from ogpu_node.crypto.signatures import recover_signer
from ogpu_node.types.prescription import Prescription
from ogpu_node.types.protocol import TaskKind, TaskState
from ogpu_node.types.signing import (
    SignedStream,
    StreamLogin,
    StreamReceipt,
    StreamRequest,
    StreamResponse,
    StreamVerdict,
)

CHAIN_ID, GENESIS = 1337, bytes(range(32))
CLIENT, ME, OTHER = (Keypair(a.private_key, a.address) for a in derive_dev_accounts(3))
SIGNER = Signer(ME, CHAIN_ID, GENESIS)
RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=("cpu-avx2-1t",))
TASK = 7


def offer(**changes) -> StreamOffer:
    base = dict(task_id=TASK, family="chargpt", devices=("cpu",), min_memory_mib=1024, numeric_profile=None,
                equivalence="tokens", price_per_unit=10**13, max_response_ms=5_000, has_weights=True)
    return StreamOffer(**(base | changes))


def event(name: str, **args) -> Event:
    return Event(name, args, 1, 0)


# -- decisions --


def test_ws_url_is_the_rpc_host_on_port_8546():
    assert ws_url_from_rpc("http://127.0.0.1:8545") == "ws://127.0.0.1:8546"
    assert ws_url_from_rpc("https://node.example/rpc") == "wss://node.example:8546/rpc"
    assert ws_url_from_rpc("http://[::1]:8545", 9000) == "ws://[::1]:9000"


def test_a_stream_this_provider_can_serve_is_feasible():
    assert stream_infeasible(offer(), RES) is None


@pytest.mark.parametrize(("changes", "why"), [
    ({"has_weights": False}, "names no weights"),
    ({"equivalence": "exact"}, "equivalence 'exact'"),
    ({"devices": ("cuda",)}, "needs a device in cuda"),
    ({"numeric_profile": "cuda-fp32"}, "numeric profile cuda-fp32"),
    ({"min_memory_mib": 8192}, "needs 8192 MiB"),
])
def test_an_infeasible_stream_says_why(changes, why):
    assert why in stream_infeasible(offer(**changes), RES)


def test_the_token_floor_is_measured_seconds_times_cost_times_margin():
    strategy = BidStrategy(cost_per_second=10**15, margin=0.2)
    assert token_cost(0.005, strategy) == 6 * 10**12  # 5 ms × 1e15 wei/s × 1.2
    assert stream_unprofitable(6 * 10**12, 0.005, strategy) is None
    assert "below our 6000000000000 wei" in stream_unprofitable(6 * 10**12 - 1, 0.005, strategy)


def test_sampling_is_greedy_under_tokens_and_truncated_under_possible():
    doc = {
        "kind": "stream",
        "M": {"family": "chargpt", "hparams": {}, "initial_weights": "0x" + "11" * 32},
        "I": {"max_payment": "1000000", "council_size": 3, "hardware": {"min_memory_mib": 1, "devices": ["cpu"]},
              "response_method": "optimistic", "max_response_ms": 2000, "price_per_unit": "10",
              "settle_window_s": 60},
        "f": {"kind": "per-unit", "council_share_bps": 0},
        "e": {"kind": "tokens"},
    }
    assert sampling_params(Prescription.from_json(doc)) == (0.0, None, None, None)
    doc["e"] = {"kind": "possible", "top_k": 5, "margin": 0.01}
    assert sampling_params(Prescription.from_json(doc)) == (1.0, 5, None, 0.01)


def core() -> StreamCore:
    return StreamCore(ME.address.hex(), BidStrategy(cost_per_second=10**15, margin=0.2))


def submitted(task_id: int = TASK, kind: int = TaskKind.STREAM, client: bytes = CLIENT.address) -> Event:
    return event("TaskSubmitted", taskId=task_id, kind=kind, client="0x" + client.hex())


def test_a_new_stream_of_another_client_is_considered_once():
    c = core()
    assert c.event(submitted()) == [ConsiderStream(TASK)]
    assert c.event(submitted()) == []
    assert c.consider(TASK, resume=True) == []  # found open again at start: already seen


def test_batch_tasks_and_our_own_streams_are_not_considered():
    c = core()
    assert c.event(submitted(kind=TaskKind.BATCH)) == []
    assert c.event(submitted(client=ME.address)) == []


def test_a_closing_stream_is_settled_at_once_and_given_up():
    c = core()
    c.event(submitted())
    assert c.subscribed(TASK, 0.005)
    closing = event("StreamStateChanged", taskId=TASK, state=TaskState.CLOSING, subscribers=3)
    assert c.event(closing) == [SettleNow(TASK), StopServing(TASK, "the stream is closing", unsubscribe=True)]
    assert not c.subscribed(TASK, 0.005)  # a subscription that lands after the close is undone
    ended = event("TaskSettled", taskId=TASK, outcome=1, refund=0, paid=0)
    assert c.event(ended) == [ForgetStream(TASK)]


def test_an_ended_stream_we_serve_stops_without_an_unsubscribe():
    c = core()
    c.event(submitted())
    c.subscribed(TASK, 0.005)
    assert c.event(event("TaskSettled", taskId=TASK, outcome=1, refund=0, paid=0)) == [
        StopServing(TASK, "the stream has ended", unsubscribe=False), ForgetStream(TASK)]


def test_new_terms_below_our_floor_end_the_subscription():
    c = core()
    c.event(submitted())
    c.subscribed(TASK, 0.005)  # floor 6e12 wei per token
    fine = event("TermsUpdated", taskId=TASK, version=2, pricePerUnit=6 * 10**12, responseMethod=0, responseWeight=0)
    assert c.event(fine) == []
    cut = event("TermsUpdated", taskId=TASK, version=3, pricePerUnit=10**12, responseMethod=0, responseWeight=0)
    [stop] = c.event(cut)
    assert stop.unsubscribe and stop.why.startswith("terms version 3: unprofitable")


def test_a_seat_taken_by_a_proved_fault_ends_serving_without_an_unsubscribe():
    c = core()
    c.event(submitted())
    assert c.seat_lost(TASK) == []  # not serving it: nothing to stop
    c.subscribed(TASK, 0.001)
    [stop] = c.seat_lost(TASK)
    assert isinstance(stop, StopServing) and not stop.unsubscribe and "seat is gone" in stop.why
    assert c.seat_lost(TASK) == [] and c.consider(TASK) == []  # once, and never considered again


# -- receipts --


def test_the_book_keeps_the_highest_receipt_and_what_is_settled_across_restarts(tmp_path):
    path = tmp_path / "streams" / "receipts.json"
    book = ReceiptBook(path)
    assert book.offer(TASK, 1, 10, b"a" * 65)
    assert not book.offer(TASK, 1, 9, b"b" * 65)  # lower: a replay pays nothing
    assert book.offer(TASK, 1, 25, b"c" * 65)
    assert book.offer(TASK, 2, 4, b"d" * 65)
    assert book.settled(TASK, 1, 25) and not book.settled(TASK, 1, 20)
    book.save()
    again = ReceiptBook(path)
    assert [(t, v, h.units, h.signature, h.settled) for t, v, h in again.due(0.0)] == [(TASK, 2, 4, b"d" * 65, 0)]
    assert again.held[(TASK, 1)].settled == 25
    assert not again.offer(TASK, 1, 25, b"c" * 65)  # settled already: never resubmitted


def test_a_receipt_the_chain_refused_waits_before_it_is_tried_again(tmp_path):
    book = ReceiptBook(tmp_path / "receipts.json")
    book.offer(TASK, 1, 10, b"a" * 65)
    book.hold_back(TASK, 1, until=100.0)
    assert book.due(99.0) == [] and len(book.due(100.0)) == 1
    book.offer(8, 1, 3, b"e" * 65)
    assert [t for t, _, _ in book.due(100.0, tasks={8})] == [8]
    assert book.forget(TASK) and not book.forget(TASK)
    book.save()
    assert [t for t, _, _ in ReceiptBook(tmp_path / "receipts.json").due(0.0)] == [8]


def test_a_damaged_book_starts_empty(tmp_path):
    path = tmp_path / "receipts.json"
    path.write_bytes(b"{not json")
    assert ReceiptBook(path).held == {}


def test_a_receipt_is_signed_by_whoever_signed_it_for_this_provider():
    receipt = StreamReceipt(TASK, ME.address, 42, 1)
    signature = CLIENT.sign_hash(receipt.signing_root(CHAIN_ID, GENESIS))
    r = Receipt(TASK, 42, 1, signature)
    assert receipt_signer(r, ME.address, CHAIN_ID, GENESIS) == CLIENT.address
    assert receipt_signer(r, OTHER.address, CHAIN_ID, GENESIS) != CLIENT.address  # not a receipt for OTHER
    assert receipt_signer(Receipt(TASK, 42, 1, b"\x00" * 65), ME.address, CHAIN_ID, GENESIS) is None


# -- notifications --


class FakeWorker:
    """A deterministic 'model': the answer to a prompt is a function of the prompt and the seed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, key, prompt, max_tokens, seed, sampling, on_tokens=None, every=8):
        self.calls.append("generate")
        out = (keccak(prompt + seed.to_bytes(8, "big")).hex().encode() * 40)[:max_tokens]
        for offset in range(0, max_tokens - every, every) if on_tokens is not None else ():  # as Worker: not the last
            on_tokens(offset, out[offset:offset + every])
        return out

    def check(self, key, prompt, response, seed, sampling, kind):
        self.calls.append(f"check {kind}")
        return response == self.generate(key, prompt, len(response), seed, sampling)


def served(worker: FakeWorker, max_response_ms: int = 5_000) -> Served:
    return Served(TASK, "stream-7", "tokens", None, max_response_ms, worker, trio.CapacityLimiter(1))


def request_note(prompt: bytes = b"Once upon a time", seed: int = 3, max_tokens: int = 20, nonce: int = 1) -> dict:
    request = StreamRequest(TASK, 1, 100, seed, max_tokens, keccak(prompt), nonce)
    signature = CLIENT.sign_hash(request.signing_root(CHAIN_ID, GENESIS))
    return {"type": "request", "taskId": hex(TASK), "requestId": "0x" + request.request_id(CHAIN_ID, GENESIS).hex(),
            "request": "0x" + SignedStream(request, signature).encode().hex(), "prompt": "0x" + prompt.hex(),
            "seed": hex(seed), "maxTokens": hex(max_tokens), "termsVersion": "0x1"}


class Node:
    """Records what the provider sends, as the node's methods would receive it; token previews
    (ogpu_streamPartial) apart, followed until `follow` of them were taken."""

    def __init__(self, follow: int = 1_000) -> None:
        self.sent: list[tuple[str, list]] = []
        self.partials: list[dict] = []
        self.follow = follow

    async def send(self, method: str, params: list):
        if method == "ogpu_streamPartial":
            self.partials.append(params[0])
            return len(self.partials) < self.follow
        self.sent.append((method, params))
        return True


def answer(fault: str | None = None, note: dict | None = None, follow: int = 1_000) -> tuple[Node, FakeWorker]:
    worker, node = FakeWorker(), Node(follow)
    work = StreamWork(SIGNER, fault=fault)
    work.served[TASK] = served(worker)
    trio.run(work.handle, note or request_note(), node.send)
    return node, worker


def test_a_request_is_answered_with_the_models_tokens_signed_by_the_provider():
    note = request_note()
    node, worker = answer(note=note)
    [(method, [obj])] = node.sent
    response = bytes.fromhex(obj["response"][2:])
    assert method == "ogpu_streamRespond" and obj["requestId"] == note["requestId"] and obj["termsVersion"] == "0x1"
    assert response == worker.generate("", b"Once upon a time", 20, 3, None)
    message = StreamResponse(TASK, bytes.fromhex(note["requestId"][2:]), 1, keccak(response))
    assert recover_signer(message.signing_root(CHAIN_ID, GENESIS), bytes.fromhex(obj["signature"][2:])) == ME.address


def test_a_wrong_tokens_provider_signs_altered_tokens():
    honest, _ = answer()
    faulty, _ = answer(fault="wrong-tokens")
    good, bad = (bytes.fromhex(n.sent[0][1][0]["response"][2:]) for n in (honest, faulty))
    assert bad == corrupt(good) and bad != good and all(b >= 0x80 for b in bad)
    obj = faulty.sent[0][1][0]
    message = StreamResponse(TASK, bytes.fromhex(obj["requestId"][2:]), 1, keccak(bad))
    assert recover_signer(message.signing_root(CHAIN_ID, GENESIS), bytes.fromhex(obj["signature"][2:])) == ME.address


def test_tokens_are_previewed_in_order_until_nobody_follows():
    note = request_note(max_tokens=40)
    node, _ = answer(note=note)
    response = bytes.fromhex(node.sent[0][1][0]["response"][2:])
    assert [int(p["offset"], 16) for p in node.partials] == [0, 8, 16, 24]
    assert b"".join(bytes.fromhex(p["tokens"][2:]) for p in node.partials) == response[:32]
    assert {p["requestId"] for p in node.partials} == {note["requestId"]}
    quiet, _ = answer(note=note, follow=1)  # the node answered false: nobody follows, so no more previews
    assert len(quiet.partials) == 1 and quiet.sent[0][1][0]["response"] == node.sent[0][1][0]["response"]
    faulty, _ = answer(note=note, fault="wrong-tokens")  # a wrong member previews what it will answer
    assert b"".join(bytes.fromhex(p["tokens"][2:]) for p in faulty.partials) == corrupt(response[:32])


def test_a_silent_provider_generates_nothing_and_answers_nothing():
    node, worker = answer(fault="silent")
    assert node.sent == [] and worker.calls == []


def test_a_request_whose_prompt_does_not_match_its_hash_is_not_answered():
    note = request_note() | {"prompt": "0x" + b"another prompt".hex()}
    node, worker = answer(note=note)
    assert node.sent == [] and worker.calls == []


def test_a_request_for_a_stream_not_served_is_not_answered():
    node, work = Node(), StreamWork(SIGNER)
    trio.run(work.handle, request_note(), node.send)
    assert node.sent == []


def test_a_request_that_waited_past_its_response_time_is_skipped():
    worker, node = FakeWorker(), Node()
    work = StreamWork(SIGNER)
    work.served[TASK] = served(worker, max_response_ms=0)  # the deadline has passed by the time the thread runs
    trio.run(work.handle, request_note(), node.send)
    assert node.sent == [] and worker.calls == []


def test_a_check_signs_a_verdict_on_each_other_response():
    worker, node = FakeWorker(), Node()
    work = StreamWork(SIGNER)
    work.served[TASK] = served(worker)
    note = request_note()
    honest = worker.generate("", b"Once upon a time", 20, 3, None)
    wrong = corrupt(honest)
    check = {"type": "check", "taskId": note["taskId"], "requestId": note["requestId"], "prompt": note["prompt"],
             "seed": note["seed"], "maxTokens": note["maxTokens"], "responses": [
                 {"member": "0x" + OTHER.address.hex(), "response": "0x" + wrong.hex(),
                  "responseHash": "0x" + keccak(wrong).hex()},
                 {"member": "0x" + CLIENT.address.hex(), "response": "0x" + honest.hex(),
                  "responseHash": "0x" + keccak(honest).hex()}]}
    trio.run(work.handle, check, node.send)
    [(method, [verdicts])] = node.sent
    assert method == "ogpu_streamVerdicts"
    request_id = bytes.fromhex(note["requestId"][2:])
    got = []
    for v in verdicts:
        member, hash_ = bytes.fromhex(v["member"][2:]), bytes.fromhex(v["responseHash"][2:])
        message = StreamVerdict(TASK, request_id, member, hash_, v["agrees"])
        assert recover_signer(message.signing_root(CHAIN_ID, GENESIS), bytes.fromhex(v["signature"][2:])) == ME.address
        got.append((member, v["agrees"]))
    assert got == [(OTHER.address, False), (CLIENT.address, True)]
    assert worker.calls.count("check tokens") == 2


def test_a_check_without_a_prompt_uses_the_request_remembered():
    worker, node = FakeWorker(), Node()
    work = StreamWork(SIGNER)
    work.served[TASK] = served(worker)
    note = request_note()
    trio.run(work.handle, note, node.send)
    mine = bytes.fromhex(node.sent[0][1][0]["response"][2:])
    check = {"type": "check", "taskId": note["taskId"], "requestId": note["requestId"], "responses": [
        {"member": "0x" + OTHER.address.hex(), "response": "0x" + mine.hex(), "responseHash": "0x" + keccak(mine).hex()}]}
    trio.run(work.handle, check, node.send)
    assert node.sent[1][1][0][0]["agrees"] is True


def test_faults_and_receipts_go_to_the_service():
    got: list = []

    async def keep(item) -> None:
        got.append(item)

    work = StreamWork(SIGNER, on_fault=keep, on_receipt=keep)
    fault = {"type": "fault", "taskId": "0x7", "requestId": "0x" + "ab" * 32, "offender": "0x" + OTHER.address.hex(),
             "request": "0x01", "response": "0x02", "verdicts": ["0x03", "0x04"]}
    receipt = {"type": "receipt", "taskId": "0x7", "cumulativeUnits": "0x2a", "termsVersion": "0x1",
               "signature": "0x" + "05" * 65}

    async def main() -> None:
        await work.handle(fault, Node().send)
        await work.handle(receipt, Node().send)
        await work.handle({"type": "receipt", "taskId": "7"}, Node().send)  # malformed: logged and dropped

    trio.run(main)
    assert got == [FaultEvidence(7, b"\xab" * 32, OTHER.address, b"\x01", b"\x02", [b"\x03", b"\x04"]),
                   Receipt(7, 42, 1, b"\x05" * 65)]


def test_the_cli_offers_the_apps_stream_faults():
    assert CLI_STREAM_FAULTS == STREAM_FAULTS


# -- the socket: a stand-in node that checks the login, asks once, and takes the answer --


@pytest.mark.timeout(30)
def test_the_provider_logs_in_answers_over_the_socket_and_reconnects():
    worker = FakeWorker()
    work = StreamWork(SIGNER)
    work.served[TASK] = served(worker)
    responses: list[dict] = []
    logins: list[bytes] = []
    ups: list[bool] = []

    async def node(request: tws.WebSocketRequest) -> None:
        ws = await request.accept()
        call = json.loads(await ws.get_message())
        login = call["params"][1]
        root = StreamLogin(bytes.fromhex(login["provider"][2:]), int(login["timestamp"], 16)).signing_root(
            CHAIN_ID, GENESIS)
        logins.append(recover_signer(root, bytes.fromhex(login["signature"][2:])))
        assert call["method"] == "ogpu_subscribe" and call["params"][0] == "streamWork"
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": call["id"], "result": "0x1"}))
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": "ogpu_subscription",
                                          "params": {"subscription": "0x1", "result": request_note()}}))
        reply = json.loads(await ws.get_message())
        while reply["method"] == "ogpu_streamPartial":  # token previews: nobody follows them here
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": reply["id"], "result": False}))
            reply = json.loads(await ws.get_message())
        responses.append(reply)
        await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": reply["id"], "result": True}))
        await ws.aclose()  # the provider must come back

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(tws.serve_websocket, node, "127.0.0.1", 0, None)
            port = server.port
            nursery.start_soon(lambda: serve_node(f"ws://127.0.0.1:{port}", SIGNER, work,
                                                  connected=ups.append))
            # The provider reports itself up only once the node has answered its second login.
            while len(logins) < 2 or len(ups) < 3:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert logins == [ME.address, ME.address]
    assert ups[:3] == [True, False, True]  # up, dropped by the node, up again
    assert responses and {r["method"] for r in responses} == {"ogpu_streamRespond"}
    assert responses[0]["params"][0]["requestId"] == request_note()["requestId"]
