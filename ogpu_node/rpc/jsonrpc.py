"""JSON-RPC 2.0 envelope, sans-IO: bytes in, bytes out, errors as the spec and geth number them."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ogpu_node.types.jsontext import nesting_exceeds

log = logging.getLogger("ogpu.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # geth: transaction rejections and other request failures
EXECUTION_REVERTED = 3

# JSON nesting deeper than this is refused before parsing (types/jsontext.py says why). Real requests
# nest a handful of levels.
MAX_NESTING = 512
_MAX_CACHED_ARITY = 16


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
        self._arity: dict[tuple[Method, int], bool] = {}

    def handle(self, body: bytes | str, context: Any) -> bytes | None:
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        if nesting_exceeds(body, MAX_NESTING):
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
        if not self._accepts(method, context, params):
            error = RpcError(INVALID_PARAMS, f"wrong number of arguments for {method_name}")
            return None if is_notification else _error(request_id, error)
        try:
            result = method(context, *params)
        except RpcError as exc:
            return None if is_notification else _error(request_id, exc)
        except Exception:
            log.exception("internal error in %s", method_name)
            return None if is_notification else _error(request_id, RpcError(INTERNAL_ERROR, "internal error"))
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _accepts(self, method: Method, context: Any, params: list[Any]) -> bool:
        """Whether the method takes these arguments, decided from its signature before the call (so a
        TypeError raised inside a method is an internal error, never mistaken for a wrong arity).
        Only the count of positional arguments matters, so the answer is kept per (method, count)."""
        key = (method, len(params))
        accepted = self._arity.get(key)
        if accepted is None:
            accepted = _binds(method, context, params)
            if len(params) <= _MAX_CACHED_ARITY:  # a bound on the cache whatever requests come
                self._arity[key] = accepted
        return accepted


def _binds(method: Method, context: Any, params: list[Any]) -> bool:
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # no signature to read (some builtins): let the call decide
        return True
    try:
        signature.bind(context, *params)
    except TypeError:
        return False
    return True
