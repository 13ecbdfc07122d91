"""The libp2p host of a node (docs/network.md): Noise-only TCP with yamux, gossipsub on the four topics,
the request/response protocols, the status handshake, peer scoring and bans, and keeping enough peers.

What the messages mean is the node's business (`Handlers`); this module moves bytes, bounds them,
rate-limits and scores the peers that send them, and keeps py-libp2p from dying of a hostile peer
(DESIGN.md §5): every handler is wrapped, every frame is bounded before it is read.
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
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub import rpc_queue
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError
from libp2p.tools.anyio_service import background_trio_service

from ogpu_node.crypto import keccak
from ogpu_node.p2p import limits
from ogpu_node.p2p.gossip import BadRpc, GuardedPubsub
from ogpu_node.p2p.identity import peer_id
from ogpu_node.p2p.inbound import release_closed_inbound
from ogpu_node.p2p.limits import MessageKind, PeerOffence
from ogpu_node.p2p.peers import PeerBook
from ogpu_node.p2p.wire import FrameError, FrameTooLarge, encode_frame, read_frame

log = logging.getLogger("ogpu.p2p")

# py-libp2p's defaults drop messages under load (DESIGN.md §5): 32-message queues per peer and per
# subscription. The node bounds traffic itself, per peer, before messages reach these queues.
rpc_queue.OutBoundQueueSize = 4096
pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = 4096

_MAINTAIN_EVERY = 2.0  # seconds between checks of the peer count
# A request frame (at most 64 hashes, a range, a status), and a status or peers answer: bounded before
# rlp decodes it, since pyrlp spends seconds of the trio thread on 4 MiB of tiny items.
_MAX_REQUEST_BYTES = 4096
# Inbound gossipsub streams per peer: an honest peer keeps one open (a second while it replaces a dead
# one); a peer that opens more pins a reading task each.
_MAX_GOSSIP_STREAMS = 2
# The stream went away under us (the peer reset it, or its connection closed): not an offence.
_GONE = (StreamError, MuxedStreamError, MuxedConnError, trio.BrokenResourceError, trio.ClosedResourceError)


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


class Network:
    def __init__(self, config: P2PConfig, key: KeyPair, handlers: Handlers, book: PeerBook | None = None) -> None:
        self.config = config
        self.key = key
        self.handlers = handlers
        self.book = book or PeerBook()
        self.peer_id = peer_id(key)
        self.port: int | None = None  # the bound port, once listening
        self.peers: dict[str, PeerState] = {}  # connected peers that passed the status handshake
        self._connections: dict[str, PeerState] = {}
        self._nursery: trio.Nursery | None = None
        self._host: Any = None
        self._pubsub: Any = None
        self._dialed: dict[str, float] = {}  # multiaddr -> when last dialed (no dial storm on failures)
        self._learned: dict[str, None] = {}  # addresses peers told us of, in the order heard
        self._gossip_streams: dict[str, int] = {}  # inbound gossipsub streams open, per peer
        self.on_peer: Callable[[str, bytes], Awaitable[None]] | None = None  # a peer's status, after the handshake

    # -- running --

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        noise = NoiseTransport(self.key, noise_privkey=create_x25519_key_pair().private_key)
        listen = multiaddr.Multiaddr(f"/ip4/{self.config.listen_addr}/tcp/{self.config.port}")
        host = new_host(key_pair=self.key, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX",
                        listen_addrs=[listen])
        release_closed_inbound(host.get_network())  # else 250 inbound connections cut the node off
        gossipsub = GossipSub([PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1,
                              adaptive_gossip_enabled=False, spam_protection_enabled=False,
                              eclipse_protection_enabled=False)
        pubsub = GuardedPubsub(host, gossipsub, strict_signing=False, msg_id_constructor=_message_id,
                               max_inbound_rpc_size=limits.MAX_FRAME + 4096, allowed_topics=set(limits.TOPICS),
                               cache_size=limits.SEEN_CACHE, admit=self._admit, topics=limits.TOPICS,
                               handshaken=lambda peer: peer.to_base58() in self.peers)
        self._host, self._pubsub = host, pubsub
        for protocol in gossipsub.get_protocols():
            host.set_stream_handler(protocol, self._guarded(self._gossip_stream(pubsub.stream_handler)))
        for protocol in limits.PROTOCOLS:
            host.set_stream_handler(protocol, self._guarded(self._serve))
        host.get_network().register_notifee(_Notifee(self))
        try:
            # Pubsub starts before any connection exists (DESIGN.md §5).
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                async with host.run(listen_addrs=[listen]), trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.port = int(host.get_addrs()[0].value_for_protocol("tcp"))
                    for topic in limits.TOPICS:
                        pubsub.set_topic_validator(topic, self._validator(topic), True)
                        subscription = await pubsub.subscribe(topic)
                        nursery.start_soon(_drain, subscription)
                    nursery.start_soon(self._maintain)
                    log.info("p2p listening on %s", self.multiaddr)
                    task_status.started(self)
                    await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await host.close()

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.config.listen_addr}/tcp/{self.port}/p2p/{self.peer_id}"

    # -- gossip --

    async def publish(self, topic: str, payload: bytes) -> None:
        """Gossip ``payload`` (already valid: the node checked or made it) to the topic's mesh."""
        if self._pubsub is None:
            return
        await self._pubsub.publish(topic, payload)

    def _admit(self, forwarder: ID, message: Any) -> bool:
        """What a gossiped message must pass as it is read, before a task or a validator is spent on it:
        its sender passed the status handshake, it names one topic, it is within the topic's size bound
        and the sender's rate. Checked here rather than in the validator because py-libp2p caches a
        validator's False by message id: a message refused for its sender's sake (over rate, before the
        handshake) would then be refused from every honest peer too."""
        peer = forwarder.to_base58()
        if peer not in self.peers:
            return False  # no status handshake yet: it has not shown it is on our chain
        topics = list(message.topicIDs)
        if len(topics) != 1 or topics[0] not in limits.TOPIC_KIND:
            self.penalize(peer, PeerOffence.UNDECODABLE)
            return False
        if len(message.data) > limits.TOPIC_MAX_BYTES[topics[0]]:
            self.penalize(peer, PeerOffence.OVERSIZED)
            return False
        if not self.book.allow(peer, limits.TOPIC_KIND[topics[0]], time.monotonic()):
            self.penalize(peer, PeerOffence.OVER_RATE)
            return False
        return True

    def _validator(self, topic: str) -> Callable[[ID, Any], Awaitable[bool]]:
        async def validate(forwarder: ID, message: Any) -> bool:
            peer = forwarder.to_base58()
            if peer == self.peer_id:
                return True  # our own publish: made valid
            try:
                verdict = await self.handlers.gossip(topic, bytes(message.data), peer)
            except BadMessage as exc:
                log.debug("undecodable %s from %s: %s", topic, peer, exc)
                self.penalize(peer, PeerOffence.UNDECODABLE)
                return False
            except trio.Cancelled:
                raise
            except Exception as exc:  # the node's bug, not proof of the peer's malice: not forwarded
                log.warning("checking %s from %s failed: %r", topic, peer, exc)
                return False
            if verdict is Verdict.REJECT:
                self.penalize(peer, PeerOffence.INVALID)
            elif verdict is Verdict.ACCEPT:
                self.book.reward(peer, time.monotonic())
            return verdict is Verdict.ACCEPT

        return validate

    # -- requests --

    async def request(self, peer: str, protocol: str, payload: bytes, max_frames: int,
                      max_frame: int = limits.MAX_FRAME) -> list[bytes]:
        """Send one request frame and read the response frames until the peer closes the stream (at most
        ``max_frames``, each bounded by ``max_frame``). A timeout or bad framing scores the peer and raises
        trio.TooSlowError or FrameError."""
        if self._host is None:
            raise FrameError("the network is not running")
        frames: list[bytes] = []
        try:
            with trio.fail_after(limits.RESPONSE_TIMEOUT):
                with trio.fail_after(limits.REQUEST_TIMEOUT):
                    stream = await self._host.new_stream(ID.from_base58(peer), [protocol])
                try:
                    await stream.write(encode_frame(payload))
                    while len(frames) < max_frames:
                        frame = await read_frame(stream, max_frame)
                        if frame is None:
                            break
                        frames.append(frame)
                finally:
                    with trio.CancelScope(shield=True):
                        await _close(stream)
        except trio.TooSlowError:
            self.penalize(peer, PeerOffence.BAD_RESPONSE)
            raise
        except FrameTooLarge:
            self.penalize(peer, PeerOffence.OVERSIZED)
            raise
        except FrameError:
            self.penalize(peer, PeerOffence.UNDECODABLE)
            raise
        except trio.Cancelled:
            raise
        except Exception as exc:  # no connection, a refused protocol, a reset: py-libp2p raises many kinds
            raise RequestFailed(f"{protocol} to {peer}: {exc!r}") from None
        return frames

    async def _serve(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        protocol = str(stream.get_protocol())
        state = self._connections.get(peer)
        if state is None or (protocol != limits.PROTOCOL_STATUS and peer not in self.peers):
            await stream.reset()
            return
        if not self.book.allow(peer, MessageKind.REQUEST, time.monotonic()):
            self.penalize(peer, PeerOffence.OVER_RATE)
            await stream.reset()
            return
        if state.requests >= limits.MAX_CONCURRENT_REQUESTS:
            self.penalize(peer, PeerOffence.OVER_RATE)
            await stream.reset()
            return
        state.requests += 1
        try:
            with trio.fail_after(limits.REQUEST_TIMEOUT):
                request = await read_frame(stream, _MAX_REQUEST_BYTES)
            if request is None:
                raise FrameError("no request")
            if protocol == limits.PROTOCOL_STATUS:
                await stream.write(encode_frame(self._hello()))
                await self._on_status(peer, request)
            elif protocol == limits.PROTOCOL_PEERS:
                shared = [s.listen for s in self.peers.values() if s.listen and s.peer != peer]
                random.shuffle(shared)
                await stream.write(encode_frame(rlp.encode([a.encode() for a in shared[:limits.MAX_PEERS_SHARED]])))
            else:
                with trio.fail_after(limits.RESPONSE_TIMEOUT):
                    async for frame in self.handlers.serve(protocol, request):
                        await stream.write(encode_frame(frame))
            await stream.close()
        finally:
            state.requests -= 1

    # -- peers --

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
        now = time.monotonic()
        if self.book.is_banned(peer, now) or len(self._connections) >= self.config.maxpeers:
            self._nursery.start_soon(self._disconnect, peer)
            return
        if self._pubsub is not None and self._pubsub.is_peer_blacklisted(ID.from_base58(peer)):
            self._pubsub.remove_from_blacklist(ID.from_base58(peer))  # the ban ran out
        if peer in self._connections:
            return  # a second connection to a peer (both dialed at once): the first one's handshake stands
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
            frames = await self.request(peer, limits.PROTOCOL_STATUS, self._hello(), 1, _MAX_REQUEST_BYTES)
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
            if len(self._connections) < self.config.maxpeers:
                await self._learn_peers()
                for address in self._candidates():
                    self._nursery.start_soon(self._dial, address)
            await trio.sleep(_MAINTAIN_EVERY)

    async def _learn_peers(self) -> None:
        """Ask one peer for the addresses of its peers."""
        if not self.peers:
            return
        peer = random.choice(list(self.peers))
        try:
            frames = await self.request(peer, limits.PROTOCOL_PEERS, b"\x80", 1, _MAX_REQUEST_BYTES)
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
            if address.startswith("/ip") and "/p2p/" in address and len(self._learned) < 1024:
                self._learned.setdefault(address, None)

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
            if now - self._dialed.get(address, -1e9) < (1 if alone else 10) * _MAINTAIN_EVERY:
                continue
            self._dialed[address] = now
            wanted.append(address)
        random.shuffle(wanted)
        return wanted[: max(0, self.config.maxpeers - len(self._connections))]

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

    def _guarded(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """A stream handler that cannot take the host down: what it raises resets the stream and scores
        the peer (random bytes, a frame over its bound, a protocol error)."""

        async def guarded(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            try:
                await handler(stream)
            except FrameTooLarge:
                self.penalize(peer, PeerOffence.OVERSIZED)
            except trio.TooSlowError:
                self.penalize(peer, PeerOffence.BAD_RESPONSE)
            except (FrameError, BadMessage, BadRpc) as exc:
                log.debug("bad stream from %s: %s", peer, exc)
                self.penalize(peer, PeerOffence.UNDECODABLE)
            except _GONE as exc:
                log.debug("stream from %s went away: %r", peer, exc)
            except trio.Cancelled:
                raise
            except Exception as exc:  # py-libp2p raises many kinds: a parse error is random bytes
                log.warning("stream from %s failed: %r", peer, exc)
                self.penalize(peer, PeerOffence.UNDECODABLE)
            finally:
                with trio.CancelScope(shield=True):
                    await _close(stream)

        return guarded

    def _gossip_stream(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """Pubsub's reading of a peer's gossipsub stream, refused beyond _MAX_GOSSIP_STREAMS at once."""

        async def counted(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            if self._gossip_streams.get(peer, 0) >= _MAX_GOSSIP_STREAMS:
                self.penalize(peer, PeerOffence.OVER_RATE)
                await stream.reset()
                return
            self._gossip_streams[peer] = self._gossip_streams.get(peer, 0) + 1
            try:
                await handler(stream)
            finally:
                self._gossip_streams[peer] -= 1
                if not self._gossip_streams[peer]:
                    del self._gossip_streams[peer]

        return counted


class _Notifee(INotifee):
    def __init__(self, network: Network) -> None:
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


def _message_id(message: Any) -> bytes:
    """keccak(topic ‖ payload): the same message from two publishers is one message."""
    return keccak("".join(message.topicIDs).encode() + bytes(message.data))


async def _drain(subscription: Any) -> None:
    """Delivery happened in the validator; the subscription's queue only has to be kept empty."""
    while True:
        await subscription.get()


async def _close(stream: Any) -> None:
    try:
        await stream.close()
    except Exception:
        try:
            await stream.reset()
        except Exception:
            pass
