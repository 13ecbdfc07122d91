"""Peers of the libp2p host (docs/network.md, "Identity and transport", "Peer scoring"): who is
connected, the status handshake every connection starts with, scores and bans, and keeping enough
peers by dialing the bootnodes and the addresses peers share. `Network` (host.py) is a `Peering`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import multiaddr
import rlp
import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from ogpu_node.p2p import limits
from ogpu_node.p2p.limits import PeerOffence
from ogpu_node.p2p.peers import PeerBook
from ogpu_node.p2p.wire import FrameError

log = logging.getLogger("ogpu.p2p")

MAINTAIN_EVERY = 2.0  # seconds between checks of the peer count
# A request frame (at most 64 hashes, a range, a status), and a status or peers answer: bounded before
# rlp decodes it, since pyrlp spends seconds of the trio thread on 4 MiB of tiny items.
MAX_REQUEST_BYTES = 4096
MAX_HANDSHAKING = 8  # connections not past the status handshake yet: they cannot crowd out the peers
MAX_LEARNED = 1024  # addresses peers shared, the oldest forgotten first


@dataclass(frozen=True)
class P2PConfig:
    listen_addr: str = "127.0.0.1"
    port: int = limits.DEFAULT_P2P_PORT
    bootnodes: tuple[str, ...] = ()
    maxpeers: int = limits.DEFAULT_MAXPEERS


class Verdict(Enum):
    ACCEPT = "accept"  # valid: delivered and forwarded
    IGNORE = "ignore"  # not forwarded, not the sender's fault (a duplicate, a parent not known yet)
    REJECT = "reject"  # invalid: not forwarded, the sender is scored down


class RequestFailed(Exception):
    """A request got no answer: no connection, the stream refused or reset (not scored: it may be ours)."""


class BadMessage(Exception):
    """Raised by a handler for bytes that do not decode: the sender is scored as for random bytes."""


class Handlers(Protocol):
    """What the node answers and decides; the host calls these on the trio thread."""

    def status(self) -> bytes: ...

    def accept_status(self, peer: str, status: bytes) -> bool:
        """False: the peer is on another chain, or conflicts with our finality (it is dropped and banned)."""

    async def gossip(self, topic: str, payload: bytes, peer: str) -> Verdict: ...

    def serve(self, protocol: str, request: bytes) -> AsyncIterator[bytes]: ...


@dataclass
class PeerState:
    peer: str
    inbound: bool
    remote: str  # its end of the connection, a multiaddr
    status: bytes | None = None
    listen: str | None = None  # where it takes connections: its remote IP and the port it announced
    requests: int = 0  # requests it has in flight with us


class Peering:
    """The peers of a `Network`: the attributes below are the host's."""

    config: P2PConfig
    handlers: Handlers
    book: PeerBook
    peer_id: str
    port: int | None
    peers: dict[str, PeerState]
    _connections: dict[str, PeerState]
    _nursery: trio.Nursery | None
    _host: Any
    _pubsub: Any
    _dialed: dict[str, float]
    _learned: dict[str, None]
    on_peer: Callable[[str, bytes], Awaitable[None]] | None
    request: Callable[..., Awaitable[list[bytes]]]  # Network.request

    def penalize(self, peer: str, offence: PeerOffence) -> None:
        """Score ``peer`` down; below the threshold it is disconnected and banned (DESIGN.md §5: gossipsub's
        blacklist, and the connection check refuses it until the ban ends)."""
        if self.book.penalize(peer, offence, time.monotonic()):
            log.warning("peer %s banned (%s)", peer, offence.name.lower())
            self._drop(peer)

    def _drop(self, peer: str) -> None:
        if self._pubsub is not None:
            self._pubsub.add_to_blacklist(ID.from_base58(peer))
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, peer)

    async def _disconnect(self, peer: str) -> None:
        try:
            await self._host.disconnect(ID.from_base58(peer))
        except Exception as exc:  # already gone
            log.debug("disconnect %s: %s", peer, exc)

    async def _connected(self, peer: str, inbound: bool, remote: str) -> None:
        if self.book.is_banned(peer, time.monotonic()):
            self._nursery.start_soon(self._disconnect, peer)
            return
        if peer in self._connections:
            return  # a second connection to a peer (both dialed at once): the first one's handshake stands
        handshaking = len(self._connections) - len(self.peers)
        if len(self.peers) >= self.config.maxpeers or handshaking >= MAX_HANDSHAKING:
            self._nursery.start_soon(self._disconnect, peer)
            return
        if self._pubsub is not None and self._pubsub.is_peer_blacklisted(ID.from_base58(peer)):
            self._pubsub.remove_from_blacklist(ID.from_base58(peer))  # the ban ran out
        self._connections[peer] = PeerState(peer, inbound, remote)
        self._nursery.start_soon(self._handshake if not inbound else self._await_handshake, peer)

    def _disconnected(self, peer: str) -> None:
        # The peer book keeps its score and buckets (bounded, least recently seen dropped first): a peer
        # that reconnects does not start again from 0 with full buckets.
        self._connections.pop(peer, None)
        self.peers.pop(peer, None)

    async def exchange_status(self, peer: str) -> bool:
        """Send our status to ``peer`` and take its own (the handshake, and later to learn its head);
        False when it did not answer or was refused."""
        try:
            frames = await self.request(peer, limits.PROTOCOL_STATUS, self._hello(), 1, MAX_REQUEST_BYTES)
        except (trio.TooSlowError, FrameError, RequestFailed) as exc:
            log.info("status exchange with %s failed: %s", peer, exc)
            return False
        if not frames:
            return False
        await self._on_status(peer, frames[0])
        return peer in self.peers

    async def _handshake(self, peer: str) -> None:
        if not await self.exchange_status(peer) and peer not in self.peers:
            await self._disconnect(peer)

    async def _await_handshake(self, peer: str) -> None:
        """A peer that dialed us sends its status first; one that does not within the timeout is dropped."""
        await trio.sleep(limits.REQUEST_TIMEOUT)
        if peer in self._connections and peer not in self.peers:
            await self._disconnect(peer)

    def _hello(self) -> bytes:
        """The status handshake's frame: rlp([our p2p port, the node's status]); the port lets the peer
        tell others where to dial us (the connection shows only our ephemeral port if we dialed)."""
        return rlp.encode([self.port or 0, self.handlers.status()])

    async def _on_status(self, peer: str, hello: bytes) -> None:
        state = self._connections.get(peer)
        if state is None:
            return
        try:
            port, status = rlp.decode(hello)
            port = int.from_bytes(port, "big")
            accepted = 0 < port < 65536 and self.handlers.accept_status(peer, status)
        except (BadMessage, rlp.DecodingError, ValueError, TypeError):
            accepted = False
        if not accepted:  # another chain: not worth a connection, nor a dial, until the ban ends
            log.warning("peer %s refused at the status handshake", peer)
            self.book.ban(peer, time.monotonic())
            self._drop(peer)
            return
        state.status = status
        ip = state.remote.split("/")[2] if state.remote.startswith(("/ip4/", "/ip6/")) else None
        if ip is not None:
            state.listen = f"/{state.remote.split('/')[1]}/{ip}/tcp/{port}/p2p/{peer}"
        new = peer not in self.peers
        self.peers[peer] = state
        if new:
            log.info("peer %s connected (%s, %d peers)", peer, "in" if state.inbound else "out", len(self.peers))
        if self.on_peer is not None:
            await self.on_peer(peer, status)

    async def _maintain(self) -> None:
        """Dial the bootnodes and the peers' peers while below the target (maxpeers)."""
        while True:
            if len(self.peers) < self.config.maxpeers:
                await self._learn_peers()
                for address in self._candidates():
                    self._nursery.start_soon(self._dial, address)
            await trio.sleep(MAINTAIN_EVERY)

    async def _learn_peers(self) -> None:
        """Ask one peer for the addresses of its peers."""
        if not self.peers:
            return
        peer = random.choice(list(self.peers))
        try:
            frames = await self.request(peer, limits.PROTOCOL_PEERS, b"\x80", 1, MAX_REQUEST_BYTES)
            addresses = rlp.decode(frames[0]) if frames else []
            if not isinstance(addresses, list) or len(addresses) > limits.MAX_PEERS_SHARED:
                raise BadMessage("not a list of at most MAX_PEERS_SHARED addresses")
            learned = [bytes(a).decode() for a in addresses]
        except (trio.TooSlowError, FrameError, RequestFailed):
            return
        except Exception as exc:  # bytes that are not addresses
            log.warning("peers from %s: %r", peer, exc)
            self.penalize(peer, PeerOffence.UNDECODABLE)
            return
        for address in learned:
            if address.startswith("/ip") and "/p2p/" in address and address not in self._learned:
                self._learned[address] = None
                while len(self._learned) > MAX_LEARNED:  # the oldest go: junk cannot crowd out what comes
                    del self._learned[next(iter(self._learned))]

    def _candidates(self) -> list[str]:
        now = time.monotonic()
        known = [*self.config.bootnodes, *self._learned]
        wanted = []
        bootnodes = set(self.config.bootnodes)
        for address in dict.fromkeys(known):
            target = address.rsplit("/p2p/", 1)[-1]
            if target == self.peer_id or target in self._connections or self.book.is_banned(target, now):
                continue
            if address not in bootnodes and target < self.peer_id:
                continue  # of two peers that learn of each other, the lower id waits to be dialed
            # A node with no peer retries its bootnodes every round (one that was not listening yet is
            # reached as soon as it is); other addresses every ten rounds.
            alone = not self._connections and address in bootnodes
            if now - self._dialed.get(address, -1e9) < (1 if alone else 10) * MAINTAIN_EVERY:
                continue
            self._dialed[address] = now
            wanted.append(address)
        random.shuffle(wanted)
        return wanted[: max(0, self.config.maxpeers - len(self.peers))]

    async def _dial(self, address: str) -> None:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
            # py-libp2p refuses for 60 s to dial a peer whose addresses all failed once (its negative
            # cache); when to dial again is _candidates' decision.
            self._host.get_network().unblock_peer(info.peer_id)
            with trio.fail_after(limits.REQUEST_TIMEOUT):
                await self._host.connect(info)
        except Exception as exc:  # unreachable, refused, not Noise: try again later
            log.info("dial %s failed: %r", address, exc)


class Notifee(INotifee):
    """Connection events of the swarm, to the peering of ``network``."""

    def __init__(self, network: Peering) -> None:
        self.network = network

    async def connected(self, network: Any, conn: Any) -> None:
        muxed = conn.muxed_conn
        inbound = not getattr(muxed, "is_initiator_value", getattr(muxed, "is_initiator", False))
        remote = ""
        try:
            host, port = muxed.get_remote_address()
            remote = f"/ip{6 if ':' in host else 4}/{host}/tcp/{port}"
        except Exception:  # a transport that does not tell: the peer is not shared with others
            pass
        await self.network._connected(muxed.peer_id.to_base58(), inbound, remote)

    async def disconnected(self, network: Any, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.get_connections(peer):  # a duplicate connection closed: the peer is still here
            self.network._disconnected(peer.to_base58())

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass
