"""Gossipsub's inbound side as the node reads it (docs/network.md, "Gossip"; DESIGN.md §5).

py-libp2p 0.8.1's own read loop is not safe against a hostile peer: it swallows an oversized frame and
bytes that do not parse without saying who sent them (so nobody is scored), it starts a validation task
for every published message before any check (a flood queues unbounded tasks behind the validators'
semaphore), and it acts on control messages for any topic string (per-topic state grows) and dials
every peer a PRUNE names (peer exchange, on by default on the receiving side). `GuardedPubsub` reads
each RPC itself: the frame is bounded in size and time before it is read (wire.read_frame), bytes that do not parse or
carry nothing raise BadMessage, each published message passes `admit` (handshake, size, rate:
synchronous, before any task exists), and only control messages for our topics, capped in length and
without peer exchange, reach the router. Errors propagate to the host's guarded handler, which scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import DecodeError
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.utils import maybe_consume_signed_record

from ogpu_node.p2p import limits
from ogpu_node.p2p.wire import read_frame

# Control entries kept per RPC and message ids per IHAVE/IWANT (go-libp2p's MaxIHaveLength is 5000):
# enough for any honest peer, and bounded work and replies for a hostile one.
_MAX_CONTROL_ENTRIES = 64
_MAX_CONTROL_IDS = 5_000
# Message ids a peer may ask for (IWANT) or announce (IHAVE) in one RPC, distinct: py-libp2p answers an
# IWANT with a copy of the message per id listed, so repeated ids were a memory bomb.
_MAX_IWANT_IDS = 64
_MAX_IHAVE_IDS = 512


class BadRpc(Exception):
    """A gossipsub frame that does not parse, or parses to nothing, or a forged sender record."""


class GuardedPubsub(Pubsub):
    """Pubsub whose inbound RPCs are bounded and checked before py-libp2p acts on them.

    ``admit(forwarder, message)`` decides, before a task is started for it, whether a published message
    goes on to validation (it scores the sender itself); ``topics`` are the only topics whose control
    messages are passed to the router; ``handshaken(peer)``: whether the peer passed the status
    handshake (before it, its control messages are not acted on)."""

    def __init__(self, *args: Any, admit: Callable[[ID, Any], bool], topics: Iterable[str],
                 handshaken: Callable[[ID], bool] = lambda peer: True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admit = admit
        self._topics = frozenset(topics)
        self._handshaken = handshaken

    async def continuously_read_stream(self, stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        while self.manager.is_running and not self.is_peer_blacklisted(peer_id):
            # Idle between frames is fine (a quiet topic); a frame begun must end in time, or a peer
            # could hold a buffer of max_inbound_rpc_size per stream forever.
            data = await read_frame(stream, self.max_inbound_rpc_size, limits.RESPONSE_TIMEOUT)
            if data is None:
                return  # the peer closed its stream
            rpc = rpc_pb2.RPC()
            try:
                rpc.ParseFromString(data)
            except DecodeError as exc:
                raise BadRpc(f"gossipsub frame does not parse: {exc}") from None
            if not (rpc.publish or rpc.subscriptions or rpc.HasField("control") or rpc.HasField("senderRecord")):
                raise BadRpc("gossipsub frame carries nothing")
            if not maybe_consume_signed_record(rpc, self.host, peer_id):
                raise BadRpc("gossipsub sender record is not the sender's")
            rpc.ClearField("senderRecord")  # checked once: the router would verify it again
            for message in rpc.publish:
                if self._is_subscribed_to_msg(message) and self._admit(peer_id, message):
                    self.manager.run_task(self.push_msg, peer_id, message)
            if len(rpc.subscriptions) <= self.max_subscriptions_per_rpc:  # our topics only (allowed_topics)
                for subscription in rpc.subscriptions:
                    self.handle_subscription(peer_id, subscription)
            # Control messages (IWANT is served from the message cache) only from a peer on our chain.
            if rpc.HasField("control") and not self.is_peer_blacklisted(peer_id) and self._handshaken(peer_id):
                control = self._sanitized(rpc.control)
                if control is not None:
                    rpc.control.CopyFrom(control)
                    await self.router.handle_rpc(rpc, peer_id)

    def _sanitized(self, control: Any) -> Any | None:
        """The control message with only our topics, at most _MAX_CONTROL_ENTRIES entries of each kind
        and _MAX_CONTROL_IDS ids in each, and PRUNEs without peers to dial; None when nothing is left."""
        clean = rpc_pb2.ControlMessage()
        announced = 0
        for ihave in [i for i in control.ihave if i.topicID in self._topics][:_MAX_CONTROL_ENTRIES]:
            ids = list(dict.fromkeys(ihave.messageIDs))[:_MAX_IHAVE_IDS - announced]
            if ids:
                clean.ihave.add(topicID=ihave.topicID, messageIDs=ids)
                announced += len(ids)
        wanted = list(dict.fromkeys(i for entry in control.iwant[:_MAX_CONTROL_ENTRIES] for i in entry.messageIDs))
        if wanted:
            clean.iwant.add(messageIDs=wanted[:_MAX_IWANT_IDS])
        for graft in [g for g in control.graft if g.topicID in self._topics][:_MAX_CONTROL_ENTRIES]:
            clean.graft.add(topicID=graft.topicID)
        for prune in [p for p in control.prune if p.topicID in self._topics][:_MAX_CONTROL_ENTRIES]:
            clean.prune.add(topicID=prune.topicID, backoff=prune.backoff)  # no peers: we dial whom we choose
        for idontwant in list(control.idontwant)[:_MAX_CONTROL_ENTRIES]:
            clean.idontwant.add(messageIDs=list(idontwant.messageIDs)[:_MAX_CONTROL_IDS])
        if not (clean.ihave or clean.iwant or clean.graft or clean.prune or clean.idontwant):
            return None
        return clean

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        """py-libp2p's teardown of a blacklisted peer (started by add_to_blacklist, which a ban calls),
        without its race: the peer's stream can be dropped (its connection closing, _handle_dead_peer)
        while the reset is awaited, and the KeyError of the `del` that followed killed the pubsub
        service, and with it the node."""
        stream = self.peers.get(peer_id)
        if stream is not None:
            try:
                await stream.reset()
            except Exception:
                pass
            self.peers.pop(peer_id, None)
        self._forget_all_subscriptions(peer_id)
