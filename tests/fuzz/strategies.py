"""Hypothesis strategies for hostile JSON-RPC traffic: hostile values of every JSON type, values that
look right but are not (odd-length or non-hex hex, 2**256, wrong sizes, mis-cased tags), values that
are right and hostile (loops with huge gas, 1,000-address filters, mutated signed transactions), and
whole bodies and HTTP requests that break the envelope or the transport.

`params_for` chooses a method's parameters from its signature: a parameter whose name is known here
gets plausible values of its kind mixed with hostile ones; any other parameter gets hostile values, so
a new method is fuzzed as soon as it is served."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rlp
from hypothesis import strategies as st

from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import load_abi

TAGS = ["latest", "earliest", "pending", "safe", "finalized"]
EDGE_INTS = [0, 1, -1, 2**31, 2**53 + 1, 2**63, 2**64 - 1, 2**64, 2**255, 2**256 - 1, 2**256, -(2**256), 10**80]
EDGE_STRINGS = [
    "", "0x", "0X", "0x0", "0x00", "0x1", "0X1", "0xg", "0x 1", " 0x1", "0x1 ", "0x1\n", "0x1_0", "+0x1",
    "-0x1", "0x-1", "0x" + "f" * 64, "0x1" + "0" * 64, "0x" + "0" * 100 + "1", "0x\u0661", "0x\uff11",
    "Latest", "LATEST", "pending ", "null", "true", "NaN", "Infinity", "\x00", "\ud800", "0x" + "ab" * 20 + "\n",
    "0x" + "0" * 39, "0x" + "0" * 41, "0x" + "0" * 63, "0x" + "0" * 65, "ß" * 10, "\u202e0x1",
]
FIELD_NAMES = [
    "from", "to", "gas", "gasPrice", "value", "data", "input", "nonce", "blockHash", "blockNumber", "fromBlock",
    "toBlock", "address", "topics", "requireCanonical", "code", "balance", "state", "stateDiff", "__proto__",
]
LOOP = "0x5b600056"  # JUMPDEST PUSH1 0 JUMP: loops until gas or time runs out
SELECTORS = [
    fn.selector for name in ("Stake", "Task", "Bid", "Slashing") for fn in load_abi(name).functions.values()
]
NATIVE = ["0x" + a.hex() for a in addresses.ALL]


@dataclass(frozen=True)
class World:
    """What the seeded chain holds, so that plausible values hit real blocks, accounts and filters."""

    head: int
    accounts: list[str]  # funded dev accounts
    contracts: list[str]  # a log emitter and the native contracts
    block_hashes: list[str]
    tx_hashes: list[str]
    topics: list[str]
    filter_ids: list[str]
    raw_txs: list[bytes]  # signed: some valid, some refused by the pool's rules

    @staticmethod
    def empty() -> World:
        return World(0, [], [], [], [], [], [], [])


# -- hostile values --

ints = st.one_of(st.integers(), st.sampled_from(EDGE_INTS))
scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(EDGE_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=10,
)


def nested(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"blockNumber": value}
    return value


deep = st.tuples(st.sampled_from([64, 400, 511, 513, 600]), st.sampled_from(["list", "dict"])).map(
    lambda t: nested(t[0], "latest", t[1])
)
huge = st.sampled_from([1_000, 100_000]).flatmap(
    lambda n: st.sampled_from(["0x" + "ab" * n, "0x" + "f" * (2 * n + 1), "x" * n, [0] * (n // 4)])
)


def hex_of(size_min: int = 0, size_max: int = 40) -> st.SearchStrategy[str]:
    return st.binary(min_size=size_min, max_size=size_max).map(lambda b: "0x" + b.hex())


def _spoil(text: str, how: str, at: int) -> str:
    """A hex string bent one way: most ways make it malformed, some (upper case, shorter) may not."""
    at = 2 + at % max(1, len(text) - 1)
    return {
        "odd": text[:-1] if len(text) > 2 else text + "1",
        "upper": "0X" + text[2:].upper(),
        "bare": text[2:],
        "nonhex": text[:at] + "g" + text[at + 1:],
        "space": text[:at] + " " + text[at:],
        "sign": "-" + text,
        "longer": text + "00",
        "shorter": text[:-2],
    }[how]


SPOILS = ["odd", "upper", "bare", "nonhex", "space", "sign", "longer", "shorter"]


def spoiled(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(_spoil, base, st.sampled_from(SPOILS), st.integers(0, 200))


_common = st.one_of(scalars, spoiled(hex_of()), json_values)
hostile = st.one_of(*[_common] * 8, st.one_of(deep, huge))  # one draw in 9 is deep or huge: they are slow


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible kind, sometimes anything."""
    return st.one_of(plausible, plausible, hostile)


# -- plausible values of each kind --

quantities = st.one_of(
    st.integers(0, 2**64).map(hex), st.sampled_from([n for n in EDGE_INTS if n >= 0]).map(hex),
    st.integers(0, 2**256 - 1), st.sampled_from(["0x0", "0x00", "0X1", "0x" + "0" * 70 + "1"]),
)


def addresses_of(world: World) -> st.SearchStrategy[str]:
    known = st.sampled_from(world.accounts + world.contracts)
    return st.one_of(known, known.map(str.upper).map(lambda a: "0x" + a[2:]), hex_of(20, 20), spoiled(known))


def hashes_of(known: list[str]) -> st.SearchStrategy[str]:
    pick = st.sampled_from(known)
    return st.one_of(pick, hex_of(32, 32), spoiled(pick))


def blocks_of(world: World) -> st.SearchStrategy[Any]:
    numbers = st.one_of(st.integers(0, world.head + 3).map(hex), st.sampled_from(EDGE_INTS).map(hex))
    return st.one_of(
        st.sampled_from(TAGS), numbers, hashes_of(world.block_hashes),
        st.fixed_dictionaries({}, optional={
            "blockHash": either(hashes_of(world.block_hashes)),
            "blockNumber": either(numbers),
            "requireCanonical": either(st.booleans()),
        }),
    )


def data_of() -> st.SearchStrategy[str]:
    calldata = st.builds(lambda s, rest: "0x" + s.hex() + rest.hex(), st.sampled_from(SELECTORS), st.binary(max_size=200))
    return st.one_of(hex_of(0, 64), calldata, st.just(LOOP))


def access_lists_of(world: World) -> st.SearchStrategy[Any]:
    entry = st.fixed_dictionaries(
        {"address": either(addresses_of(world))}, optional={"storageKeys": either(st.lists(hex_of(32, 32), max_size=3))}
    )
    return st.lists(either(entry), max_size=3)


def calls_of(world: World) -> st.SearchStrategy[Any]:
    """A transaction object for eth_call and eth_estimateGas."""
    fields = {
        "from": addresses_of(world), "to": st.one_of(st.sampled_from(world.contracts), addresses_of(world)),
        "gas": st.one_of(quantities, st.just(hex(10**9))), "gasPrice": quantities, "maxFeePerGas": quantities,
        "maxPriorityFeePerGas": quantities, "value": quantities, "data": data_of(), "input": data_of(),
        "accessList": access_lists_of(world), "nonce": quantities, "type": quantities, "chainId": quantities,
    }
    return st.fixed_dictionaries({}, optional={**{k: either(v) for k, v in fields.items()}, "junk": hostile})


def keys(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """Object keys: JSON has only strings there."""
    return st.one_of(plausible.filter(lambda k: isinstance(k, str)), st.sampled_from(EDGE_STRINGS), st.text(max_size=8))


def overrides_of(world: World) -> st.SearchStrategy[Any]:
    slots = st.dictionaries(keys(quantities), either(quantities), max_size=3)
    account = st.fixed_dictionaries({}, optional={
        "balance": either(quantities), "nonce": either(quantities),
        "code": either(st.one_of(st.just(LOOP), hex_of(0, 64))), "state": either(slots), "stateDiff": either(slots),
    })
    return st.dictionaries(keys(addresses_of(world)), either(account), max_size=3)


def many_addresses(count: int) -> list[str]:
    return [f"0x{i:040x}" for i in range(1, count + 1)]


def criteria_of(world: World) -> st.SearchStrategy[Any]:
    """A log filter: ranges as wide as numbers go, up to 1,001 addresses, up to 5 topic positions."""
    topic = st.one_of(hashes_of(world.topics), st.none())
    position = st.one_of(st.none(), topic, st.lists(either(topic), max_size=3), st.just([world.topics[0]] * 1001))
    address = st.one_of(
        addresses_of(world), st.lists(either(addresses_of(world)), max_size=4),
        st.sampled_from([1000, 1001]).map(many_addresses),
    )
    return st.fixed_dictionaries({}, optional={
        "fromBlock": either(blocks_of(world)), "toBlock": either(blocks_of(world)),
        "address": either(address), "topics": either(st.lists(either(position), max_size=5)),
        "blockHash": either(hashes_of(world.block_hashes)), "junk": hostile,
    })


TX_MUTATIONS = ["truncate", "flip", "append", "retype", "untype", "relist"]


def mutate_tx(raw: bytes, how: str, at: int, byte: int) -> str:
    """A signed transaction spoiled one way; never the transaction itself."""
    at %= max(1, len(raw))
    out = {
        "truncate": raw[:at],
        "flip": raw[:at] + bytes([raw[at] ^ (byte or 1)]) + raw[at + 1:],
        "append": raw + bytes([byte]) * (1 + at % 8),
        "retype": bytes([byte % 8]) + raw[1:],
        "untype": raw[1:],
        "relist": rlp.encode(rlp.decode(raw[1:])[: at % 12]) if raw[0] < 0x7F else raw[:-1],
    }[how]
    return "0x" + (out if out != raw else raw + b"\x00").hex()


def _rlp_junk(items: list[Any], prefix: int | None) -> str:
    body = rlp.encode(items)
    return "0x" + (b"" if prefix is None else bytes([prefix])).hex() + body.hex()


def raw_txs_of(world: World) -> st.SearchStrategy[str]:
    """Signed transactions, mutated ones (truncated, flipped, retyped, fields dropped), and RLP junk."""
    signed = st.sampled_from(world.raw_txs)
    rlp_item = st.one_of(st.binary(max_size=40), st.integers(0, 2**300).map(lambda n: n.to_bytes((n.bit_length() + 7) // 8, "big")))
    junk = st.builds(
        _rlp_junk, st.lists(st.one_of(rlp_item, st.lists(rlp_item, max_size=3)), max_size=14),
        st.sampled_from([None, 1, 2, 3, 4, 0x7F]),
    )
    mutated = st.builds(mutate_tx, signed, st.sampled_from(TX_MUTATIONS), st.integers(0, 300), st.integers(0, 255))
    return st.one_of(signed.map(lambda raw: "0x" + raw.hex()), mutated, junk, hex_of(0, 120))


def percentiles_of() -> st.SearchStrategy[Any]:
    number = st.one_of(st.integers(-5, 105), st.floats(-1, 101, allow_nan=False))
    return st.one_of(
        st.lists(number, max_size=6), st.lists(number, max_size=6).map(sorted),
        st.sampled_from([100, 101, 10_000]).map(lambda n: [50] * n),
    )


def filter_ids_of(world: World) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(world.filter_ids), hex_of(16, 16), spoiled(st.sampled_from(world.filter_ids)))


def plausible(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """Plausible values by the parameter names the node's methods use."""
    block = blocks_of(world)
    return {
        "addr": addresses_of(world), "block": block, "newest": block, "block_hash": hashes_of(world.block_hashes),
        "tx_hash": hashes_of(world.tx_hashes), "slot": quantities, "index": quantities,
        "count": st.one_of(quantities, st.sampled_from(["0x400", "0x401"])), "full": st.booleans(),
        "tx": calls_of(world), "overrides": overrides_of(world), "criteria": criteria_of(world),
        "filter_id": filter_ids_of(world), "sub_id": filter_ids_of(world), "raw": raw_txs_of(world),
        "kind": st.sampled_from(["newHeads", "logs", "newPendingTransactions", "syncing", "", "NEWHEADS"]),
        "percentiles": percentiles_of(), "value": st.one_of(hex_of(0, 64), huge),
    }


@dataclass(frozen=True)
class Signature:
    names: list[str]  # positional parameters after the session
    required: int
    variadic: bool

    def accepts(self, count: int) -> bool:
        return self.required <= count and (self.variadic or count <= len(self.names))


def signature_of(method: Callable[..., Any]) -> Signature:
    """The parameters a served method takes after its session argument."""
    params = list(inspect.signature(method).parameters.values())[1:]
    positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    required = sum(p.default is inspect.Parameter.empty for p in positional)
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return Signature([p.name for p in positional], required, variadic)


def params_for(world: World, signature: Signature) -> st.SearchStrategy[list[Any]]:
    """Right arity (each value plausible or hostile), too few, or too many."""
    by_name = plausible(world)
    values = [either(by_name[name]) if name in by_name else hostile for name in signature.names]
    right = st.integers(signature.required, len(values)).flatmap(lambda n: st.tuples(*values[:n]).map(list))
    extra = st.builds(lambda ps, more: ps + more, st.tuples(*values).map(list), st.lists(hostile, min_size=1, max_size=3))
    few = st.integers(0, max(0, signature.required - 1)).flatmap(lambda n: st.tuples(*values[:n]).map(list))
    return st.one_of(right, right, right, extra, few)


# -- envelopes, bodies and HTTP --

ids = st.one_of(
    st.integers(), st.sampled_from([2**64, 10**30, -1, 0]), st.text(max_size=8), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def requests_of(methods: list[str]) -> st.SearchStrategy[Any]:
    """A request object with any of its parts wrong (or missing), or not an object at all."""
    method = st.one_of(st.sampled_from(methods), st.sampled_from(["", "eth_", "ETH_CHAINID", "rpc.discover"]), hostile)
    request = st.fixed_dictionaries(
        {"jsonrpc": st.one_of(st.just("2.0"), st.just("2.0"), st.sampled_from(["2", "1.0", 2.0, None, ""]))},
        optional={
            "id": ids, "method": st.one_of(st.sampled_from(methods), method),
            "params": st.one_of(st.lists(hostile, max_size=4), st.none(), hostile),
            "result": hostile, "error": hostile, "extra": hostile,
        },
    )
    return st.one_of(request, request, request, hostile)


def batches_of(methods: list[str]) -> st.SearchStrategy[Any]:
    item = requests_of(methods)
    return st.one_of(
        st.lists(item, max_size=12), st.lists(st.lists(item, max_size=3), min_size=1, max_size=3),
        st.sampled_from([1000, 1001]).map(lambda n: [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(n)]),
    )


def _with_raw(template: dict[str, Any], raw: str) -> bytes:
    """A request whose id or parameter is raw JSON-ish text json.dumps cannot write (NaN, 1e400 ...)."""
    return json.dumps(template).replace('"@RAW@"', raw).encode()


RAW_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000, "-0", "1.0e-400", "0.1e1", "00", "01", "1."]
bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"\xc3\x28}', b"\xef\xbb\xbf{}", b"\x00" * 8]),
    st.builds(
        _with_raw,
        st.sampled_from([
            {"jsonrpc": "2.0", "id": "@RAW@", "method": "eth_chainId"},
            {"jsonrpc": "2.0", "id": 1, "method": "eth_feeHistory", "params": ["0x1", "latest", ["@RAW@"]]},
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": ["@RAW@", "latest"]},
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["@RAW@", "@RAW@"]},
            {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"gas": "@RAW@"}]},
        ]),
        st.sampled_from(RAW_TOKENS),
    ),
    st.builds(lambda n, cut: b'{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest",true]}'[:cut] + b"["[:n],
              st.integers(0, 1), st.integers(0, 80)),
    st.sampled_from([511, 512, 513, 100_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([
        b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","id":2}',
        '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}'.encode("utf-16"),
        b'  \n{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}\n  ', b"null", b"true", b"1", b'"x"', b"[]", b"{}",
        b"[[]]", b"[{}]", b"[1,2,3]",
    ]),
)


def _http_request(
    method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes, honest: bool, repeat: int
) -> bytes:
    """An HTTP request; `honest`: with the Host, JSON content type and length a client would send
    (then only the other parts are hostile); `repeat`: pipelined that many times."""
    if honest:
        headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers]
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return (head.encode("utf-8", "surrogatepass") + body) * repeat


CHUNKED_BODIES = [
    b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"5\r\nhel",
    b"2f\r\n" + b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' + b"\r\n0\r\n\r\n",
]
RPC_BODIES = [b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}', b'[{"jsonrpc":"2.0","id":1,"method":"net_version"}]', b"{"]
http_requests = st.builds(
    _http_request,
    st.one_of(st.just("POST"), st.sampled_from(["GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "POST ", "", "\x00"])),
    st.one_of(st.just("/"), st.sampled_from(["*", "//", "/%00", "/blobs/", "/blobs/0x1234", "/blobs/" + "a" * 64, "/" + "a" * 9000])),
    st.one_of(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/2", "HTTP/1.1x", "", "HTTP/9.9"])),
    st.lists(st.sampled_from([
        ("Host", "127.0.0.1"), ("Host", "evil.example"), ("Host", ""), ("Content-Type", "application/json"),
        ("Content-Type", "text/plain"), ("Content-Length", "0"), ("Content-Length", "5"), ("Content-Length", "-1"),
        ("Content-Length", "999999999999"), ("Content-Length", "abc"), ("Transfer-Encoding", "chunked"),
        ("Transfer-Encoding", "gzip, chunked"), ("Expect", "100-continue"), ("Connection", "close"),
        ("Origin", "http://evil.example"), ("X-Junk", "a" * 10_000), (" bad", "header"), ("Bad Name", "x"),
    ]), max_size=3),
    st.one_of(st.sampled_from(RPC_BODIES), st.binary(max_size=64), st.sampled_from(CHUNKED_BODIES)),
    st.booleans(),
    st.sampled_from([1, 1, 1, 3]),
)
