"""eth_subscribe / eth_unsubscribe over a real node's WebSocket, with transactions sent over HTTP.

Each subscription's notifications for a block are sent in the order the subscriptions were made, and
all of a block's notifications before the next block's; so a `newHeads` subscription made last
serves as a barrier: once its head for block N is in, every other notification up to N has arrived.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from typing import Any

import pytest
from contracts.compile import compile_contract
from contracts.web3tx import send
from eth_abi import encode
from eth_utils import keccak
from web3 import Web3
from websockets.sync.client import ClientConnection, connect

RECV_TIMEOUT_S = 15
STORED = keccak(text="Stored(address,uint256)")
SEND_TIMEOUT_S = 5.0  # ogpu_node.rpc.filters.SEND_TIMEOUT_S
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for 127.0.0.1
SUBSCRIPTION_ID = re.compile(r"0x[0-9a-f]{32}")


# -- helpers --


def checksum(address: bytes) -> str:
    return Web3.to_checksum_address(address)


def hex_topic(address: bytes) -> str:
    return "0x" + address.rjust(32, b"\x00").hex()


def deploy_store(w3: Web3, key: Any) -> Any:
    compiled = compile_contract("Store")
    receipt = send(w3, key, data=compiled.bytecode + encode(["uint256"], [0]), gas=1_000_000)
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=compiled.abi)


def call(w3: Web3, key: Any, contract: Any, function: str, *args: Any) -> Any:
    receipt = send(w3, key, gas=300_000, to=contract.address, data=contract.encode_abi(function, args=list(args)))
    assert receipt["status"] == 1
    return receipt


class WsClient:
    """A JSON-RPC client over one WebSocket connection that keeps notifications apart from replies."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.notifications: list[dict[str, Any]] = []
        self._ids = iter(range(1, 1 << 30))

    def recv(self) -> dict[str, Any]:
        return json.loads(self.connection.recv(timeout=RECV_TIMEOUT_S))

    def request(self, method: str, *params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        self.connection.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}))
        while True:
            message = self.recv()
            if message.get("method") == "eth_subscription":
                self.notifications.append(message["params"])
                continue
            assert message["id"] == request_id
            return message

    def subscribe(self, *params: Any) -> str:
        reply = self.request("eth_subscribe", *params)
        assert SUBSCRIPTION_ID.fullmatch(reply["result"]), reply
        return reply["result"]

    def next_notification(self) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        message = self.recv()
        assert message.get("method") == "eth_subscription", message
        assert message["jsonrpc"] == "2.0" and "id" not in message
        return message["params"]

    def until_head(self, head_subscription: str, number: int) -> list[dict[str, Any]]:
        """Every notification up to and including `head_subscription`'s head of block `number`."""
        seen = []
        while True:
            params = self.next_notification()
            seen.append(params)
            if params["subscription"] == head_subscription and int(params["result"]["number"], 16) == number:
                return seen


@pytest.fixture
def w3(dev_node) -> Web3:
    return Web3(Web3.HTTPProvider(dev_node.http_url, request_kwargs={"timeout": 30}))


@pytest.fixture
def ws(dev_node) -> Any:
    with ws_connect(dev_node.ws_url) as connection:
        yield WsClient(connection)


def ws_connect(url: str, **options: Any) -> ClientConnection:
    # proxy=None: the connection goes straight to the node on 127.0.0.1, whatever the environment.
    return connect(url, proxy=None, **{"open_timeout": 30, "close_timeout": 5, **options})


def http_request(url: str, method: str, *params: Any) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=30) as response:
        return json.loads(response.read())


# -- tests --


def test_new_heads_notifies_each_sealed_block_with_its_header(dev_node, w3, ws, dev_accounts):
    """Rule: a newHeads subscription gets one notification per new block, in order, carrying the
    block's header as eth_getBlockByNumber serves it (number, hash = the receipt's blockHash)."""
    heads = ws.subscribe("newHeads")
    alice, bob = dev_accounts[1], dev_accounts[2]
    first = send(w3, alice, to=checksum(bob.address), value=1, gas=21_000)
    second = send(w3, alice, to=checksum(bob.address), value=2, gas=21_000)
    assert (first["blockNumber"], second["blockNumber"]) == (1, 2)

    got = [ws.next_notification(), ws.next_notification()]
    assert [n["subscription"] for n in got] == [heads, heads]
    assert [n["result"]["number"] for n in got] == ["0x1", "0x2"]
    assert [n["result"]["hash"] for n in got] == [first["blockHash"].to_0x_hex(), second["blockHash"].to_0x_hex()]
    assert got[1]["result"]["parentHash"] == got[0]["result"]["hash"]
    block = http_request(dev_node.http_url, "eth_getBlockByNumber", "0x1", False)["result"]
    header = got[0]["result"]
    for name in ("parentHash", "miner", "stateRoot", "transactionsRoot", "receiptsRoot", "logsBloom",
                 "gasLimit", "gasUsed", "timestamp", "extraData", "mixHash", "nonce", "baseFeePerGas"):
        assert header[name] == block[name], name
    assert header["gasUsed"] == "0x5208"  # one plain transfer


def test_logs_subscription_receives_exactly_the_matching_logs(dev_node, w3, ws, dev_accounts):
    """Rule: a logs subscription gets, per block and in log order, exactly the logs that match its
    address and topic filter (an OR-list per position, null = any), each as eth_getLogs serves it."""
    deployer, alice, bob = dev_accounts[0], dev_accounts[1], dev_accounts[2]
    store = deploy_store(w3, deployer)
    other = deploy_store(w3, deployer)
    by_alice = ws.subscribe("logs", {"address": store.address, "topics": ["0x" + STORED.hex(), hex_topic(alice.address)]})
    either = ws.subscribe("logs", {
        "address": [store.address, other.address], "topics": [None, [hex_topic(alice.address), hex_topic(bob.address)]],
    })
    everything = ws.subscribe("logs", {})
    heads = ws.subscribe("newHeads")  # subscribed last: the barrier (see the module docstring)

    r1 = call(w3, alice, store, "store", 1)        # by_alice, either, everything
    r2 = call(w3, bob, store, "store", 2)          # either, everything
    r3 = call(w3, alice, store, "clear")           # either (topic 0 is Cleared), everything
    r4 = call(w3, alice, other, "store", 3)        # either, everything
    r5 = call(w3, deployer, store, "store", 6)     # everything
    r6 = call(w3, alice, store, "store_pair", 4, 5)  # by_alice x2, either x2, everything x2
    receipts = (r1, r2, r3, r4, r5, r6)
    got = ws.until_head(heads, r6["blockNumber"])
    url = dev_node.http_url

    def logs_of(subscription: str) -> list[dict[str, Any]]:
        return [n["result"] for n in got if n["subscription"] == subscription]

    raw_logs = {
        id(r): http_request(url, "eth_getTransactionReceipt", r["transactionHash"].to_0x_hex())["result"]["logs"]
        for r in receipts
    }

    def expected(*picks: tuple[Any, int]) -> list[dict[str, Any]]:
        """The receipts' logs in the node's own JSON."""
        return [raw_logs[id(receipt)][index] for receipt, index in picks]

    assert logs_of(by_alice) == expected((r1, 0), (r6, 0), (r6, 1))
    assert logs_of(either) == expected((r1, 0), (r2, 0), (r3, 0), (r4, 0), (r6, 0), (r6, 1))
    assert logs_of(everything) == expected((r1, 0), (r2, 0), (r3, 0), (r4, 0), (r5, 0), (r6, 0), (r6, 1))
    assert [int(n["result"]["number"], 16) for n in got if n["subscription"] == heads] == [
        r["blockNumber"] for r in receipts
    ]
    first = logs_of(by_alice)[0]
    assert first["address"] == store.address.lower()
    assert first["topics"] == ["0x" + STORED.hex(), hex_topic(alice.address)]
    assert first["data"] == "0x" + encode(["uint256"], [1]).hex()
    assert (first["blockHash"], first["transactionHash"], first["removed"]) == (
        r1["blockHash"].to_0x_hex(), r1["transactionHash"].to_0x_hex(), False
    )
    assert not ws.notifications


def test_unsubscribe_returns_true_and_stops_that_subscription_only(dev_node, w3, ws, dev_accounts):
    """Rule: eth_unsubscribe of one's own live subscription returns true and no further notification
    carries its id; a second unsubscribe, or one from another connection, does not cancel anything."""
    dropped = ws.subscribe("newHeads")
    kept = ws.subscribe("newHeads")
    with ws_connect(dev_node.ws_url) as connection:
        stranger = WsClient(connection)
        # Another connection cannot cancel it (ids are per connection): false, as for an unknown id.
        assert stranger.request("eth_unsubscribe", kept) == {"jsonrpc": "2.0", "id": 1, "result": False}
    assert ws.request("eth_unsubscribe", dropped)["result"] is True
    assert ws.request("eth_unsubscribe", dropped)["result"] is False

    receipt = send(w3, dev_accounts[1], to=checksum(dev_accounts[2].address), value=1, gas=21_000)
    # `dropped` was made first, so for this block its notification would have come before `kept`'s.
    got = ws.until_head(kept, receipt["blockNumber"])
    assert [(n["subscription"], n["result"]["hash"]) for n in got] == [(kept, receipt["blockHash"].to_0x_hex())]
    receipt = send(w3, dev_accounts[1], to=checksum(dev_accounts[2].address), value=1, gas=21_000)
    got = ws.until_head(kept, receipt["blockNumber"])
    assert [n["subscription"] for n in got] == [kept]


def test_subscribe_is_refused_over_http_and_for_unknown_kinds(dev_node, ws):
    """Rule: subscriptions need a connection that can carry notifications: over HTTP eth_subscribe
    fails with -32601 "notifications not supported" (geth's answer); an unknown kind is -32602."""
    reply = http_request(dev_node.http_url, "eth_subscribe", "newHeads")
    assert reply == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "notifications not supported"}}
    reply = ws.request("eth_subscribe", "newBlocks")
    assert reply["error"]["code"] == -32602
    reply = ws.request("eth_subscribe", "logs", {"topics": ["0x12"]})
    assert reply["error"]["code"] == -32602


def test_new_pending_transactions_announces_each_admitted_hash(w3, ws, dev_accounts):
    """Rule: a newPendingTransactions subscription gets the hash of each transaction the pool admits."""
    pending = ws.subscribe("newPendingTransactions")
    receipt = send(w3, dev_accounts[1], to=checksum(dev_accounts[2].address), value=1, gas=21_000)
    assert ws.next_notification() == {"subscription": pending, "result": receipt["transactionHash"].to_0x_hex()}


def test_a_client_that_stops_reading_does_not_stall_block_production(dev_node, w3, ws, dev_accounts):
    """Rule: notifications never hold up block production for more than SEND_TIMEOUT_S: a WebSocket
    client that stops reading loses its subscriptions once, and other subscribers are served."""
    heads = ws.subscribe("newHeads")
    # A client with a tiny receive buffer that reads its replies, then nothing: 2000 newHeads
    # subscriptions make each block push megabytes at it, more than the socket buffers hold.
    host, port = dev_node.ws_url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    subscriptions = 2000
    with ws_connect(dev_node.ws_url, sock=sock, max_queue=1, max_size=None, close_timeout=1) as stuck:
        for request_id in range(subscriptions):
            stuck.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "eth_subscribe", "params": ["newHeads"]}))
        replies = [json.loads(stuck.recv(timeout=RECV_TIMEOUT_S)) for _ in range(subscriptions)]
        assert sorted(r["id"] for r in replies) == list(range(subscriptions))

        started = time.monotonic()
        receipts = [
            send(w3, dev_accounts[1], to=checksum(dev_accounts[2].address), value=1, gas=21_000) for _ in range(3)
        ]
        elapsed = time.monotonic() - started
        # One stall of SEND_TIMEOUT_S at most (with the bug it was SEND_TIMEOUT_S per message: > 45 s).
        assert elapsed < 3 * SEND_TIMEOUT_S, elapsed
        assert [r["blockNumber"] for r in receipts] == [1, 2, 3]
        got = ws.until_head(heads, 3)
        assert [(n["subscription"], n["result"]["number"]) for n in got] == [(heads, "0x1"), (heads, "0x2"), (heads, "0x3")]
    assert "cancelled 2000 subscription(s) of a WebSocket client that did not read" in dev_node.log()
