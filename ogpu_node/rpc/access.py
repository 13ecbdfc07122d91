"""Who may drive the HTTP server from a browser: geth's --http.vhosts, --http.corsdomain and its JSON
content type rule, checked per request in O(1) (the keep-alive RPC loop is the node's hot path).

Threats (docs/security.md): a web page the node's user visits can send requests to 127.0.0.1. A
"simple" cross-origin request (a text/plain POST, a form) needs no preflight, so RPC POSTs must be
application/json, which browsers only send cross-origin after a preflight that an unlisted origin fails
(no Access-Control-Allow-Origin). DNS rebinding makes a page's own origin resolve to 127.0.0.1, which
the Host header gives away: only listed virtual hosts, or a literal IP address, are served.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

CORS_ANY = (b"access-control-allow-origin", b"*")
JSON_CONTENT_TYPES = frozenset({b"application/json", b"application/json-rpc", b"application/jsonrequest"})
_CACHE_LIMIT = 256  # distinct Host/Origin values remembered; a flood of others only costs a re-parse


@dataclass(frozen=True)
class HttpAccess:
    """The browser-facing policy of the HTTP server, with geth's defaults."""

    cors_domains: tuple[str, ...] = ()  # --http.corsdomain: origins allowed to read replies ("*": any)
    vhosts: tuple[str, ...] = ("localhost",)  # --http.vhosts: Host names served ("*": any); IPs always
    require_json: bool = True  # an RPC POST must say Content-Type: application/json (else 415)
    # --ws.origins: browser origins allowed to open a WebSocket ("*": any). Empty: http://localhost on
    # any port, as geth. A request without Origin is no browser's and is allowed (geth too).
    ws_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestAccess:
    """The verdict on one request: refused with `status` (None: served), and CORS headers to add."""

    status: int | None
    reason: str
    cors: list[tuple[bytes, bytes]]
    json_body: bool  # the content type is a JSON one (only RPC POSTs need it)


class AccessPolicy:
    """`HttpAccess` compiled for per-request checks. `None` as a server's policy means no browser
    rules (replies carry `*`), for servers built bare in transport tests."""

    def __init__(self, access: HttpAccess) -> None:
        self.access = access
        self._any_host = "*" in access.vhosts
        self._vhosts = frozenset(h.lower() for h in access.vhosts)
        self._any_origin = "*" in access.cors_domains
        self._origins = frozenset(o.lower().rstrip("/") for o in access.cors_domains)
        self._hosts: dict[bytes, bool] = {}
        self._cors: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def check(self, request: h11.Request) -> RequestAccess:
        host = origin = content_type = None
        for name, value in request.headers:  # h11 lowercases names
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
        cors = _NO_HEADERS if origin is None else self._cors_headers(origin)
        is_json = content_type is not None and (
            content_type in JSON_CONTENT_TYPES  # the common case, without parsing
            or content_type.split(b";", 1)[0].strip().lower() in JSON_CONTENT_TYPES
        )
        if host is not None and not self._host_allowed(host):
            return RequestAccess(403, "invalid host specified", cors, is_json)
        return RequestAccess(None, "", cors, is_json or not self.access.require_json)

    def _host_allowed(self, raw: bytes) -> bool:
        allowed = self._hosts.get(raw)
        if allowed is None:
            allowed = self._any_host or _is_ip(_hostname(raw)) or _hostname(raw) in self._vhosts
            if len(self._hosts) >= _CACHE_LIMIT:
                self._hosts.clear()
            self._hosts[raw] = allowed
        return allowed

    def _cors_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        headers = self._cors.get(origin)
        if headers is None:
            text = origin.decode("latin-1").lower().rstrip("/")
            if self._any_origin:
                headers = [CORS_ANY]
            elif text in self._origins:
                headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
            else:
                headers = _NO_HEADERS
            if len(self._cors) >= _CACHE_LIMIT:
                self._cors.clear()
            self._cors[origin] = headers
        return headers


def ws_origin_allowed(access: HttpAccess, headers: list[tuple[bytes, bytes]]) -> bool:
    """geth's wsHandshakeValidator: no Origin header, or one a --ws.origins rule allows. A rule
    names a scheme, host and port only if it says so ("http://localhost" allows any port)."""
    origin = next((value for name, value in headers if name.lower() == b"origin"), None)
    if origin is None:
        return True
    rules = access.ws_origins or ("http://localhost",)
    if "*" in rules:
        return True
    try:
        asked = urlsplit(origin.decode("latin-1").strip().lower())
        asked_port = asked.port
    except ValueError:
        return False
    for rule in rules:
        wanted = urlsplit(rule.lower() if "://" in rule else "//" + rule.lower())
        if wanted.scheme and wanted.scheme != asked.scheme:
            continue
        if wanted.hostname != asked.hostname:
            continue
        if wanted.port is not None and wanted.port != asked_port:
            continue
        return True
    return False


_NO_HEADERS: list[tuple[bytes, bytes]] = []
OPEN = RequestAccess(None, "", [CORS_ANY], True)  # the verdict without a policy


def _hostname(raw: bytes) -> str:
    """The host of a Host header, without its port: "localhost:8545" -> "localhost", "[::1]:1" -> "::1"."""
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def _is_ip(host: str) -> bool:
    # geth serves any literal IP whatever --http.vhosts says: rebinding needs a name to rebind.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
