"""One JSON-RPC call over plain HTTP, for tests that talk to a node without web3."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for 127.0.0.1


def rpc(url: str, method: str, *params: Any) -> Any:
    """The call's `result`, as the node's raw JSON; fails the test on a JSON-RPC error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=30) as response:
        reply = json.loads(response.read())
    assert "error" not in reply, reply
    return reply["result"]
