"""Malformed JSON-RPC and rejected transactions over real HTTP on `ogpu-node run --dev`.

Every reply is checked whole (status, content length, JSON error object); requests share one keep-alive
connection, so a connection dropped mid-response fails the test; the node's log must hold no traceback.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import rlp
from eth_utils import to_checksum_address
from txfactory import GWEI, sign_tx

from tests.conftest import start_node

ADDRESS = "0x" + "11" * 20
MAX_BODY = 5 * 1024 * 1024  # ServerLimits.max_body_bytes
MAX_BATCH = 1000
POOL_SLOTS = 5120 + 1024  # PoolConfig.max_transactions


class Client:
    """One keep-alive HTTP/1.1 connection to the node."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, body: bytes | str) -> tuple[int, bytes]:
        self.conn.request("POST", "/", body=body if isinstance(body, bytes) else body.encode(),
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()  # raises IncompleteRead if the node cut the reply short
        assert int(response.getheader("content-length")) == len(data)
        return response.status, data

    def rpc_raw(self, body: Any) -> Any:
        """POST a JSON value (or raw text/bytes); the parsed reply, or None for an empty body."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        status, data = self.post(body)
        assert status == 200
        return json.loads(data) if data else None

    def call(self, method: str, *params: Any) -> Any:
        return self.rpc_raw({"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)})

    def result(self, method: str, *params: Any) -> Any:
        reply = self.call(method, *params)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node for the envelope tests: none of them changes the chain."""
    node = start_node(tmp_path_factory.mktemp("rpc-errors") / "node")
    yield node
    node.kill(signal.SIGTERM)


@pytest.fixture
def client(shared_node):
    client = Client(shared_node.http_url)
    yield client
    client.close()
    assert "Traceback" not in shared_node.log()


def error(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def code_of(reply: dict[str, Any]) -> int:
    return reply["error"]["code"]


# -- envelope --


def test_invalid_json_is_parse_error(client):
    for body in (b'{"jsonrpc":"2.0",', b"\xff\xfe\x00", b"", b"nul", b'{"id": 1e99999', b"[" * 100 + b"]" * 99):
        assert client.rpc_raw(body) == error(-32700, "parse error")
    assert client.result("eth_chainId") == "0x539"


def test_deeply_nested_json_is_refused_without_killing_the_node(client):
    # ~10^5 levels used to overflow the C stack inside json.loads (py-evm raises the recursion limit)
    for body in (b"[" * 200_000, b'{"a":' * 100_000, b"[1," * 513 + b"]" * 513):
        assert client.rpc_raw(body) == error(-32700, "parse error: nesting deeper than 512")
    nested_ok = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[' + b"[" * 500 + b"]" * 500 + b"]}"
    assert client.rpc_raw(nested_ok) == error(-32602, "wrong number of arguments for eth_chainId", 1)
    assert client.result("eth_chainId") == "0x539"


def test_malformed_requests_are_invalid_request(client):
    assert client.rpc_raw(b"1") == error(-32600, "invalid request")
    assert client.rpc_raw(b'"eth_chainId"') == error(-32600, "invalid request")
    assert client.rpc_raw(b"null") == error(-32600, "invalid request")
    assert client.rpc_raw({"jsonrpc": "2.0", "id": 1}) == error(-32600, "invalid request", 1)
    assert client.rpc_raw({"jsonrpc": "2.0", "id": 2, "method": 5}) == error(-32600, "invalid request", 2)
    assert client.rpc_raw({"jsonrpc": "1.0", "id": 3, "method": "eth_chainId"}) == error(-32600, "invalid request", 3)
    assert client.rpc_raw({"id": 4, "method": "eth_chainId"}) == error(-32600, "invalid request", 4)
    assert client.rpc_raw({"jsonrpc": "2.0", "id": [1], "method": "eth_chainId"}) == error(
        -32600, "invalid request id"
    )
    assert client.rpc_raw(b"[]") == error(-32600, "empty batch")


def test_unknown_method_is_method_not_found(client):
    assert client.call("eth_noSuchMethod") == error(
        -32601, "the method eth_noSuchMethod does not exist/is not available", 7
    )


BAD_PARAMS = [
    ("eth_getBalance", [ADDRESS + "11", "latest"]),  # 21-byte address
    ("eth_getBalance", ["0x" + "11" * 19, "latest"]),  # 19-byte address
    ("eth_getBalance", ["0x" + "zz" * 20, "latest"]),  # bad hex
    ("eth_getBalance", ["0x" + "1" * 39, "latest"]),  # odd length
    ("eth_getBalance", [ADDRESS[2:], "latest"]),  # no 0x
    ("eth_getBalance", [5, "latest"]),  # wrong type
    ("eth_getBalance", [ADDRESS, "newest"]),  # unknown tag
    ("eth_getBalance", [ADDRESS, 5]),  # block as a JSON number
    ("eth_getBalance", []),  # too few
    ("eth_chainId", [1]),  # too many
    ("eth_getBlockByNumber", ["0x-1", False]),  # signed quantity
    ("eth_getBlockByNumber", ["0x 1", False]),  # space in hex
    ("eth_getBlockByNumber", ["0x1_0", False]),  # underscore in hex
    ("eth_getBlockByNumber", ["0x", False]),  # empty quantity
    ("eth_getBlockByNumber", ["0x1" + "0" * 64, False]),  # over 256 bits
    ("eth_getBlockByNumber", ["latest", "yes"]),  # not a boolean
    ("eth_getBlockByHash", ["0x" + "11" * 31, False]),  # 31-byte hash
    ("eth_getStorageAt", [ADDRESS, "0xgg", "latest"]),
    ("eth_sendRawTransaction", ["0xabc"]),  # odd length
    ("eth_sendRawTransaction", [["0x00"]]),
    ("eth_call", ["0x00", "latest"]),  # call object expected
    ("eth_call", [{"to": ADDRESS, "input": "0x1"}, "latest"]),
    ("eth_call", [{"to": ADDRESS, "value": "ten"}, "latest"]),
    ("eth_call", [{"to": ADDRESS}, "latest", {ADDRESS: {"state": {}, "stateDiff": {}}}]),
    ("eth_call", [{"to": ADDRESS}, "latest", {ADDRESS: {"balance": "0xq"}}]),
    ("eth_getLogs", [{"address": 5}]),
]


def test_bad_params_are_invalid_params(client):
    for method, params in BAD_PARAMS:
        reply = client.call(method, *params)
        assert reply["id"] == 7 and code_of(reply) == -32602, (method, params, reply)
    named = client.rpc_raw({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": {"address": ADDRESS}})
    assert named == error(-32602, "non-array params", 1)
    assert client.call("eth_getBalance", ADDRESS + "11", "latest")["error"]["message"] == (
        "invalid address: expected 20 bytes, got 21"
    )
    assert client.call("eth_chainId", 1)["error"]["message"] == "wrong number of arguments for eth_chainId"


def test_malformed_access_list_is_invalid_params(dev_node):
    client = Client(dev_node.http_url)  # its own node: the traceback it logs must not fail the others
    try:
        for access_list in ("abc", [1], [{"storageKeys": []}], [{"address": ADDRESS, "storageKeys": "x"}]):
            reply = client.call("eth_call", {"to": ADDRESS, "accessList": access_list}, "latest")
            assert code_of(reply) == -32602, reply
    finally:
        client.close()
    assert "Traceback" not in dev_node.log()


def test_batch_over_the_cap_is_refused_whole(client):
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(MAX_BATCH + 1)]
    assert client.rpc_raw(batch) == error(-32600, f"batch too large (limit {MAX_BATCH})")
    replies = client.rpc_raw(batch[:MAX_BATCH])
    assert [r["id"] for r in replies] == list(range(MAX_BATCH))
    assert {r["result"] for r in replies} == {"0x539"}


def test_notifications_get_no_response(client):
    assert client.post(json.dumps({"jsonrpc": "2.0", "method": "eth_chainId"})) == (200, b"")
    assert client.post(json.dumps({"jsonrpc": "2.0", "method": "eth_noSuchMethod"})) == (200, b"")
    assert client.post(json.dumps({"jsonrpc": "2.0", "method": "eth_getBalance", "params": [5]})) == (200, b"")
    only_notifications = [{"jsonrpc": "2.0", "method": "eth_blockNumber"}] * 3
    assert client.post(json.dumps(only_notifications)) == (200, b"")
    assert client.result("eth_blockNumber") == "0x0"


def test_mixed_batch_answers_each_entry_in_order(client):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_noSuchMethod"},
        {"jsonrpc": "2.0", "method": "eth_chainId"},  # notification: no entry
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBalance", "params": ["0x12", "latest"]},
        5,
        {"jsonrpc": "1.0", "id": 4, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": None, "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": 6, "method": "eth_getBalance", "params": [ADDRESS, "latest"]},
    ]
    replies = client.rpc_raw(batch)
    assert replies[0] == {"jsonrpc": "2.0", "id": 1, "result": "0x539"}
    assert replies[1] == error(-32601, "the method eth_noSuchMethod does not exist/is not available", "two")
    assert replies[2]["id"] == 3 and code_of(replies[2]) == -32602
    assert replies[3] == error(-32600, "invalid request")
    assert replies[4] == error(-32600, "invalid request", 4)
    assert replies[5] == {"jsonrpc": "2.0", "id": None, "result": "0x0"}
    assert replies[6] == {"jsonrpc": "2.0", "id": 6, "result": "0x0"}
    assert len(replies) == 7


def test_body_over_the_size_cap_is_413_and_the_node_keeps_serving(shared_node, client):
    # Declared over the cap: the node answers from the headers, without reading (or buffering) the body,
    # so the client reads the whole 413 before it would have sent all 5 MiB.
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
    ).encode()
    with socket.create_connection((client.host, client.port), timeout=60) as sock:
        sock.sendall(head + b"[" + b" " * 65_536)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
    assert (response.status, response.getheader("connection")) == (413, "close")
    assert int(response.getheader("content-length")) == len(data)
    assert json.loads(data) == error(-32600, "request body too large")
    # a body just under the cap is read and answered (here: wrong arity)
    at_cap = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":["' + b"a" * (MAX_BODY - 100) + b'"]}'
    assert client.rpc_raw(at_cap) == error(-32602, "wrong number of arguments for eth_chainId", 1)
    assert client.result("eth_chainId") == "0x539"


# -- transaction pool rejections through eth_sendRawTransaction --


def raw_tx(key: bytes, nonce: int, **fields: Any) -> str:
    """This file's transaction, 0x-hex: a transfer of 1 wei to ADDRESS unless the test says otherwise."""
    return sign_tx(key, nonce, **{"to": ADDRESS, "value": 1, **fields}).raw_hex


def send_error(client: Client, raw: str) -> str:
    reply = client.call("eth_sendRawTransaction", raw)
    assert code_of(reply) == -32000, reply
    return reply["error"]["message"]


def wait_for_receipt(client: Client, tx_hash: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the receipt (the node seals on demand, in the background) until it exists or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = client.result("eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            return receipt
        time.sleep(0.02)  # poll interval, as web3's wait_for_transaction_receipt
    raise AssertionError(f"no receipt for {tx_hash} within {timeout}s")


def test_pool_rejections_are_32000_with_geths_messages(dev_node, dev_accounts):
    client = Client(dev_node.http_url)
    try:
        _check_pool_rejections(client, dev_accounts)
    finally:
        client.close()
    assert "Traceback" not in dev_node.log()


def _check_pool_rejections(client: Client, dev_accounts: list[Any]) -> None:
    key, sender = dev_accounts[0].private_key, to_checksum_address(dev_accounts[0].address)
    mined = client.result("eth_sendRawTransaction", raw_tx(key, 0))
    assert wait_for_receipt(client, mined)["status"] == "0x1"

    assert send_error(client, raw_tx(key, 0, tip=2 * GWEI)) == "nonce too low: next nonce 1, tx nonce 0"
    queued = raw_tx(key, 5)
    client.result("eth_sendRawTransaction", queued)
    assert send_error(client, queued) == "already known"
    assert send_error(client, raw_tx(key, 5, value=2)) == "replacement transaction underpriced"
    assert send_error(client, raw_tx(key, 5, tip=GWEI * 11 // 10, max_fee=10 * GWEI)) == (
        "replacement transaction underpriced"  # the tip rose 10 %, the fee cap did not
    )
    client.result("eth_sendRawTransaction", raw_tx(key, 5, tip=GWEI * 11 // 10, max_fee=11 * GWEI))
    balance = int(client.result("eth_getBalance", sender, "latest"), 16)
    assert send_error(client, raw_tx(key, 1, value=balance)).startswith(
        f"insufficient funds for gas * price + value: balance {balance}, tx cost {balance + 21_000 * 10 * GWEI}"
    )
    assert send_error(client, raw_tx(key, 1, gas=20_000)) == "intrinsic gas too low: gas 20000, minimum needed 21000"
    base_fee = int(client.result("eth_getBlockByNumber", "pending", False)["baseFeePerGas"], 16)
    assert send_error(client, raw_tx(key, 1, tip=0, max_fee=base_fee - 1)) == (
        f"max fee per gas less than block base fee: address {sender}, maxFeePerGas: {base_fee - 1}, "
        f"baseFee: {base_fee}"
    )
    oversized = raw_tx(key, 1, gas=5_000_000, data=b"\x01" * (128 * 1024))
    assert send_error(client, oversized) == f"oversized data: transaction size {len(oversized) // 2 - 1}, limit 131072"
    tampered = bytes.fromhex(raw_tx(key, 1)[2:])
    items = rlp.decode(tampered[1:])
    items[10] = b""  # r = 0
    assert send_error(client, "0x" + (tampered[:1] + rlp.encode(items)).hex()).startswith("invalid sender")
    assert send_error(client, raw_tx(key, 1, chain_id=1)) == "invalid chain id for signer"
    assert send_error(client, "0x05c0") == "transaction type not supported"
    assert send_error(client, "0x") == "typed transaction too short"
    # nothing rejected reached the pool: only the queued nonce 5 waits
    assert client.result("eth_getTransactionCount", sender, "pending") == "0x1"
    assert client.result("eth_getTransactionCount", sender, "latest") == "0x1"


def test_pending_nonce_counts_the_gapless_run_only(node_factory, dev_accounts):
    node = node_factory("--block-time", "3600")  # no block during the test: the pool holds everything
    client = Client(node.http_url)
    try:
        key, sender = dev_accounts[1].private_key, to_checksum_address(dev_accounts[1].address)
        client.result("eth_sendRawTransaction", raw_tx(key, 1))
        client.result("eth_sendRawTransaction", raw_tx(key, 2))
        assert client.result("eth_getTransactionCount", sender, "pending") == "0x0"
        assert client.result("eth_getBlockTransactionCountByNumber", "pending") == "0x0"
        client.result("eth_sendRawTransaction", raw_tx(key, 0))
        assert client.result("eth_getTransactionCount", sender, "pending") == "0x3"
        assert client.result("eth_getTransactionCount", sender, "latest") == "0x0"
        assert client.result("eth_getBlockTransactionCountByNumber", "pending") == "0x3"
    finally:
        client.close()
    assert "Traceback" not in node.log()


def test_full_pool_refuses_underpriced_and_evicts_the_cheapest(node_factory, dev_accounts):
    node = node_factory("--block-time", "3600")
    client = Client(node.http_url)
    fillers = dev_accounts[1:9]  # 8 senders x 768 = the pool's 6144 slots; sender i tips (i + 1) gwei
    per_sender = POOL_SLOTS // len(fillers)
    try:
        hashes: dict[tuple[int, int], str] = {}
        batch: list[tuple[tuple[int, int], str]] = []
        for i, account in enumerate(fillers, start=1):
            for nonce in range(per_sender):
                batch.append(((i, nonce), raw_tx(account.private_key, nonce, tip=(i + 1) * GWEI, max_fee=20 * GWEI)))
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start:start + MAX_BATCH]
            replies = client.rpc_raw([
                {"jsonrpc": "2.0", "id": n, "method": "eth_sendRawTransaction", "params": [raw]}
                for n, (_, raw) in enumerate(chunk)
            ])
            for (slot, _), reply in zip(chunk, replies, strict=True):
                hashes[slot] = reply["result"]
        assert client.result("eth_getBlockTransactionCountByNumber", "pending") == hex(POOL_SLOTS)

        newcomer = dev_accounts[9].private_key
        assert send_error(client, raw_tx(newcomer, 0, tip=GWEI, max_fee=20 * GWEI)) == "transaction underpriced"
        assert send_error(client, raw_tx(newcomer, 0, tip=2 * GWEI, max_fee=20 * GWEI)) == "transaction underpriced"
        accepted = client.result("eth_sendRawTransaction", raw_tx(newcomer, 0, tip=3 * GWEI, max_fee=20 * GWEI))
        # the evicted one: the lowest tipper's highest nonce
        cheapest = to_checksum_address(fillers[0].address)
        assert client.result("eth_getTransactionByHash", hashes[(1, per_sender - 1)]) is None
        assert client.result("eth_getTransactionByHash", hashes[(1, per_sender - 2)])["nonce"] == hex(per_sender - 2)
        assert client.result("eth_getTransactionByHash", accepted)["hash"] == accepted
        assert client.result("eth_getTransactionCount", cheapest, "pending") == hex(per_sender - 1)
        assert client.result("eth_getBlockTransactionCountByNumber", "pending") == hex(POOL_SLOTS)
    finally:
        client.close()
    assert "Traceback" not in node.log()
