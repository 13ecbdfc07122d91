"""JSON-RPC 2.0 envelope, sans-IO: bytes in, bytes out, errors as the spec and geth number them."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("ogpu.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # geth: transaction rejections and other request failures
EXECUTION_REVERTED = 3

# JSON nesting deeper than this is refused before parsing. py-evm and py_ecc raise Python's recursion
# limit to 10^5 at import, so json.loads of ~10^5 nested brackets would overflow the C stack and kill
# the process instead of raising RecursionError. Real requests nest a handful of levels.
MAX_NESTING = 512
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(body: bytes) -> bool:
    """Whether brackets outside strings nest deeper than MAX_NESTING (cheap when they cannot)."""
    if body.count(b"[") + body.count(b"{") <= MAX_NESTING:
        return False
    depth = 0
    for char in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if char in b"[{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        else:
            depth -= 1
    return False


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class InvalidParams(RpcError):
    def __init__(self, message: str) -> None:
        super().__init__(INVALID_PARAMS, message)


Method = Callable[..., Any]


def _error(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}


class JsonRpcProcessor:
    """Dispatches requests to `methods[name](context, *params)`; a method returns a JSON-able value."""

    def __init__(self, methods: Mapping[str, Method], *, max_batch: int = 1000) -> None:
        self.methods = methods
        self.max_batch = max_batch

    def handle(self, body: bytes | str, context: Any) -> bytes | None:
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        if _too_deep(body):
            return self._dump(_error(None, RpcError(PARSE_ERROR, f"parse error: nesting deeper than {MAX_NESTING}")))
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError
            return self._dump(_error(None, RpcError(PARSE_ERROR, "parse error")))
        if isinstance(request, list):
            if not request:
                return self._dump(_error(None, RpcError(INVALID_REQUEST, "empty batch")))
            if len(request) > self.max_batch:
                return self._dump(
                    _error(None, RpcError(INVALID_REQUEST, f"batch too large (limit {self.max_batch})"))
                )
            responses = [r for r in (self._one(item, context) for item in request) if r is not None]
            return self._dump(responses) if responses else None
        response = self._one(request, context)
        return None if response is None else self._dump(response)

    @staticmethod
    def _dump(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def _one(self, request: Any, context: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return _error(None, RpcError(INVALID_REQUEST, "invalid request"))
        request_id = request.get("id")
        is_notification = "id" not in request
        if not isinstance(request_id, (str, int, float, type(None))) or isinstance(request_id, bool):
            return _error(None, RpcError(INVALID_REQUEST, "invalid request id"))
        method_name = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(method_name, str):
            return _error(request_id, RpcError(INVALID_REQUEST, "invalid request"))
        params = request.get("params", [])
        if params is None:
            params = []
        if not isinstance(params, list):
            return _error(request_id, RpcError(INVALID_PARAMS, "non-array params"))
        method = self.methods.get(method_name)
        if method is None:
            error = RpcError(METHOD_NOT_FOUND, f"the method {method_name} does not exist/is not available")
            return None if is_notification else _error(request_id, error)
        try:
            result = method(context, *params)
        except RpcError as exc:
            return None if is_notification else _error(request_id, exc)
        except TypeError as exc:
            if _is_arity_error(exc, method):
                error = RpcError(INVALID_PARAMS, f"wrong number of arguments for {method_name}")
                return None if is_notification else _error(request_id, error)
            log.exception("internal error in %s", method_name)
            return None if is_notification else _error(request_id, RpcError(INTERNAL_ERROR, "internal error"))
        except Exception:
            log.exception("internal error in %s", method_name)
            return None if is_notification else _error(request_id, RpcError(INTERNAL_ERROR, "internal error"))
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _is_arity_error(exc: TypeError, method: Method) -> bool:
    # A TypeError raised by the call itself (wrong arity) has no deeper frame than the method's own.
    tb = exc.__traceback__
    depth = 0
    while tb is not None:
        depth += 1
        tb = tb.tb_next
    return depth <= 1 and "argument" in str(exc)
