"""A node's network identity: a secp256k1 key in `<datadir>/p2p/nodekey` (docs/network.md, "Identity
and transport"), made on first start, so the peer id is the same across restarts. Not the validator key."""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.id import ID

from ogpu_node.files import atomic_write

NODEKEY = Path("p2p") / "nodekey"


class NodeKeyError(Exception):
    pass


def node_key(datadir: Path) -> KeyPair:
    """The datadir's node key, made (32 random bytes, written 0600) if it has none."""
    path = datadir / NODEKEY
    if path.exists():
        text = path.read_text().strip()
        try:
            secret = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            secret = b""
        if len(secret) != 32:
            raise NodeKeyError(f"{path} is not a node key (64 hex digits)")
        return create_new_key_pair(secret)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = os.urandom(32)
    atomic_write(path, secret.hex().encode() + b"\n", mode=0o600)
    return create_new_key_pair(secret)


def peer_id(key: KeyPair) -> str:
    """The base58 peer id of ``key``, as multiaddrs name it (`/p2p/<peer id>`)."""
    return ID.from_pubkey(key.public_key).to_base58()


def multiaddr(host: str, port: int, key: KeyPair) -> str:
    """The address another node dials to reach this one: `/ip4/<host>/tcp/<port>/p2p/<peer id>`."""
    return f"/ip4/{host}/tcp/{port}/p2p/{peer_id(key)}"
