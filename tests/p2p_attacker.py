"""A hostile libp2p peer for the network's hardening tests: a py-libp2p host that dials a node with Noise
(or plaintext, which the node must refuse), passes the status handshake if asked to, and then writes
whatever bytes a test wants on gossipsub and request streams: random bytes, oversized frames, raw
gossipsub RPCs, floods, streams that never write.

Nothing here goes through the node's own code paths (it builds frames and RPCs itself), so a bug in
ogpu_node/p2p/wire.py cannot hide itself from the tests.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import rlp
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network import swarm as swarm_module
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from ogpu_node.node.network import PeerStatus, encode_status
from ogpu_node.p2p import limits

MESHSUB = str(PROTOCOL_ID_V11)

# py-libp2p waits 250 ms after starting a dial before it would try a next address (happy eyeballs),
# even when there is only one: an attacker dialing one address has no reason to.
swarm_module._HAPPY_EYEBALLS_DELAY = 0


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def frame(payload: bytes) -> bytes:
    """A length-prefixed frame as docs/network.md defines it (a varint length, then the bytes)."""
    return varint(len(payload)) + payload


def huge_rlp_list(n: int) -> bytes:
    """rlp of a list of ``n`` one-byte items: a few bytes each on the wire, seconds of pyrlp to decode."""
    return rlp.codec.length_prefix(n, 0xC0) + b"\x01" * n


def genesis_status(chain_id: int, genesis_hash: bytes) -> bytes:
    """A status as a freshly started node of that chain sends it: its head and finality at genesis."""
    return encode_status(PeerStatus(chain_id, genesis_hash, genesis_hash, 0, 0, genesis_hash))


def gossip_rpc(topic: str, payloads: Sequence[bytes], sender: ID, first_seqno: int = 1) -> bytes:
    """One gossipsub RPC publishing ``payloads`` on ``topic``, framed as pubsub reads it."""
    rpc = rpc_pb2.RPC()
    for i, data in enumerate(payloads):
        rpc.publish.append(rpc_pb2.Message(from_id=sender.to_bytes(), data=data,
                                           seqno=(first_seqno + i).to_bytes(8, "big"), topicIDs=[topic]))
    return frame(rpc.SerializeToString())


class Attacker:
    """A libp2p host under the test's control. Use ``async with attacker_host() as a``."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.peer_id: ID = host.get_id()

    @property
    def multiaddr(self) -> str:
        """Where a node dials this host (`/ip4/127.0.0.1/tcp/<port>/p2p/<id>`)."""
        port = self.host.get_addrs()[0].value_for_protocol("tcp")
        return f"/ip4/127.0.0.1/tcp/{port}/p2p/{self.peer_id.to_base58()}"

    def answer(self, protocol: str, response: bytes) -> None:
        """Answer every ``protocol`` request a node makes of this host with ``response`` (raw bytes, framed
        or not as the test wants), after reading what it sent."""

        async def handler(stream: Any) -> None:
            try:
                await stream.read(65536)
                await stream.write(response)
                await stream.close()
            except Exception:  # the node hung up on us: what the test wanted
                pass

        self.host.set_stream_handler(protocol, handler)

    async def connect(self, address: str) -> ID:
        """Dial ``address`` (a /p2p/ multiaddr); returns the node's peer id. Raises what libp2p raises."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        with trio.fail_after(15):
            await self.host.connect(info)
        return info.peer_id

    def connected(self, peer: ID) -> bool:
        return bool(self.host.get_network().get_connections(peer))

    async def disconnect(self, peer: ID) -> None:
        await self.host.disconnect(peer)

    async def stream(self, peer: ID, protocol: str) -> Any:
        with trio.fail_after(15):
            return await self.host.new_stream(peer, [protocol])

    async def handshake(self, peer: ID, status: bytes, port: int = 30303) -> bytes:
        """Send our status as the node expects of a peer that dialed it; returns the node's hello frame."""
        stream = await self.stream(peer, limits.PROTOCOL_STATUS)
        await stream.write(frame(rlp.encode([port, status])))
        with trio.fail_after(15):
            reply = await read_all(stream)
        await stream.close()
        return reply

    async def cycle(self, address: str, count: int, per_second: float = 9.0) -> None:
        """Dial ``address`` (a fresh connection each time: Noise, yamux) and close it, ``count`` times,
        one connection at a time, at most ``per_second`` (py-libp2p's resource manager refuses a peer
        more than 10 connections a second). Its close lingers in sleeps after it marks the connection
        closed: that part finishes in the background while the next dial goes out."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        network = self.host.get_network()
        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        seen: set[int] = set()
        start = trio.current_time()
        async with trio.open_nursery() as closing:
            for n in range(count):
                await trio.sleep_until(start + n / per_second)
                with trio.fail_after(15):
                    connections = await network.dial_peer(info.peer_id)  # host.connect would reuse a closing one
                assert not seen & {id(c) for c in connections}, "dial_peer returned a connection it had"
                seen = {id(c) for c in connections}
                for connection in connections:
                    closing.start_soon(connection.close)
                while not all(c.is_closed for c in connections):
                    await trio.sleep(0)

    async def wait_disconnected(self, peer: ID, timeout: float = 15) -> bool:
        """True once no connection to ``peer`` is left (the node dropped us), False if one still is."""
        with trio.move_on_after(timeout):
            while self.connected(peer):
                await trio.sleep(0.05)
            return True
        return False


async def read_all(stream: Any, limit: int = 1 << 20) -> bytes:
    """Everything the peer writes until it closes or resets the stream (at most ``limit`` bytes)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = await stream.read(limit - len(data))
        except Exception:  # EOF, reset: the peer is done
            break
        if not chunk:
            break
        data += chunk
    return data


def random_bytes(n: int, seed: int) -> bytes:
    """Deterministic noise, so a failing case can be replayed."""
    return random.Random(seed).randbytes(n)


@asynccontextmanager
async def attacker_host(*, plaintext: bool = False, secret: bytes | None = None) -> AsyncIterator[Attacker]:
    """A running host on 127.0.0.1 (Noise, or only plaintext when ``plaintext``), closed on exit."""
    key = create_new_key_pair(secret or os.urandom(32))
    if plaintext:
        security = {PLAINTEXT_PROTOCOL_ID: InsecureTransport(key)}
    else:
        security = {NOISE_PROTOCOL_ID: NoiseTransport(key, noise_privkey=create_x25519_key_pair().private_key)}
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(key_pair=key, sec_opt=security, muxer_preference="YAMUX", listen_addrs=[listen])
    try:
        async with host.run(listen_addrs=[listen]):
            yield Attacker(host)
    finally:
        with trio.CancelScope(shield=True):
            await host.close()
