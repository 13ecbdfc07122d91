"""Bounds on JSON text checked before it is parsed.

py-evm and py_ecc raise Python's recursion limit to 10^5 at import, so `json.loads` of ~10^5 nested
brackets overflows the C stack and kills the process instead of raising RecursionError. Every place
that parses JSON from outside (RPC requests, prescriptions) checks the nesting with this cheap scan first.
"""

from __future__ import annotations

import re

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_exceeds(text: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (cheap when they cannot)."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    depth = 0
    for char in _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS):
        if char in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
