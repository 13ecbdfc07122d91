"""Issue 10's attacks replayed from 127.0.0.1 against real processes: one `ogpu-node run --dev --block-time 1`
and one `ogpu-node provider run` (dev account 1), started once for the module.

Each test is one attack of the issue's list. Beside them, a bystander client asks the node for its block
number again and again on its own keep-alive connection; every test shows, with ordering assertions only
(never a duration), that each attack reply is well-formed, that the bystander is answered during the long
attacks and between all of them, that blocks keep coming (a block number that advances, a legit transfer
mined while an attack is still running), and that the provider process is still alive. The last test shows
that the provider still bids on a good task, and that the node, restarted on its datadir, still has the
blocks from before the attacks.

Sizes are the issue's where the size is the point; where it is not, they are smaller and say so. Runs in
about a minute on two shared cores; each test is bounded by pytest-timeout, the module's processes are
stopped by its fixture whatever happens.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from blobput import UNFUNDED, blob_path, upload_headers
from e2e.cli_run import assert_one_line_error, cli
from e2e.test_provider_e2e import ProviderProcess, make_dataset, prescription_doc, start_provider, wait_for
from integration.test_rpc_hardening import post, rpc
from txfactory import sign_tx
from web3.logs import DISCARD
from websockets.sync.client import connect as ws_connect

from ogpu_node.apps.client import Client
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, to_terms
from ogpu_node.types.protocol import TaskKind
from tests.conftest import NodeProcess, start_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ACCOUNTS = derive_dev_accounts(10)
PROVIDER, SENDER, SMALL_ONES, CLIENT, ATTACKER, FLOODER = (ACCOUNTS[i] for i in (1, 2, 3, 5, 6, 7))
EVM_TIMEOUT_S = 2  # geth's --rpc.evmtimeout is 5 s; 2 s shows the same and keeps the suite short
BLOB_QUOTA = 256 * 1024  # --blob.quota, small so that a flood reaches it in a few uploads
LOOP = "0x5b600056"  # JUMPDEST PUSH1 0 JUMP: loops until out of gas
TARGET = "0x" + "42" * 20
RECEIVER = "0x" + "11" * 20
NOWHERE = "0x" + "de" * 20  # no contract logs from it: subscriptions on it cost nothing per block
CHAIN_ID = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}'
CHAIN_ID_REPLY = b'{"jsonrpc":"2.0","id":1,"result":"0x539"}'
IDLE_FLOOD = 520  # the number: more than the 512 connections a port admits
GRACE_S = 1.0  # rpc/admission.py: a connection idle for less is not closed to make room


class Bystander(threading.Thread):
    """Another client: `eth_blockNumber` on one keep-alive connection, every 0.1 s, each reply checked.
    Its log interleaves what it was served with the tests' marks, in the order they happened."""

    def __init__(self, url: str) -> None:
        super().__init__(name="bystander")
        self.address = (urlsplit(url).hostname, urlsplit(url).port)
        self.log: list[tuple[str, Any]] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(*self.address, timeout=30)
        body = b'{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}'
        while not self.stopped.is_set():
            try:
                conn.request("POST", "/", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                reply = json.loads(response.read())
                assert response.status == 200 and set(reply) == {"jsonrpc", "id", "result"} and reply["id"] == 7, reply
                with self.lock:
                    self.log.append(("served", int(reply["result"], 16)))
            except Exception as exc:  # noted, and the test that was running fails on it
                with self.lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(*self.address, timeout=30)
            self.stopped.wait(0.1)
        conn.close()

    def mark(self, name: str) -> int:
        with self.lock:
            self.log.append(("mark", name))
            return len(self.log) - 1

    def blocks_since(self, index: int, until: int | None = None) -> list[int]:
        """Block numbers it was served after log entry `index` (and before `until`)."""
        with self.lock:
            return [value for kind, value in self.log[index + 1:until] if kind == "served"]


@dataclass
class Net:
    node: NodeProcess
    provider: ProviderProcess
    bystander: Bystander
    tmp: Path
    before: dict[str, Any]  # a block from before any attack
    nodes: list[NodeProcess] = field(default_factory=list)  # every node process started, for the cleanup

    @property
    def url(self) -> str:
        return self.node.http_url


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("hostile")
    node = start_node(tmp / "node", "--block-time", "1", "--rpc.evmtimeout", f"{EVM_TIMEOUT_S}s",
                      "--blob.quota", str(BLOB_QUOTA))
    nodes, provider, bystander = [node], None, None
    try:
        provider = start_provider(node.http_url, PROVIDER.private_key, tmp / "provider")
        wait_for("the provider to watch tasks", lambda: "watching tasks" in provider.log(), 150, [provider])
        before = rpc(node.http_url, "eth_getBlockByNumber", "latest", False)["result"]
        bystander = Bystander(node.http_url)
        bystander.start()
        yield Net(node, provider, bystander, tmp, before, nodes)
    finally:
        if bystander is not None:
            bystander.stopped.set()
            bystander.join(timeout=60)
        if provider is not None and provider.process.poll() is None:
            provider.process.send_signal(signal.SIGTERM)
            try:
                provider.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                provider.process.kill()
                provider.process.wait()
        for started in nodes:
            started.kill(signal.SIGTERM)


@contextmanager
def attack(net: Net, name: str, long: bool = False) -> Iterator[None]:
    """Around one attack: afterwards the bystander is answered again, nothing it was sent failed, and both
    processes are alive; `long`: it was answered during the attack too."""
    bystander = net.bystander
    start = bystander.mark(f"{name} starts")
    yield
    end = bystander.mark(f"{name} ends")
    if long:
        during = bystander.blocks_since(start, end)
        assert during, f"the bystander was not answered during {name}"
    wait_for(f"the bystander to be answered after {name}", lambda: bystander.blocks_since(end), 60, [net.provider])
    assert not bystander.failures, bystander.failures
    assert net.node.process.poll() is None, net.node.log()[-4000:]
    assert net.provider.process.poll() is None, net.provider.log()[-4000:]


def blocks_advance(net: Net, by: int) -> None:
    """Wait (bounded) until the bystander is served a head `by` blocks past the one now."""
    mark = net.bystander.mark("waiting for blocks")
    target = int(call(net.url, "eth_blockNumber")["result"], 16) + by
    wait_for(f"block {target}", lambda: any(n >= target for n in net.bystander.blocks_since(mark)), 60,
             [net.provider])


def well_formed(reply: Any, request_id: Any = 1) -> dict[str, Any]:
    """One JSON-RPC 2.0 response object: a result or an error with an integer code and a message."""
    assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and reply.get("id") == request_id, reply
    if "error" in reply:
        assert set(reply) == {"jsonrpc", "id", "error"}, reply
        assert isinstance(reply["error"]["code"], int) and isinstance(reply["error"]["message"], str), reply
    else:
        assert set(reply) == {"jsonrpc", "id", "result"}, reply
    return reply


def call(url: str, method: str, *params: Any) -> dict[str, Any]:
    return well_formed(rpc(url, method, *params))


def batch(url: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status, _, data = post(url, json.dumps(requests).encode())
    assert status == 200
    replies = json.loads(data)
    assert isinstance(replies, list) and len(replies) == len(requests)
    return [well_formed(reply, request["id"]) for reply, request in zip(replies, requests, strict=True)]


def hex_address(account: Any) -> str:
    return "0x" + account.address.hex()


def send_transfer(url: str) -> str:
    """A legit transfer from the sender's next nonce; its hash."""
    nonce = int(call(url, "eth_getTransactionCount", hex_address(SENDER), "pending")["result"], 16)
    tx = sign_tx(SENDER.private_key, nonce, to=bytes.fromhex(RECEIVER[2:]), value=1)
    return call(url, "eth_sendRawTransaction", tx.raw_hex)["result"]


def good_prescription(data: bytes) -> Prescription:
    """A small task the provider can run, on `data`; an auction that stays open for the whole module (it
    waits for two bids and only one provider is running), so nobody trains."""
    doc = prescription_doc(steps=30, segment_window_s=3600)
    doc["D"]["blob"] = "0x" + merkle_root(data).hex()
    doc["I"]["council_size"] = 1
    doc["H"] = {"bid_window_s": 3600, "min_bids": 2, "first_n": 2}
    return Prescription.from_json(doc)


def test_a_nested_prescription_crashes_neither_the_provider_nor_the_node(net: Net):
    """Attack 1: a prescription `{"kind":` + `[`×100000 + `]`×100000 + `}` uploaded as a blob (signed by a
    funded account) and submitted with a raw submitTask: every provider died with SIGSEGV. Now the provider
    skips the task with one line naming it and goes on, and `task submit` of such a file is one error line."""
    nested = b'{"kind":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    client = Client(net.url, ATTACKER.private_key)
    dataset = make_dataset(net.tmp / "attack.safetensors").read_bytes()
    terms_of = good_prescription(dataset)  # the terms on chain are a good task's
    with attack(net, "a nested prescription"):
        phash, _ = client.upload_bytes("the nested prescription", nested)
        call_ = client.task.functions.submitTask(phash, int(TaskKind.BATCH), to_terms(terms_of))
        receipt = client.send("submitTask", call_, value=terms_of.I.max_payment + client.minimum_deposit(terms_of))
        task_id = client.task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)[0]["args"]["taskId"]
        wait_for("the provider to skip the task", lambda: f"task {task_id}: not bidding" in net.provider.log(), 60,
                 [net.provider])
    line = next(line for line in net.provider.log().splitlines() if f"task {task_id}: not bidding" in line)
    assert "nests deeper than" in line, line
    assert Client(net.url).status(task_id).bids == ()

    path = net.tmp / "nested.json"
    path.write_bytes(nested)
    with attack(net, "task submit of a nested prescription"):
        result = cli("task", "submit", path, "--data", net.tmp / "attack.safetensors", "--rpc-url", net.url,
                     "--private-key", "0x" + ATTACKER.private_key.hex(), timeout=120)
    assert_one_line_error(result, "nests deeper than")


def test_a_looping_call_freezes_nothing(net: Net):
    """Attack 2: eth_call and eth_estimateGas of `0x5b600056` with gas 100M froze the node for 17 s. Now
    both end with geth's timeout error, and before either ends a legit transfer is mined and the
    bystander is answered."""
    events: list[str] = []
    replies: dict[str, dict] = {}
    lock = threading.Lock()

    def loop(method: str) -> None:
        reply = rpc(net.url, method, {"to": TARGET, "gas": hex(100_000_000)}, "latest", {TARGET: {"code": LOOP}})
        with lock:
            replies[method] = reply
            events.append(method)

    with attack(net, "a looping eth_call", long=True):
        threads = [threading.Thread(target=loop, args=(m,)) for m in ("eth_call", "eth_estimateGas")]
        for thread in threads:
            thread.start()
        tx_hash = send_transfer(net.url)
        mined = None
        while mined is None and len(events) < 2:
            mined = call(net.url, "eth_getTransactionReceipt", tx_hash)["result"]
        with lock:
            events.append("transfer mined" if mined else "attacks ended first")
        for thread in threads:
            thread.join(timeout=60)
    assert events[0] == "transfer mined", events
    for method in ("eth_call", "eth_estimateGas"):
        assert well_formed(replies[method])["error"] == {
            "code": -32000, "message": f"execution aborted (timeout = {EVM_TIMEOUT_S}s)"}


def test_get_logs_with_100k_addresses_is_refused_in_every_form(net: Net):
    """Attack 3: eth_getLogs with 100,000 addresses (quadratic: 36 s); the blockHash form skipped the result
    cap. Now both forms are refused at once with invalid params, and a blockHash query is still answered.
    (The 60k-log block of the issue is left out: the cap refuses the query before any block is read, and
    the blockHash result cap is shown in tests/unit/rpc/test_rpc_log_caps.py.)"""
    addresses = [f"0x{i:040x}" for i in range(100_000)]
    head = call(net.url, "eth_getBlockByNumber", "latest", False)["result"]
    with attack(net, "eth_getLogs with 100k addresses"):
        for query in ({"fromBlock": "0x0", "toBlock": "latest", "address": addresses},
                      {"blockHash": head["hash"], "address": addresses}):
            error = call(net.url, "eth_getLogs", query)["error"]
            assert error["code"] == -32602 and "exceed max addresses" in error["message"], error
        assert isinstance(call(net.url, "eth_getLogs", {"blockHash": head["hash"]})["result"], list)


def test_blob_floods_are_refused_and_browsers_kept_out(net: Net):
    """Attack 4: anonymous `PUT /blobs` filled the disk; any web page could drive the RPC and the blob store.
    Now: unsigned uploads 401, uploads signed by an account with neither stake nor balance 403, a funded
    account's flood stops at its quota (429); a foreign Host header 403, a text/plain RPC POST 415, and no
    reply or preflight lets a page read it."""
    data = b"hostile blob"
    with attack(net, "blob upload floods"):
        status, _, body = post(net.url, data, {"Content-Type": "application/octet-stream"}, "PUT", blob_path(data))
        assert status == 401 and "error" in json.loads(body)
        status, _, body = post(net.url, data, upload_headers(data, UNFUNDED), "PUT", blob_path(data))
        assert status == 403 and "error" in json.loads(body)
        flooder = Client(net.url, FLOODER.private_key)
        refusals = []
        for i in range(BLOB_QUOTA // (64 * 1024) + 1):
            piece = i.to_bytes(4, "big") * (16 * 1024)  # 64 KiB, each different
            status, _, body = post(net.url, piece, upload_headers(piece, FLOODER), "PUT", blob_path(piece))
            if status != 201:
                refusals.append((status, json.loads(body)))
        assert [status for status, _ in refusals] == [429], refusals  # the last one: over the quota
        assert flooder.fetch_blob(merkle_root((0).to_bytes(4, "big") * (16 * 1024)))  # the stored ones are served

        status, headers, _ = post(net.url, CHAIN_ID, {"Host": "evil.example"})
        assert status == 403 and "access-control-allow-origin" not in headers
        status, _, _ = post(net.url, data, {**upload_headers(data), "Host": "evil.example"}, "PUT", blob_path(data))
        assert status == 403
        status, _, body = post(net.url, CHAIN_ID, {"Content-Type": "text/plain"})
        assert status == 415 and well_formed(json.loads(body), None)["error"]["code"] == -32600
        page = {"Origin": "http://evil.example"}
        status, headers, body = post(net.url, CHAIN_ID, page)
        assert (status, body) == (200, CHAIN_ID_REPLY) and "access-control-allow-origin" not in headers
        status, headers, _ = post(net.url, b"", {**page, "Access-Control-Request-Method": "PUT"}, "OPTIONS", "/blobs")
        assert status == 204 and "access-control-allow-origin" not in headers


WS_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def open_silent_websocket(addr: tuple[str, int]) -> tuple[socket.socket, int]:
    """A WebSocket opened by hand, that then says nothing; the status of the handshake's answer."""
    sock = socket.create_connection(addr, timeout=30)
    sock.sendall(WS_HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1])


def closed_by_the_node(sock: socket.socket) -> bool:
    """Whether the node closes this connection (whatever it says first, a WebSocket close frame)."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_idle_connections_lock_nobody_out(net: Net):
    """Attack 5: 520 idle TCP connections (every other HTTP client got 503) and 512 silent WebSockets
    (new ones blocked forever). Now at the limit the connection idle longest makes room: a new client
    is served on both ports while the flood is open, and the provider (whose own connections share the
    HTTP port) keeps running. Here 520 WebSockets complete their handshake, then say nothing."""
    http_addr = (urlsplit(net.url).hostname, urlsplit(net.url).port)
    ws_addr = (urlsplit(net.node.ws_url).hostname, urlsplit(net.node.ws_url).port)
    idle: list[socket.socket] = []
    silent: list[socket.socket] = []
    with attack(net, "520 idle connections per port", long=True):
        try:
            idle += [socket.create_connection(http_addr, timeout=30) for _ in range(IDLE_FLOOD)]
            statuses = []
            for _ in range(IDLE_FLOOD):
                sock, status = open_silent_websocket(ws_addr)
                silent.append(sock)
                statuses.append(status)
            # 101 up to the limit (512); past it 503 while no silent one has been idle for the grace yet
            assert statuses[0] == 101 and set(statuses) <= {101, 503} and statuses.count(101) >= 512, statuses
            net.bystander.stopped.wait(GRACE_S + 0.2)  # a lower bound: past it, idle connections may be closed
            assert post(net.url, CHAIN_ID)[::2] == (200, CHAIN_ID_REPLY)
            with ws_connect(net.node.ws_url, proxy=None, open_timeout=30) as ws:
                ws.send(CHAIN_ID.decode())
                assert json.loads(ws.recv(timeout=30)) == json.loads(CHAIN_ID_REPLY)
            blocks_advance(net, 1)
            # the oldest idle one of each port made room
            assert closed_by_the_node(idle[0]) and closed_by_the_node(silent[0])
        finally:
            for sock in idle + silent:
                sock.close()


def test_a_subscriber_that_never_reads_stalls_no_block(net: Net):
    """Attack 6: a WebSocket client with many newHeads subscriptions that never reads delayed every block by
    5 s. Now blocks keep coming while it is connected, and it loses its subscriptions. (2,000 subscriptions
    rather than "many": enough to fill its socket buffers within a block.)"""
    subscriptions = 2000
    host, port = net.node.ws_url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    with attack(net, "a silent subscriber", long=True):
        with ws_connect(net.node.ws_url, sock=sock, max_queue=1, max_size=None, close_timeout=1) as stuck:
            for request_id in range(subscriptions):
                stuck.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "eth_subscribe",
                                       "params": ["newHeads"]}))
            ids = []
            while len(ids) < subscriptions:  # the replies, and the notifications of blocks meanwhile
                message = json.loads(stuck.recv(timeout=30))
                if message.get("method") == "eth_subscription":
                    assert set(message) == {"jsonrpc", "method", "params"}, message
                else:
                    ids.append(well_formed(message, message.get("id"))["id"])
            assert sorted(ids) == list(range(subscriptions))
            # From here it reads nothing more.
            blocks_advance(net, 3)
            tx_hash = send_transfer(net.url)
            wait_for("the transfer to be mined", lambda: call(net.url, "eth_getTransactionReceipt", tx_hash)["result"],
                     60, [net.provider])
            wait_for("the silent subscriber to be dropped",
                     lambda: f"cancelled {subscriptions} subscription(s) of a WebSocket client" in net.node.log(),
                     60, [net.provider])


def test_filter_and_subscription_floods_are_bounded(net: Net):
    """Attack 7: 210k filters in 3 s; 10k subscriptions on one connection (17.5 MB per block). Now filters
    are capped node-wide (10,000, the least recently polled go) and subscriptions per connection (4,096):
    the flood gets well-formed answers, and a filter made afterwards works. (12,000 filters rather than
    210k: past the cap is the point.)"""
    with attack(net, "filter and subscription floods"):
        for start in range(0, 12_000, 1000):
            replies = batch(net.url, [{"jsonrpc": "2.0", "id": start + i, "method": "eth_newBlockFilter", "params": []}
                                      for i in range(1000)])
            assert all(reply["result"].startswith("0x") for reply in replies)
        mine = call(net.url, "eth_newBlockFilter")["result"]
        blocks_advance(net, 1)
        changes = call(net.url, "eth_getFilterChanges", mine)["result"]
        assert changes and all(len(h) == 66 for h in changes)

        results, errors = 0, set()
        with ws_connect(net.node.ws_url, proxy=None, open_timeout=30, max_size=None) as ws:
            for start in range(0, 10_000, 1000):
                requests = [{"jsonrpc": "2.0", "id": start + i, "method": "eth_subscribe",
                             "params": ["logs", {"address": NOWHERE}]} for i in range(1000)]
                ws.send(json.dumps(requests))
                for reply in json.loads(ws.recv(timeout=60)):
                    well_formed(reply, reply["id"])
                    results += "result" in reply
                    if "error" in reply:
                        errors.add((reply["error"]["code"], reply["error"]["message"]))
        assert results == 4096
        assert errors == {(-32000, "too many subscriptions (limit 4096 per connection)")}


def test_small_hostile_inputs_get_clear_errors(net: Net):
    """Attack 8: an override nonce >= 2^64 (-32603 and a traceback), ids NaN and 1e400 echoed as invalid
    JSON, an unprotected legacy transaction accepted, a nonce 2^64-1 refused as `invalid sender`. Now each
    gets a well-formed error with geth's words, and the node logs no traceback."""
    with attack(net, "small hostile inputs"):
        error = call(net.url, "eth_call", {"to": TARGET}, "latest", {TARGET: {"nonce": hex(1 << 64)}})["error"]
        assert error["code"] == -32602
        for raw_id in ("NaN", "1e400"):
            status, _, data = post(net.url, f'{{"jsonrpc":"2.0","id":{raw_id},"method":"eth_chainId"}}'.encode())
            assert status == 200
            assert json.loads(data, parse_constant=_refuse) == {
                "jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request id"}}
        to = bytes.fromhex(RECEIVER[2:])
        unprotected = sign_tx(SMALL_ONES.private_key, 0, to=to, gas_price=10**10, chain_id=None)
        assert call(net.url, "eth_sendRawTransaction", unprotected.raw_hex)["error"] == {
            "code": -32000, "message": "only replay-protected (EIP-155) transactions allowed over RPC"}
        for nonce in ((1 << 64) - 1, 1 << 64):
            raw = sign_tx(SMALL_ONES.private_key, nonce, to=to, value=1).raw_hex
            assert call(net.url, "eth_sendRawTransaction", raw)["error"] == {
                "code": -32000, "message": f"nonce has max value: nonce {nonce}"}
    assert "Traceback" not in net.node.log()


def _refuse(constant: str) -> None:
    raise ValueError(f"invalid JSON constant {constant}")


def test_after_the_attacks_the_provider_bids_and_the_chain_survives_a_restart(net: Net):
    """Runs last (file order): the provider, alive through every attack above, bids on a good task
    submitted now; a legit transfer is mined; the node, stopped and started again on its datadir, has the
    block from before the attacks and the task, and nothing it logged is a traceback."""
    data_path = make_dataset(net.tmp / "good.safetensors")
    client = Client(net.url, CLIENT.private_key)
    with attack(net, "a good task"):
        client.upload_blob(data_path)
        task_id, _ = client.submit_task(good_prescription(data_path.read_bytes()))
        bidders = lambda: [bidder.lower() for bidder, _ in client.status(task_id).bids]  # noqa: E731
        wait_for("the provider's bid", lambda: hex_address(PROVIDER) in bidders(), 90, [net.provider])
        tx_hash = send_transfer(net.url)
        wait_for("the transfer to be mined", lambda: call(net.url, "eth_getTransactionReceipt", tx_hash)["result"],
                 60, [net.provider])
    net.bystander.stopped.set()
    net.bystander.join(timeout=60)
    assert not net.bystander.failures, net.bystander.failures
    served = [value for kind, value in net.bystander.log if kind == "served"]
    assert served == sorted(served) and served[-1] > served[0]  # blocks kept coming, in order
    net.provider.process.send_signal(signal.SIGTERM)
    assert net.provider.process.wait(timeout=60) == 0, net.provider.log()[-4000:]
    head = call(net.url, "eth_getBlockByNumber", "latest", False)["result"]
    net.node.kill(signal.SIGTERM)
    assert net.node.process.returncode == 0, net.node.log()[-4000:]
    assert "Traceback" not in net.node.log() and "Traceback" not in net.provider.log()

    net.node = start_node(net.node.datadir)
    net.nodes.append(net.node)
    for block in (net.before, head):
        again = call(net.url, "eth_getBlockByNumber", block["number"], False)["result"]
        assert (again["hash"], again["stateRoot"]) == (block["hash"], block["stateRoot"])
    assert [bidder.lower() for bidder, _ in Client(net.url).status(task_id).bids] == [hex_address(PROVIDER)]
