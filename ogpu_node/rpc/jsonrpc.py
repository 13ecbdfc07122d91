"""JSON-RPC 2.0 envelope, sans-IO: bytes in, bytes out, errors as the spec and geth number them."""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ogpu_node.jsontext import nesting_exceeds

log = logging.getLogger("ogpu.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # geth: transaction rejections and other request failures
TIMEOUT = -32002  # geth: a batch's requests left when its time is up
EXECUTION_REVERTED = 3

# JSON nesting deeper than this is refused before parsing (ogpu_node/jsontext.py says why). Real requests
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
    """Dispatches requests to `methods[name](context, *params)`; a method returns a JSON-able value,
    or is `async` when it must wait (work run off the event loop): only those cost an await."""

    def __init__(self, methods: Mapping[str, Method], *, max_batch: int = 1000, batch_timeout_s: float = 30.0) -> None:
        """`batch_timeout_s`: a batch's requests not started by then are answered `request timed out`
        (geth bounds a batch by its HTTP write timeout, 30 s): a batch of slow calls, each within
        --rpc.evmtimeout, cannot hold its connection and a worker thread for hours."""
        self.methods = methods
        self.max_batch = max_batch
        self.batch_timeout_s = batch_timeout_s
        self._arity: dict[tuple[Method, int], bool] = {}

    async def handle(self, body: bytes | str, context: Any) -> bytes | None:
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
            responses = []
            deadline = time.monotonic() + self.batch_timeout_s
            for item in request:
                if time.monotonic() > deadline:
                    reply = _timed_out(item)
                else:
                    reply = self._one(item, context)
                if isinstance(reply, _Pending):
                    reply = await reply.finish()
                if reply is not None:
                    responses.append(reply)
            return self._dump(responses) if responses else None
        response = self._one(request, context)
        if isinstance(response, _Pending):
            response = await response.finish()
        return None if response is None else self._dump(response)

    @staticmethod
    def _dump(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def _one(self, request: Any, context: Any) -> dict[str, Any] | _Pending | None:
        if not isinstance(request, dict):
            return _error(None, RpcError(INVALID_REQUEST, "invalid request"))
        request_id = request.get("id")
        is_notification = "id" not in request
        if not isinstance(request_id, (str, int, float, type(None))) or isinstance(request_id, bool):
            return _error(None, RpcError(INVALID_REQUEST, "invalid request id"))
        if type(request_id) is float and not math.isfinite(request_id):
            # NaN, Infinity or 1e400: echoing it would make the reply invalid JSON.
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
        pending = _Pending(request_id, is_notification, method_name)
        try:
            result = method(context, *params)
        except Exception as exc:
            return pending.failed(exc)
        if inspect.iscoroutine(result):
            pending.result = result
            return pending
        return pending.succeeded(result)

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


def _timed_out(request: Any) -> dict[str, Any] | None:
    if not isinstance(request, dict) or "id" not in request:
        return None
    request_id = request["id"]
    if not isinstance(request_id, (str, int, float)) or isinstance(request_id, bool) or (
        isinstance(request_id, float) and not math.isfinite(request_id)
    ):
        request_id = None  # as _one: an id that is not a valid one is not echoed
    return _error(request_id, RpcError(TIMEOUT, "request timed out"))


class _Pending:
    """A call's reply: made at once for a plain method, after `finish` awaits an async one's result."""

    __slots__ = ("request_id", "is_notification", "method_name", "result")

    def __init__(self, request_id: Any, is_notification: bool, method_name: str) -> None:
        self.request_id = request_id
        self.is_notification = is_notification
        self.method_name = method_name
        self.result: Any = None

    def succeeded(self, result: Any) -> dict[str, Any] | None:
        return None if self.is_notification else {"jsonrpc": "2.0", "id": self.request_id, "result": result}

    def failed(self, exc: Exception) -> dict[str, Any] | None:
        """Called inside the `except` block, so that an unexpected error is logged with its traceback."""
        if not isinstance(exc, RpcError):
            log.exception("internal error in %s", self.method_name)
            exc = RpcError(INTERNAL_ERROR, "internal error")
        return None if self.is_notification else _error(self.request_id, exc)

    async def finish(self) -> dict[str, Any] | None:
        try:
            result = await self.result
        except Exception as exc:
            return self.failed(exc)
        return self.succeeded(result)


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
