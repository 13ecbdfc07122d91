"""The HTTP browser policy (access.py) and the RPC's transaction rules, without sockets."""

from __future__ import annotations

import h11
import pytest
from txfactory import sign_tx

from ogpu_node.rpc.access import AccessPolicy, HttpAccess, ws_origin_allowed
from ogpu_node.txpool import TxPool, TxRejected

GWEI = 10**9
RECEIVER = b"\x11" * 20


def request(**headers: str) -> h11.Request:
    pairs = [(name.replace("_", "-"), value) for name, value in headers.items()]
    if not any(name == "host" for name, _ in pairs):
        pairs.append(("host", "127.0.0.1:8545"))
    return h11.Request(method="POST", target="/", headers=pairs)


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost", True), ("LOCALHOST:8545", True), ("127.0.0.1", True), ("10.1.2.3:80", True),
    ("[::1]:8545", True), ("::1", True), ("evil.example", False), ("localhost.evil.example:8545", False),
    ("127.0.0.1.nip.io", False),
])
def test_default_vhosts_are_localhost_and_ip_literals(host, allowed):
    verdict = AccessPolicy(HttpAccess()).check(request(host=host, content_type="application/json"))
    assert (verdict.status is None) is allowed
    if not allowed:
        assert (verdict.status, verdict.reason) == (403, "invalid host specified")


def test_cors_headers_only_for_listed_origins_and_json_content_types():
    closed = AccessPolicy(HttpAccess())
    assert closed.check(request(origin="http://evil.example")).cors == []
    listed = AccessPolicy(HttpAccess(cors_domains=("http://app.example",)))
    assert listed.check(request(origin="http://app.example")).cors == [
        (b"access-control-allow-origin", b"http://app.example"), (b"vary", b"Origin"),
    ]
    assert listed.check(request(origin="http://other.example")).cors == []
    assert AccessPolicy(HttpAccess(cors_domains=("*",))).check(request(origin="http://x")).cors == [
        (b"access-control-allow-origin", b"*"),
    ]
    for content_type, is_json in [
        ("application/json", True), ("Application/JSON; charset=utf-8", True), ("application/json-rpc", True),
        ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ]:
        assert closed.check(request(content_type=content_type)).json_body is is_json
    assert closed.check(request()).json_body is False
    assert AccessPolicy(HttpAccess(require_json=False)).check(request()).json_body is True


def test_ws_origins_default_to_localhost_on_any_port():
    default = HttpAccess()
    assert ws_origin_allowed(default, [])  # no Origin: not a browser
    assert ws_origin_allowed(default, [(b"origin", b"http://localhost:3000")])
    assert not ws_origin_allowed(default, [(b"origin", b"http://evil.example")])
    assert not ws_origin_allowed(default, [(b"origin", b"https://localhost")])  # the rule names http
    listed = HttpAccess(ws_origins=("https://app.example:8443",))
    assert ws_origin_allowed(listed, [(b"origin", b"https://app.example:8443")])
    assert not ws_origin_allowed(listed, [(b"origin", b"https://app.example:9000")])
    assert ws_origin_allowed(HttpAccess(ws_origins=("*",)), [(b"origin", b"null")])


def make_pool(chain) -> TxPool:
    return TxPool(chain.chain_id, lambda a: chain.account(chain.head, a)[:2], lambda: (GWEI, chain.head.gas_limit))


def test_unprotected_and_max_nonce_transactions(chain, dev_accounts):
    """Rule: over RPC (protected_only) a legacy transaction without chain id is refused with geth's
    words, elsewhere admitted; a nonce >= 2^64 - 1 is `nonce has max value`, not `invalid sender`."""
    pool = make_pool(chain)
    key = dev_accounts[0]
    unprotected = sign_tx(key, 0, to=RECEIVER, gas_price=10 * GWEI, chain_id=None).raw
    with pytest.raises(TxRejected) as info:
        pool.add_raw(unprotected, protected_only=True)
    assert str(info.value) == "only replay-protected (EIP-155) transactions allowed over RPC"
    assert pool.add_raw(unprotected)
    assert pool.add_raw(sign_tx(key, 1, to=RECEIVER, gas_price=10 * GWEI).raw, protected_only=True)
    for nonce in ((1 << 64) - 1, 1 << 64, 1 << 200):
        with pytest.raises(TxRejected) as info:
            pool.add_raw(sign_tx(key, nonce, to=RECEIVER, value=1).raw)
        assert str(info.value) == f"nonce has max value: nonce {nonce}"
