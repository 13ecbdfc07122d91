"""Bounds on JSON text checked before it is parsed.

py-evm and py_ecc raise Python's recursion limit to 10^5 at import, so `json.loads` of ~10^5 nested
brackets overflows the C stack and kills the process instead of raising RecursionError. Every place
that parses JSON from outside (RPC requests, prescriptions, safetensors headers and checkpoint
metadata, provider files) checks the nesting with this cheap scan first; `loads_bounded` does the
size check, the scan and the parse in that order.
"""

from __future__ import annotations

import json
import re
from typing import Any

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

MAX_NESTING = 64  # levels of a document from outside; the deepest real one (a prescription) nests six


class JsonBoundsError(ValueError):
    """JSON text that is too large, nests too deep, or is not JSON; one line fit to show a user."""


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


def loads_bounded(text: bytes | str, *, max_bytes: int, max_nesting: int = MAX_NESTING) -> Any:
    """`json.loads(text)` once `text` is known to be at most `max_bytes` UTF-8 bytes nesting at most
    `max_nesting` levels; JsonBoundsError otherwise, and for anything json.loads refuses (including
    integers longer than Python's digit limit)."""
    if len(text) > max_bytes:  # a str's characters are at most its UTF-8 bytes
        raise JsonBoundsError(f"larger than {max_bytes} bytes")
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise JsonBoundsError(f"larger than {max_bytes} bytes")
    if nesting_exceeds(data, max_nesting):
        raise JsonBoundsError(f"nests deeper than {max_nesting} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, the digit limit
        raise JsonBoundsError(f"not valid JSON ({exc})") from None
