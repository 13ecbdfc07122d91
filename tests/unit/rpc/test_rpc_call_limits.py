"""eth_call / eth_estimateGas under --rpc.gascap and --rpc.evmtimeout, in process over a real Chain:
the timeout stops the execution itself (its thread ends), and the event loop keeps running meanwhile."""

from __future__ import annotations

import json

import trio

from ogpu_node.rpc.calls import CallLimits, go_duration
from ogpu_node.rpc.eth import EthApi
from ogpu_node.rpc.jsonrpc import JsonRpcProcessor
from ogpu_node.txpool import TxPool

LOOP = "0x5b600056"  # JUMPDEST PUSH1 0 JUMP: loops until out of gas
TARGET = "0x" + "42" * 20
RETURN_GAS = "0x5a60005260206000f3"  # GAS, store, return it: the gas the call was given, minus 2


def make_api(chain, **limits) -> JsonRpcProcessor:
    pool = TxPool(chain.chain_id, lambda a: chain.account(chain.head, a)[:2], lambda: (1, chain.head.gas_limit))
    api = EthApi(chain, pool, lambda _: None, call_limits=CallLimits(**limits))
    return JsonRpcProcessor(api.methods())


async def ask(rpc: JsonRpcProcessor, method: str, *params) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    return json.loads(await rpc.handle(body, None))


def test_go_duration_formats_as_geth_prints():
    assert go_duration(5.0) == "5s"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(0.25) == "250ms"


async def test_timeout_stops_a_looping_call_while_the_loop_serves_others(chain):
    """Rule: a looping eth_call with huge gas ends with geth's timeout error, and other requests
    are answered before it (the loop is not frozen)."""
    rpc = make_api(chain, evm_timeout_s=0.5)
    order: list[str] = []
    replies: dict[str, dict] = {}

    async def loop_call(method: str) -> None:
        replies[method] = await ask(rpc, method, {"to": TARGET, "gas": hex(100_000_000)}, "latest", {TARGET: {"code": LOOP}})
        order.append(method)

    async def others() -> None:
        await trio.sleep(0.05)
        for _ in range(3):
            assert (await ask(rpc, "eth_blockNumber"))["result"] == "0x0"
            order.append("other")
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop_call, "eth_call")
        nursery.start_soon(loop_call, "eth_estimateGas")
        nursery.start_soon(others)
    assert order[:3] == ["other"] * 3
    for method in ("eth_call", "eth_estimateGas"):
        assert replies[method]["error"] == {"code": -32000, "message": "execution aborted (timeout = 500ms)"}


async def test_gas_above_the_cap_is_capped_not_refused(chain):
    """Rule: caller gas above --rpc.gascap runs with the cap (geth), below it with the caller's."""
    rpc = make_api(chain, gas_cap=1_000_000)
    code = {TARGET: {"code": RETURN_GAS}}
    capped = await ask(rpc, "eth_call", {"to": TARGET, "gas": hex(100_000_000)}, "latest", code)
    given = int(capped["result"], 16)
    assert 1_000_000 - 21_000 - 10 < given < 1_000_000 - 21_000
    small = await ask(rpc, "eth_call", {"to": TARGET, "gas": hex(100_000)}, "latest", code)
    assert int(small["result"], 16) < 100_000 - 21_000
    loop = await ask(rpc, "eth_estimateGas", {"to": TARGET, "gas": hex(100_000_000)}, "latest", {TARGET: {"code": LOOP}})
    assert loop["error"] == {"code": -32000, "message": "gas required exceeds allowance (1000000)"}


async def test_override_nonce_beyond_64_bits_is_invalid_params(chain):
    """Rule: a state-override nonce >= 2^64 is a -32602 naming the value, not an internal error."""
    rpc = make_api(chain)
    reply = await ask(rpc, "eth_call", {"to": TARGET}, "latest", {TARGET: {"nonce": hex(1 << 64)}})
    assert reply["error"]["code"] == -32602
    assert "nonce" in reply["error"]["message"]
    ok = await ask(rpc, "eth_call", {"to": TARGET}, "latest", {TARGET: {"nonce": hex((1 << 64) - 1)}})
    assert ok["result"] == "0x"


async def test_non_finite_ids_are_never_echoed(chain):
    """Rule: an id of 1e400 (infinite as a float) or NaN is answered with id null, as valid JSON."""
    rpc = make_api(chain)
    for raw_id in ("1e400", "NaN", "-Infinity"):
        body = f'{{"jsonrpc":"2.0","id":{raw_id},"method":"eth_chainId","params":[]}}'.encode()
        reply = await rpc.handle(body, None)
        parsed = json.loads(reply, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        assert parsed == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request id"}}


async def test_a_batch_is_bounded_as_a_whole():
    """Rule: requests of a batch not started within batch_timeout_s are answered -32002 (geth), so a
    batch of slow calls cannot hold its connection for the sum of their timeouts."""

    async def slow(ctx):
        await trio.sleep(0.6)
        return "done"

    rpc = JsonRpcProcessor({"slow": slow}, batch_timeout_s=1.0)
    batch = [{"jsonrpc": "2.0", "id": i, "method": "slow"} for i in range(3)] + [{"jsonrpc": "2.0", "method": "slow"}]
    replies = json.loads(await rpc.handle(json.dumps(batch).encode(), None))
    assert replies == [
        {"jsonrpc": "2.0", "id": 0, "result": "done"},
        {"jsonrpc": "2.0", "id": 1, "result": "done"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32002, "message": "request timed out"}},
    ]  # the notification past the deadline gets no reply, as any notification
