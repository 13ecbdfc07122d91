"""net_listening, net_peerCount, eth_syncing, admin_peers and admin_nodeInfo over what the node's p2p
network says about itself (sans-IO: the network hands plain values, the methods answer JSON as geth).

The network implements `NetworkView`; a node without p2p (--dev) uses `NoNetwork`. admin_* tells who
our peers are and where we listen, so it is served only on this machine (`is_local`); geth serves
admin only over IPC unless --http.api names it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ogpu_node import CLIENT_VERSION
from ogpu_node.chain import Chain
from ogpu_node.rpc.jsonrpc import METHOD_NOT_FOUND, RpcError

Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True)
class PeerInfo:
    """A connected peer that has passed the status handshake; its chain fields are what it last told us."""

    peer_id: str  # libp2p peer id, base58 ("16Uiu2...")
    name: str  # its client version from identify; "" when it sent none
    local_addr: str  # our end of the connection, a multiaddr
    remote_addr: str  # its end, a multiaddr
    direction: Direction  # who dialed: "inbound" (it did) or "outbound" (we did)
    head_number: int
    head_hash: bytes
    finalized_epoch: int
    score: float  # our score of its behaviour (docs/network.md); low scores are disconnected and banned

    def __post_init__(self) -> None:
        if self.direction not in ("inbound", "outbound"):
            raise ValueError(f"peer direction must be 'inbound' or 'outbound', not {self.direction!r}")


@dataclass(frozen=True)
class NodeInfo:
    """This node as the network knows it."""

    peer_id: str  # "" without p2p
    enr: str  # the multiaddr others dial to reach us, ending in /p2p/<peer id>; "" when not listening
    listen_addrs: tuple[str, ...]  # multiaddrs the host listens on
    p2p_port: int  # 0 when not listening
    head_hash: bytes
    genesis_hash: bytes


@dataclass(frozen=True)
class SyncProgress:
    """A catch-up sync in progress, in block numbers."""

    starting: int  # our head when this sync began
    current: int  # our head now
    highest: int  # the best head a peer has told us of


class NetworkView(Protocol):
    """What the node's network exposes to RPC: plain values read at call time, no I/O."""

    def listening(self) -> bool: ...

    def peer_count(self) -> int: ...

    def peers(self) -> list[PeerInfo]: ...

    def node_info(self) -> NodeInfo: ...

    def syncing(self) -> SyncProgress | None: ...


class NoNetwork:
    """The network of a node run without p2p (--dev): it listens nowhere, has no peers, never syncs.

    geth --dev also runs without p2p (it clears ListenAddr and MaxPeers) yet answers net_listening true,
    because geth's NetAPI.Listening returns true unconditionally. We answer false: nothing listens for
    peers, and a monitor asking whether a node can be reached should hear the truth."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def listening(self) -> bool:
        return False

    def peer_count(self) -> int:
        return 0

    def peers(self) -> list[PeerInfo]:
        return []

    def node_info(self) -> NodeInfo:
        return NodeInfo("", "", (), 0, self.chain.head.hash, self.chain.genesis_hash)

    def syncing(self) -> SyncProgress | None:
        return None


def is_local(ctx: Any) -> bool:
    """Whether a call came to a server listening only on loopback addresses, from a loopback address.
    `ctx` is the connection's session (rpc/server.py); a context without addresses is not local."""
    listen_hosts = getattr(ctx, "listen_hosts", ())
    remote_host = getattr(ctx, "remote_host", None)
    return bool(listen_hosts) and all(map(_is_loopback, listen_hosts)) and _is_loopback(remote_host)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


class NetApi:
    def __init__(self, view: NetworkView, chain_id: int) -> None:
        self.view = view
        self.chain_id = chain_id

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {
            "net_listening": self.net_listening,
            "net_peerCount": self.net_peerCount,
            "eth_syncing": self.eth_syncing,
            "admin_peers": self.admin_peers,
            "admin_nodeInfo": self.admin_nodeInfo,
        }

    def net_listening(self, ctx: Any) -> bool:
        return self.view.listening()

    def net_peerCount(self, ctx: Any) -> str:
        return hex(self.view.peer_count())

    def eth_syncing(self, ctx: Any) -> bool | dict[str, str]:
        progress = self.view.syncing()
        if progress is None:
            return False
        return {
            "startingBlock": hex(progress.starting),
            "currentBlock": hex(progress.current),
            "highestBlock": hex(progress.highest),
        }

    # admin_* numbers are JSON numbers, not hex strings, as in geth's admin API.

    def admin_peers(self, ctx: Any) -> list[dict[str, Any]]:
        _require_local(ctx, "admin_peers")
        return [
            {
                "id": peer.peer_id,
                "name": peer.name,
                "network": {
                    "localAddress": peer.local_addr,
                    "remoteAddress": peer.remote_addr,
                    "inbound": peer.direction == "inbound",
                },
                "protocols": {
                    "ogpu": {
                        "head": _hash(peer.head_hash),
                        "number": peer.head_number,
                        "finalizedEpoch": peer.finalized_epoch,
                        "score": peer.score,
                    }
                },
            }
            for peer in self.view.peers()
        ]

    def admin_nodeInfo(self, ctx: Any) -> dict[str, Any]:
        _require_local(ctx, "admin_nodeInfo")
        info = self.view.node_info()
        return {
            "id": info.peer_id,
            "name": CLIENT_VERSION,
            "enode": info.enr,
            "listenAddr": info.listen_addrs[0] if info.listen_addrs else "",
            "ports": {"listener": info.p2p_port},
            "protocols": {
                "ogpu": {
                    "network": self.chain_id,
                    "genesis": _hash(info.genesis_hash),
                    "head": _hash(info.head_hash),
                }
            },
        }


def _require_local(ctx: Any, method: str) -> None:
    # -32601 as geth answers for a method whose module this endpoint does not serve.
    if not is_local(ctx):
        raise RpcError(
            METHOD_NOT_FOUND,
            f"the method {method} does not exist/is not available: admin_* is served only to connections "
            "from this machine, to a server listening on a loopback address",
        )


def _hash(value: bytes) -> str:
    return "0x" + value.hex()
