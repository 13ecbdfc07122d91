"""What every reply must be, written from the JSON-RPC 2.0 spec and docs/rpc.md, not from the node's
code: strict JSON, `"jsonrpc": "2.0"`, the request's id (null where the id could not be read), exactly
one of result and error, an error code in the spec's ranges (never -32603: every fuzzed input is a
client's), one reply per request of a batch in order, none for a notification. Then the answers:
the shape of each method's result, and for methods whose parameters are all simple values (address,
hash, quantity, block, flag, data) whether the node refused exactly the malformed ones."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from eth_hash.auto import keccak

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SERVER_ERRORS = range(-32099, -31999)  # -32000 to -32099: implementation-defined (geth's -32000, -32002, -32005)
EXECUTION_REVERTED = 3  # geth: a revert with data
MAX_NESTING = 512  # the node parses no deeper (a deeper body is a parse error)
MAX_BATCH = 1000  # docs/rpc.md
TAGS = ("latest", "earliest", "pending", "safe", "finalized")
CHAIN_ID = 1337

_QUANTITY = re.compile(r"0x(?:0|[1-9a-f][0-9a-f]*)")
_DATA = re.compile(r"0x(?:[0-9a-f]{2})*")
_HASH = re.compile(r"0x[0-9a-f]{64}")
_FILTER_ID = re.compile(r"0x[0-9a-f]{32}")
_HEX_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+")
_HEX_BYTES = re.compile(r"0[xX](?:[0-9a-fA-F]{2})*")


class Unparsable:
    """A body the node cannot parse: its one reply is -32700 with id null."""


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"reply holds {name}: not JSON")


def strict_json(data: bytes) -> Any:
    """RFC 8259 JSON in UTF-8: Python's NaN, Infinity and -Infinity are refused."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def nesting(body: bytes) -> int:
    """Deepest bracket nesting outside strings (a scan: a body too deep for json.loads must not be parsed)."""
    if body.count(b"[") + body.count(b"{") <= MAX_NESTING:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def request_of(body: bytes) -> Any:
    """The request a body carries as a JSON-RPC server reads it, or Unparsable."""
    if nesting(body) > MAX_NESTING:
        return Unparsable
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return Unparsable


# -- the envelope --


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
        return False
    return not (isinstance(value, float) and value != value or value in (float("inf"), float("-inf")))


def _same_id(sent: Any, echoed: Any) -> bool:
    return type(sent) is type(echoed) and sent == echoed


def wants_reply(item: Any) -> bool:
    """Everything gets a reply but a well-formed notification (JSON-RPC 2.0 §4.1)."""
    if not isinstance(item, dict) or "id" in item:
        return True
    well_formed = item.get("jsonrpc") == "2.0" and isinstance(item.get("method"), str)
    return not (well_formed and isinstance(item.get("params", []), (list, type(None))))


def check_error(reply: Any, request_id: Any, codes: Callable[[int], bool] | set[int] | None = None) -> dict[str, Any]:
    check_envelope(reply, request_id)
    assert "error" in reply, f"expected an error, got {reply!r}"
    code = reply["error"]["code"]
    if codes is not None:
        assert (code in codes) if isinstance(codes, set) else codes(code), f"unexpected code in {reply!r}"
    return reply["error"]


def check_envelope(reply: Any, request_id: Any) -> None:
    assert isinstance(reply, dict), f"a reply must be an object: {reply!r}"
    assert set(reply) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), f"fields of {reply!r}"
    assert reply["jsonrpc"] == "2.0", reply
    assert _same_id(request_id, reply["id"]), f"id {request_id!r} echoed as {reply['id']!r}"
    if "error" in reply:
        error = reply["error"]
        assert isinstance(error, dict) and {"code", "message"} <= set(error) <= {"code", "message", "data"}, reply
        code = error["code"]
        assert isinstance(code, int) and not isinstance(code, bool), reply
        assert code != INTERNAL_ERROR, f"internal error for a client's request: {reply!r}"
        assert code in (PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, EXECUTION_REVERTED) or (
            code in SERVER_ERRORS
        ), f"code outside the JSON-RPC ranges: {reply!r}"
        assert isinstance(error["message"], str) and error["message"], reply


def _check_item(item: Any, reply: Any, methods: set[str]) -> tuple[dict[str, Any], Any] | None:
    """One request's reply; (request, reply) when the method ran, for the answer's checks."""
    if not isinstance(item, dict):
        check_error(reply, None, {INVALID_REQUEST})
        return None
    if "id" in item and not _valid_id(item["id"]):
        check_error(reply, None, {INVALID_REQUEST})
        return None
    request_id = item.get("id")
    if item.get("jsonrpc") != "2.0" or not isinstance(item.get("method"), str):
        check_error(reply, request_id, {INVALID_REQUEST})
        return None
    if not isinstance(item.get("params", []), (list, type(None))):
        check_error(reply, request_id, {INVALID_PARAMS})
        return None
    if item["method"] not in methods:
        check_error(reply, request_id, {METHOD_NOT_FOUND})
        return None
    check_envelope(reply, request_id)
    return item, reply


def check_reply(body: bytes, reply: bytes | None, methods: set[str]) -> list[tuple[dict[str, Any], Any]]:
    """Check a whole reply against its body; returns the (request, reply) pairs of methods that ran."""
    request = request_of(body)
    if request is Unparsable:
        assert reply, f"no reply to an unparsable body {body[:80]!r}"
        check_error(strict_json(reply), None, {PARSE_ERROR})
        return []
    if isinstance(request, list):
        if not request or len(request) > MAX_BATCH:
            assert reply, "no reply to an empty or oversized batch"
            check_error(strict_json(reply), None, {INVALID_REQUEST})
            return []
        answered = [item for item in request if wants_reply(item)]
        if not answered:
            assert not reply, f"a batch of notifications was answered: {reply!r}"
            return []
        assert reply, "no reply to a batch with requests"
        replies = strict_json(reply)
        assert isinstance(replies, list) and len(replies) == len(answered), (
            f"{len(answered)} requests, replies: {replies!r}"[:400]
        )
        ran = [_check_item(item, one, methods) for item, one in zip(answered, replies, strict=True)]
        return [pair for pair in ran if pair is not None]
    if not wants_reply(request):
        assert not reply, f"a notification was answered: {reply!r}"
        return []
    assert reply, f"no reply to {body[:200]!r}"
    pair = _check_item(request, strict_json(reply), methods)
    return [] if pair is None else [pair]


# -- the answers --


def is_quantity(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return 0 <= value < 1 << 256  # plain JSON numbers are taken, as geth does in some fields
    return isinstance(value, str) and bool(_HEX_NUMBER.fullmatch(value)) and int(value[2:], 16) < 1 << 256


def is_data(value: Any, length: int | None = None) -> bool:
    if not isinstance(value, str) or not _HEX_BYTES.fullmatch(value):
        return False
    return length is None or len(value) == 2 + 2 * length


def is_block(value: Any) -> bool:
    """docs/rpc.md: a tag, a hex number, a block hash, or an EIP-1898 object; null means latest."""
    if value is None or value in TAGS:
        return True
    if isinstance(value, dict):
        if "blockHash" in value:
            return is_data(value["blockHash"], 32)
        return "blockNumber" in value and is_block(value["blockNumber"])
    if isinstance(value, str) and len(value) == 66 and value[:2] in ("0x", "0X"):
        return is_data(value, 32)
    return isinstance(value, str) and value.startswith("0x") and is_quantity(value)


def is_percentiles(value: Any) -> bool:
    """eth_feeHistory's: null, or at most 100 ascending numbers within [0, 100] (geth's limit)."""
    if value is None:
        return True
    if not isinstance(value, list) or len(value) > 100:
        return False
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 100 for x in value)
    return numbers and value == sorted(value)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _access_list(value: Any) -> bool:
    return value is None or isinstance(value, list) and all(
        isinstance(entry, dict) and is_data(entry.get("address"), 20)
        and (not entry.get("storageKeys") or isinstance(entry["storageKeys"], list)
             and all(is_data(key, 32) for key in entry["storageKeys"]))
        for entry in value
    )


def is_call(value: Any) -> bool:
    """eth_call's transaction object, read as geth reads it: absent, null (and for from, to and input,
    empty) fields are left out; `input` wins over `data`."""
    if not isinstance(value, dict):
        return False
    payload = value.get("input", value.get("data"))
    return (
        all(not value.get(k) or is_data(value[k], 20) for k in ("from", "to"))
        and all(_optional(is_quantity)(value.get(k)) for k in ("gas", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "value"))
        and (not payload or is_data(payload))
        and _access_list(value.get("accessList"))
    )


def _slots(value: Any) -> bool:
    return isinstance(value, dict) and all(is_quantity(k) and is_quantity(v) for k, v in value.items())


def is_overrides(value: Any) -> bool:
    """geth's state override set; a nonce must fit 64 bits."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    for address, override in value.items():
        if not is_data(address, 20) or not isinstance(override, dict) or {"state", "stateDiff"} <= set(override):
            return False
        nonce = override.get("nonce")
        if not (_optional(is_quantity)(override.get("balance")) and _optional(is_quantity)(nonce)
                and _optional(is_data)(override.get("code"))):
            return False
        if nonce is not None and (nonce if isinstance(nonce, int) else int(nonce[2:], 16)) >= 1 << 64:
            return False
        if any(field in override and not _slots(override[field]) for field in ("state", "stateDiff")):
            return False
    return True


# The parameters whose validity is a plain rule; a method taking only these is checked both ways.
SIMPLE_PARAMS: dict[str, Callable[[Any], bool]] = {
    "count": is_quantity,
    "newest": is_block,
    "percentiles": is_percentiles,
    "addr": lambda v: is_data(v, 20),
    "block_hash": lambda v: is_data(v, 32),
    "tx_hash": lambda v: is_data(v, 32),
    "slot": is_quantity,
    "index": is_quantity,
    "full": lambda v: isinstance(v, bool),
    "block": is_block,
    "value": is_data,
    "tx": is_call,
    "overrides": is_overrides,
}


def _quantity_result(value: Any) -> bool:
    return isinstance(value, str) and bool(_QUANTITY.fullmatch(value))


def _object_or_null(*fields: str) -> Callable[[Any], bool]:
    return lambda value: value is None or isinstance(value, dict) and set(fields) <= set(value)


def _logs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, dict) and {"address", "topics", "data", "blockNumber"} <= set(entry) for entry in value
    )


def _fee_history(value: Any) -> bool:
    return isinstance(value, dict) and _quantity_result(value.get("oldestBlock")) and all(
        _quantity_result(fee) for fee in value.get("baseFeePerGas", [None])
    )


RESULTS: dict[str, Callable[[Any], bool]] = {
    "eth_chainId": lambda r: r == hex(CHAIN_ID),
    "net_version": lambda r: r == str(CHAIN_ID),
    "net_listening": lambda r: r is False,  # the fuzzed node is --dev: no p2p (rpc/net.py NoNetwork)
    "eth_syncing": lambda r: r is False,
    "eth_accounts": lambda r: r == [],
    "web3_clientVersion": lambda r: isinstance(r, str) and bool(r),
    **dict.fromkeys(
        ("eth_blockNumber", "eth_gasPrice", "eth_maxPriorityFeePerGas", "eth_blobBaseFee", "net_peerCount",
         "eth_getBalance", "eth_getTransactionCount", "eth_estimateGas"),
        _quantity_result,
    ),
    **dict.fromkeys(
        ("eth_getBlockTransactionCountByHash", "eth_getBlockTransactionCountByNumber",
         "eth_getUncleCountByBlockHash", "eth_getUncleCountByBlockNumber"),
        lambda r: r is None or _quantity_result(r),
    ),
    "eth_getCode": lambda r: isinstance(r, str) and bool(_DATA.fullmatch(r)),
    "eth_call": lambda r: isinstance(r, str) and bool(_DATA.fullmatch(r)),
    "eth_getStorageAt": lambda r: isinstance(r, str) and bool(_HASH.fullmatch(r)),
    **dict.fromkeys(
        ("eth_newFilter", "eth_newBlockFilter", "eth_newPendingTransactionFilter", "eth_subscribe"),
        lambda r: isinstance(r, str) and bool(_FILTER_ID.fullmatch(r)),
    ),
    "eth_uninstallFilter": lambda r: isinstance(r, bool),
    "eth_unsubscribe": lambda r: isinstance(r, bool),
    "eth_getLogs": _logs,
    "eth_getFilterLogs": _logs,
    "eth_getFilterChanges": lambda r: isinstance(r, list),
    "eth_getBlockByNumber": _object_or_null("number", "parentHash", "transactions", "gasLimit"),
    "eth_getBlockByHash": _object_or_null("number", "hash", "parentHash", "transactions"),
    "eth_getTransactionByHash": _object_or_null("hash", "from", "nonce", "blockNumber"),
    "eth_getTransactionByBlockHashAndIndex": _object_or_null("hash", "from", "blockHash"),
    "eth_getTransactionByBlockNumberAndIndex": _object_or_null("hash", "from", "blockHash"),
    "eth_getTransactionReceipt": _object_or_null("transactionHash", "status", "logs"),
    "eth_getBlockReceipts": lambda r: r is None or isinstance(r, list),
    "eth_feeHistory": _fee_history,
}


def check_answer(method: str, params: list[Any], reply: dict[str, Any], names: list[str], arity_ok: bool) -> None:
    """The answer of a method that ran: its result's shape, its exact value where one is known; a wrong
    count of parameters (`arity_ok`, from the method's signature) is -32602; and for simple parameters
    (`names`: the method's positional parameter names), -32602 exactly when one of them is malformed."""
    code = reply.get("error", {}).get("code")
    if not arity_ok:
        assert code == INVALID_PARAMS, f"{method} with {len(params)} parameters answered {reply!r:.300}"
        return
    if "result" in reply:
        result = reply["result"]
        shape = RESULTS.get(method)
        assert shape is None or shape(result), f"{method}{params!r:.300} answered {result!r:.300}"
        if method in ("web3_sha3", "eth_sendRawTransaction"):  # the keccak of the data, the tx hash
            assert result == "0x" + keccak(bytes.fromhex(params[0][2:])).hex()
    named = names[: len(params)]
    if len(params) > len(names) or not all(name in SIMPLE_PARAMS for name in named):
        return
    malformed = [name for name, value in zip(named, params, strict=True) if not SIMPLE_PARAMS[name](value)]
    if malformed:
        assert code == INVALID_PARAMS, f"{method}{params!r:.300}: malformed {malformed}, answered {reply!r:.300}"
    else:
        assert code != INVALID_PARAMS, f"{method}{params!r:.300}: well-formed, answered {reply!r:.300}"
