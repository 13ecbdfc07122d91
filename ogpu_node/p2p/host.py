"""The libp2p host of a node (docs/network.md): Noise-only TCP with yamux, gossipsub on the four topics,
the request/response protocols; its peers (the handshake, scores and bans, dialing) are `Peering`'s (peering.py).

What the messages mean is the node's business (`Handlers`); this module moves bytes, bounds them,
rate-limits and scores the peers that send them, and keeps py-libp2p from dying of a hostile peer
(DESIGN.md §5): every handler is wrapped, every frame is bounded before it is read.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import multiaddr
import rlp
import trio
from libp2p import new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
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
from ogpu_node.p2p.peering import (
    MAX_REQUEST_BYTES,
    BadMessage,
    Handlers,
    Notifee,
    P2PConfig,
    Peering,
    PeerState,
    RequestFailed,
    Verdict,
)
from ogpu_node.p2p.peers import PeerBook
from ogpu_node.p2p.wire import FrameError, FrameTooLarge, encode_frame, read_frame

__all__ = ["BadMessage", "Handlers", "Network", "P2PConfig", "PeerState", "RequestFailed", "Verdict"]

log = logging.getLogger("ogpu.p2p")

# py-libp2p's defaults drop messages under load (DESIGN.md §5): 32-message queues per peer and per
# subscription. The node bounds traffic itself, per peer, before messages reach these queues.
rpc_queue.OutBoundQueueSize = 4096
pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = 4096

# Inbound gossipsub streams per peer: an honest peer keeps one open (a second while it replaces a dead
# one); a peer that opens more pins a reading task each.
_MAX_GOSSIP_STREAMS = 2
# The stream went away under us (the peer reset it, or its connection closed): not an offence.
_GONE = (StreamError, MuxedStreamError, MuxedConnError, trio.BrokenResourceError, trio.ClosedResourceError)


class Network(Peering):
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
        host.get_network().register_notifee(Notifee(self))
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
                        # The first frame within REQUEST_TIMEOUT, the whole answer within RESPONSE_TIMEOUT.
                        with trio.fail_after(limits.REQUEST_TIMEOUT) if not frames else nullcontext():
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
                request = await read_frame(stream, MAX_REQUEST_BYTES)
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
