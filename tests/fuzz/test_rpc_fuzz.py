"""RPC fuzzing (issue 10): every method the node serves, taken from its dispatch table, gets malformed
and hostile parameters; envelopes, batches, raw bodies and raw HTTP requests are broken in every way
listed in strategies.py. Every reply must be a well-formed JSON-RPC error or a correct answer
(replies.py), nothing may be logged as an internal error, and the node's memory must stay bounded over
more than 10,000 requests.

One in-process `--dev` node (node.py) serves the whole module: most messages go straight to its
JSON-RPC processor, a share over its HTTP port (one keep-alive connection), its WebSocket and raw TCP.
Hypothesis runs derandomized and without a database, so every run sends the same requests."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_hash.auto import keccak
from fuzz import strategies as fz
from fuzz.node import POOL_SLOTS, FuzzedNode, rss_bytes
from fuzz.replies import MAX_BATCH, check_answer, check_reply, request_of, strict_json, wants_reply
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from txfactory import GWEI, sign_tx

# Hypothesis warns when it prints a failing 200 kB parameter; such parameters are the point here.
pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore:Generating overly large repr")]

MIN_REQUESTS = 10_000
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
PER_METHOD_EXAMPLES = 80
ENVELOPE_EXAMPLES = 400
RAW_EXAMPLES = 300
TRANSPORT_EXAMPLES = 150
LOG_EXAMPLES = 100
RAW_TX_EXAMPLES = 100
FILTER_FLOOD = 10_500  # past MAX_FILTERS
BIG_FILTERS = 60  # x 5,000 values: past MAX_FILTER_VALUES, ~100 MiB if nothing bounded them
POOL_OVERFLOW = 50
FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                           HealthCheck.filter_too_much],
)
ROUTES = ["direct"] * 6 + ["http", "http", "ws"]
# init code returning a runtime that emits LOG1(TOPIC) with empty data on every call
TOPIC = keccak(b"ogpu fuzz log")
EMITTER_RUNTIME = b"\x7f" + TOPIC + bytes.fromhex("6000" "6000" "a1" "00")
EMITTER_INIT = bytes.fromhex("6027" "600c" "6000" "39" "6027" "6000" "f3") + EMITTER_RUNTIME


@dataclass
class Fuzz:
    node: FuzzedNode
    world: fz.World
    methods: dict[str, Any]
    signatures: dict[str, fz.Signature]
    rss_start: int = 0
    fuzzed: set[str] = field(default_factory=set)

    def send(self, body: bytes, route: str = "direct") -> list[tuple[dict[str, Any], Any]]:
        """Send one body by `route`, check the reply whole; the (request, reply) pairs of methods that ran."""
        request = request_of(body)
        calls = len(request) if isinstance(request, list) else 1
        if route == "http":
            status, headers, reply = self.node.post(body, calls)
            assert status == 200, (status, reply[:200])
            assert headers.get("content-type") == "application/json"
        elif route == "ws":
            reply = self.node.ws(body, expect_reply=_answered(request), calls=calls)
            if not _answered(request):  # nothing may come back: the next reply must be the sentinel's
                sentinel = b'{"jsonrpc":"2.0","id":"sentinel","method":"net_version","params":[]}'
                assert strict_json(self.node.ws(sentinel, expect_reply=True))["id"] == "sentinel"
        else:
            reply = self.node.handle(body, calls)
        self.raise_logged_errors()
        return check_reply(body, reply, set(self.methods))

    def call(self, method: str, *params: Any, route: str = "direct") -> dict[str, Any]:
        """A well-formed request; its checked reply."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        pairs = self.send(body, route)
        self.check_answers(pairs)
        return pairs[0][1]

    def result(self, method: str, *params: Any) -> Any:
        reply = self.call(method, *params)
        assert "result" in reply, reply
        return reply["result"]

    def check_answers(self, pairs: list[tuple[dict[str, Any], Any]]) -> None:
        for request, reply in pairs:
            method, params = request["method"], request.get("params") or []
            signature = self.signatures[method]
            check_answer(method, params, reply, signature.names, signature.accepts(len(params)))
            self.fuzzed.add(method)

    def raise_logged_errors(self) -> None:
        records, self.node.errors.records[:] = list(self.node.errors.records), []
        if records:
            text = "\n".join(f"{r.name}: {r.getMessage()}\n{_traceback(r)}" for r in records)
            raise AssertionError(f"the node logged errors:\n{text}")


def _traceback(record: logging.LogRecord) -> str:
    return logging.Formatter().formatException(record.exc_info) if record.exc_info else ""


def _answered(request: Any) -> bool:
    """Whether the node must send a message back for this body over a WebSocket."""
    if isinstance(request, list):
        return not request or len(request) > MAX_BATCH or any(wants_reply(item) for item in request)
    return not isinstance(request, dict) or wants_reply(request)


def _wait_for(fuzz: Fuzz, tx_hashes: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(fuzz.result("eth_getTransactionReceipt", h) for h in tx_hashes):
            return
        time.sleep(0.05)
    raise AssertionError("seed transactions were not mined")


def _seed(fuzz: Fuzz) -> fz.World:
    """A chain with blocks, a contract emitting logs, filters, and signed transactions kept for the fuzzer."""
    accounts = fuzz.node.accounts
    deployer = accounts[1]
    txs = [sign_tx(deployer, 0, data=EMITTER_INIT, gas=200_000)]
    receipt_of_deploy = txs[0].hash_hex
    txs += [sign_tx(deployer, n, to=accounts[2].address, value=n) for n in (1, 2)]
    for tx in txs:
        assert fuzz.result("eth_sendRawTransaction", tx.raw_hex) == tx.hash_hex
    _wait_for(fuzz, [tx.hash_hex for tx in txs])
    emitter = fuzz.result("eth_getTransactionReceipt", receipt_of_deploy)["contractAddress"]
    calls = [sign_tx(deployer, n, to=emitter, gas=50_000) for n in (3, 4, 5)]
    for tx in calls:
        fuzz.result("eth_sendRawTransaction", tx.raw_hex)
    _wait_for(fuzz, [tx.hash_hex for tx in calls])
    head = int(fuzz.result("eth_blockNumber"), 16)
    spender, poor = accounts[3], accounts[4]
    kept = [sign_tx(spender, n, to=emitter, gas=50_000) for n in range(6)]  # valid once each
    kept += [
        sign_tx(spender, 2**64 - 1, to=emitter),  # nonce has max value
        sign_tx(spender, 0, to=emitter, gas=10**9),  # above the block gas limit
        sign_tx(spender, 0, to=emitter, gas=30_000_000, data=b"\x01" * 200_000),  # oversized
        sign_tx(spender, 0, to=emitter, gas_price=GWEI * 10, chain_id=None),  # unprotected
        sign_tx(spender, 0, to=emitter, chain_id=1),  # another chain
        sign_tx(spender, 0, to=emitter, tip=GWEI * 10, max_fee=GWEI),  # tip above the fee cap
        sign_tx(spender, 0, to=emitter, tip=0, max_fee=1),  # below the base fee
        sign_tx(poor, 0, to=emitter, value=10**40),  # more than it has
        sign_tx(spender, 0, to=emitter, gas=1),  # intrinsic gas too low
    ]
    criteria = {"fromBlock": "earliest", "address": emitter, "topics": ["0x" + TOPIC.hex()]}
    filter_ids = [
        fuzz.result("eth_newFilter", criteria), fuzz.result("eth_newBlockFilter"),
        fuzz.result("eth_newPendingTransactionFilter"),
    ]
    blocks = [fuzz.result("eth_getBlockByNumber", hex(n), False) for n in range(head + 1)]
    return fz.World(
        head=head,
        accounts=["0x" + a.address.hex() for a in accounts],
        contracts=[emitter, *fz.NATIVE],
        block_hashes=[b["hash"] for b in blocks],
        tx_hashes=[tx.hash_hex for tx in txs + calls],
        topics=["0x" + TOPIC.hex(), "0x" + keccak(b"other").hex()],
        filter_ids=filter_ids,
        raw_txs=[tx.raw for tx in kept],
    )


def _warm_up(fuzz: Fuzz) -> None:
    """Each method by each route, plain and with a 200 kB parameter; full batches, deep nesting, the
    widest log query and filter, looping calls: so that caches, connections and the allocator's
    arenas have grown to what such traffic needs before the memory baseline is taken."""
    world = fuzz.world
    emitter = world.contracts[0]
    big = "0x" + "ab" * 100_000
    wide = {"fromBlock": "earliest", "address": [*fz.many_addresses(999), emitter], "topics": [[*world.topics] * 500]}
    for route in ("direct", "http", "ws"):
        for method in fuzz.methods:
            fuzz.call(method, route=route)
            fuzz.call(method, big, route=route)
        for batch in ([{"jsonrpc": "2.0", "id": i, "method": "eth_getBlockByNumber", "params": ["latest", True]}
                       for i in range(1000)], [fz.nested(511)]):
            fuzz.check_answers(fuzz.send(json.dumps(batch).encode(), route))
        fuzz.call("eth_getLogs", wide, route=route)
        filter_id = fuzz.result("eth_newFilter", wide)
        fuzz.call("eth_getFilterLogs", filter_id, route=route)
        fuzz.call("eth_uninstallFilter", filter_id, route=route)
        fuzz.call("eth_call", {"to": emitter, "gas": hex(10**10)}, "latest", {emitter: {"code": fz.LOOP}}, route=route)
        fuzz.call("eth_feeHistory", "0x400", "latest", [50] * 100, route=route)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory) -> Iterator[Fuzz]:
    node = FuzzedNode(tmp_path_factory.mktemp("fuzz"))
    node.start()
    try:
        methods = dict(node.node.rpc.methods)  # the dispatch table: a new method is fuzzed with the rest
        signatures = {name: fz.signature_of(fn) for name, fn in methods.items()}
        state = Fuzz(node, fz.World.empty(), methods, signatures)
        state.world = _seed(state)
        _warm_up(state)
        state.rss_start = rss_bytes()
        yield state
    finally:
        node.stop()


def _request(method: str, params: list[Any], request_id: Any, notify: bool) -> bytes:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if not notify:
        request["id"] = request_id
    return json.dumps(request).encode()


UNKNOWN_BLOCK = hex(2**40)
SHORT_ADDRESS = "0x" + "11" * 19
# Regressions, run first for their method: parameters that once got a wrong answer.
REGRESSIONS: dict[str, list[list[Any]]] = {
    # -32000 "header not found" for a malformed address, slot, call or override: the block was looked
    # up before the other parameters were parsed.
    "eth_getBalance": [[SHORT_ADDRESS, UNKNOWN_BLOCK]],
    "eth_getCode": [[SHORT_ADDRESS, UNKNOWN_BLOCK]],
    "eth_getStorageAt": [["0x" + "11" * 20, "0xg", UNKNOWN_BLOCK]],
    "eth_call": [[{}, UNKNOWN_BLOCK, {"0x12": {}}]],
    "eth_estimateGas": [[{}, UNKNOWN_BLOCK, {SHORT_ADDRESS: {"balance": "0xg"}}]],
    # The same for percentiles; and no limit on their number: 10,000 cost a pass each over every block's
    # receipts and a 10,000-wide reward row per block (geth allows 100).
    "eth_feeHistory": [["0x1", UNKNOWN_BLOCK, [90, 10]], ["0x400", "latest", [50] * 101]],
    # null for a malformed block: its -32602 was caught as "no such block".
    "eth_getBlockReceipts": [[["latest"]]],
    "eth_getTransactionByBlockNumberAndIndex": [["0xg", "0x0"], [UNKNOWN_BLOCK, "0x"]],
    # "0x0" whatever the parameter, and for blocks that do not exist.
    "eth_getUncleCountByBlockNumber": [[{"no": "block"}], [UNKNOWN_BLOCK]],
    "eth_getUncleCountByBlockHash": [["0x1234"]],
}


def _fuzz_method(fuzz: Fuzz, method: str) -> None:
    @settings(FUZZ, max_examples=PER_METHOD_EXAMPLES)
    @given(
        params=fz.params_for(fuzz.world, fuzz.signatures[method]), request_id=st.integers(0, 2**53),
        notify=st.integers(0, 9).map(lambda n: n == 0), route=st.sampled_from(ROUTES),
    )
    def run(params: list[Any], request_id: int, notify: bool, route: str) -> None:
        note(f"method {method}")
        fuzz.check_answers(fuzz.send(_request(method, params, request_id, notify), route))

    for params in REGRESSIONS.get(method, []):
        run = example(params=params, request_id=1, notify=False, route="direct")(run)
    run()


def test_every_method_answers_hostile_params(fuzz: Fuzz) -> None:
    """Rule: for every served method and any parameters, the reply is a well-formed JSON-RPC error or a
    correct answer, malformed simple parameters are -32602, and nothing is logged as an internal error."""
    for method in sorted(fuzz.methods):
        _fuzz_method(fuzz, method)
    assert fuzz.fuzzed == set(fuzz.methods)


def test_envelopes_and_batches(fuzz: Fuzz) -> None:
    """Rule: requests with a wrong or missing jsonrpc, id, method or params, and batches (empty,
    nested, mixed, at and over the limit), get exactly the replies JSON-RPC 2.0 prescribes."""
    methods = sorted(fuzz.methods)

    @settings(FUZZ, max_examples=ENVELOPE_EXAMPLES)
    @given(value=st.one_of(fz.requests_of(methods), fz.batches_of(methods)), route=st.sampled_from(ROUTES))
    def run(value: Any, route: str) -> None:
        fuzz.check_answers(fuzz.send(json.dumps(value).encode(), route))

    run()


def test_raw_bodies(fuzz: Fuzz) -> None:
    """Rule: bytes that are not JSON (invalid UTF-8, truncated, too deep, NaN, 1e400, 5000-digit
    numbers) get -32700 or, where Python's JSON reads them, a checked reply; never -32603."""

    @settings(FUZZ, max_examples=RAW_EXAMPLES)
    @given(body=fz.bodies, route=st.sampled_from(ROUTES))
    def run(body: bytes, route: str) -> None:
        fuzz.check_answers(fuzz.send(body, route))

    run()


HTTP_STATUSES = {200, 204, 400, 401, 403, 404, 405, 411, 413, 415, 431, 501, 503, 505, 507}


def _status_lines(reply: bytes) -> list[int]:
    """The status of each HTTP response in what came back (pipelined requests get several)."""
    return [int(line[9:12]) for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit()]


def test_http_transport(fuzz: Fuzz) -> None:
    """Rule: malformed HTTP (bad request lines, lengths, chunking, hosts, content types, huge headers)
    gets a 4xx response or a closed connection, never a 500 or a hang, and the port keeps serving."""

    @settings(FUZZ, max_examples=TRANSPORT_EXAMPLES)
    @given(request=fz.http_requests)
    def run(request: bytes) -> None:
        reply = fuzz.node.raw(request)
        fuzz.raise_logged_errors()
        statuses = _status_lines(reply)
        assert reply == b"" or statuses, f"not HTTP: {reply[:200]!r}"
        assert set(statuses) <= HTTP_STATUSES, f"{statuses} for {request[:200]!r}"
        assert fuzz.call("net_version", route="http")["result"] == "1337"

    run()


def _receipt_logs(fuzz: Fuzz) -> list[dict[str, Any]]:
    """Every log of the chain, read through the receipts (not through the log index)."""
    head = int(fuzz.result("eth_blockNumber"), 16)
    return [log for n in range(head + 1) for receipt in fuzz.result("eth_getBlockReceipts", hex(n)) for log in receipt["logs"]]


def _matches(criteria: dict[str, Any], log: dict[str, Any], head: int) -> bool:
    number = int(log["blockNumber"], 16)
    first, last = (_number(criteria.get(k), head) for k in ("fromBlock", "toBlock"))
    if not first <= number <= last:
        return False
    wanted = criteria.get("address")
    if wanted and log["address"] not in ([wanted] if isinstance(wanted, str) else wanted):  # [] is any
        return False
    for position, topics in enumerate(criteria.get("topics", [])):
        if not topics:  # null or [] is any topic
            continue
        if position >= len(log["topics"]) or log["topics"][position] not in ([topics] if isinstance(topics, str) else topics):
            return False
    return True


def _number(block: Any, head: int) -> int:
    return 0 if block == "earliest" else head if block in (None, "latest", "pending", "safe", "finalized") else int(block, 16)


def test_logs_match_the_receipts(fuzz: Fuzz) -> None:
    """Rule: eth_getLogs over any range (to 2**248), with up to 1,000 addresses and topic lists,
    returns exactly the logs the receipts hold that match, in order; a reversed range is -32602."""
    world = fuzz.world
    everything = _receipt_logs(fuzz)
    head = int(fuzz.result("eth_blockNumber"), 16)
    assert everything, "the seeded chain has logs"
    # 2**248: a number as wide as a block number can be written (64 hex digits would be a block hash)
    block = st.one_of(st.sampled_from(fz.TAGS), st.integers(0, head + 2).map(hex), st.just(hex(2**248)))
    address = st.sampled_from([world.contracts[0], *world.contracts[1:], world.accounts[0]])
    topic = st.sampled_from(world.topics)
    query = st.fixed_dictionaries({}, optional={
        "fromBlock": block, "toBlock": block,
        "address": st.one_of(address, st.lists(address, max_size=3), st.just([*fz.many_addresses(999), world.contracts[0]])),
        "topics": st.lists(st.one_of(st.none(), topic, st.lists(topic, max_size=2), st.just([*world.topics] * 500)), max_size=4),
    })

    @settings(FUZZ, max_examples=LOG_EXAMPLES)
    @given(criteria=query, route=st.sampled_from(ROUTES))
    def run(criteria: dict[str, Any], route: str) -> None:
        reply = fuzz.call("eth_getLogs", criteria, route=route)
        if _number(criteria.get("fromBlock"), head) > _number(criteria.get("toBlock"), head):
            assert reply["error"]["code"] == -32602, reply
            return
        assert reply["result"] == [log for log in everything if _matches(criteria, log, head)]

    run()
    assert int(fuzz.result("eth_blockNumber"), 16) == head  # the receipts read are still the chain


def test_hostile_but_plausible_requests(fuzz: Fuzz) -> None:
    """Rule: requests that are well-formed and meant to hurt get the node's limits as errors: a loop
    with 200x the gas cap stops at --rpc.evmtimeout, 101 fee percentiles and 1,001 addresses are
    -32602, a signed transaction mangled in any way is refused and the pool is unchanged."""
    world = fuzz.world
    emitter = world.contracts[0]
    for method in ("eth_call", "eth_estimateGas"):
        reply = fuzz.call(method, {"to": emitter, "gas": hex(10**10)}, "latest", {emitter: {"code": fz.LOOP}})
        assert reply["error"] == {"code": -32000, "message": "execution aborted (timeout = 250ms)"}
    reply = fuzz.call("eth_feeHistory", "0x400", "latest", [50] * 101)
    assert reply["error"] == {"code": -32602, "message": "invalid reward percentile: over the query limit 100"}
    assert len(fuzz.result("eth_feeHistory", "0x400", "latest", [50] * 100)["reward"][0]) == 100
    reply = fuzz.call("eth_getLogs", {"fromBlock": "0x0", "toBlock": hex(2**256 - 1), "address": fz.many_addresses(1001)})
    assert reply["error"] == {"code": -32602, "message": "exceed max addresses (limit 1000)"}
    pool_before = fuzz.node.call_soon(fuzz.node.node.pool.counts)

    @settings(FUZZ, max_examples=RAW_TX_EXAMPLES)
    @given(raw=st.one_of(
        st.builds(fz.mutate_tx, st.sampled_from(world.raw_txs), st.sampled_from(fz.TX_MUTATIONS),
                  st.integers(0, 300), st.integers(1, 255)),
        fz.raw_txs_of(world).filter(lambda raw: bytes.fromhex(raw[2:]) not in world.raw_txs),
    ))
    def run(raw: str) -> None:
        reply = fuzz.call("eth_sendRawTransaction", raw)
        assert reply.get("error", {}).get("code") in (-32000, -32602), reply
        assert fuzz.node.call_soon(fuzz.node.node.pool.counts) == pool_before

    run()


def test_memory_and_state_stay_bounded(fuzz: Fuzz) -> None:
    """Rule: over more than 10,000 requests (the fuzzing above, then floods of 10,500 filters, of
    filters holding 1,000 addresses each, and of queued transactions past the pool's size), the
    filters and the pool stay within the node's own limits and its RSS grows by less than 64 MiB."""
    node = fuzz.node
    first = fuzz.result("eth_newBlockFilter")
    for i in range(FILTER_FLOOD):
        kind = ("eth_newBlockFilter", "eth_newPendingTransactionFilter", "eth_newFilter")[i % 3]
        fuzz.result(kind, *([{"address": fz.many_addresses(2)}] if kind == "eth_newFilter" else []))
    assert fuzz.call("eth_getFilterChanges", first)["error"] == {"code": -32000, "message": "filter not found"}
    for i in range(BIG_FILTERS):
        criteria = {"fromBlock": "earliest", "address": [f"0x{i:08x}{j:032x}" for j in range(1000)],
                    "topics": [[f"0x{i:08x}{k}{j:055x}" for j in range(1000)] for k in range(4)]}
        fuzz.result("eth_getFilterLogs", fuzz.result("eth_newFilter", criteria))  # polled: its blooms are made
    watcher = fuzz.result("eth_newPendingTransactionFilter")
    pooled_before = sum(node.call_soon(node.node.pool.counts))
    flooder = node.accounts[6]
    accepted = []
    for nonce in range(1, POOL_SLOTS + POOL_OVERFLOW + 1):  # nonce 0 never comes: all stay queued
        tx = sign_tx(flooder, nonce, to=flooder.address)
        reply = fuzz.call("eth_sendRawTransaction", tx.raw_hex)
        if "result" in reply:
            accepted.append(tx.hash_hex)
        else:
            assert reply["error"] == {"code": -32000, "message": "transaction underpriced"}
    assert sum(node.call_soon(node.node.pool.counts)) == POOL_SLOTS
    assert len(accepted) == POOL_SLOTS - pooled_before  # then refused: same tip, nothing to evict
    assert fuzz.result("eth_getFilterChanges", watcher) == accepted
    growth = rss_bytes() - fuzz.rss_start
    print(f"\n{node.counts.messages} messages, {node.counts.calls} requests; RSS {fuzz.rss_start >> 20} MiB "
          f"after the warm-up, grew by {growth / 2**20:.1f} MiB")
    assert node.counts.messages >= MIN_REQUESTS
    assert growth < RSS_GROWTH_LIMIT
