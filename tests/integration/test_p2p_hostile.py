"""A hostile peer cannot crash, freeze or fill a node (issue 13, docs/network.md "Peer scoring").

In one trio process: a real proof-of-stake node (one validator, a genesis made here) listening on
127.0.0.1, and an attacker host (tests/p2p_attacker.py) that dials it with Noise, passes the status
handshake and then misbehaves. After each attack the attacker is disconnected and banned for the
offence the spec names (its reconnects are dropped before any handshake), and the node goes on sealing
blocks and answering JSON-RPC. Also: another genesis is refused at the handshake, a plaintext dial is
refused while a Noise dial works, a score survives a reconnect, a peer that only goes away is not
punished. And against a real `ogpu-node run` process: 1,000 connect/close cycles leave its RSS where it
was, and random bytes on a gossip and a request stream leave it up, sealing, with the attacker banned.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rlp
import trio
from e2e.cli_run import CLI, ENV, ROOT, cli
from p2p_attacker import (
    MESHSUB,
    Attacker,
    attacker_host,
    frame,
    genesis_status,
    gossip_rpc,
    huge_rlp_list,
    random_bytes,
    read_all,
    varint,
)

from ogpu_node.config import parse_genesis
from ogpu_node.consensus import ValidatorKey
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.crypto.keystore import LIGHT_SCRYPT_N, create_account
from ogpu_node.node import Node, NodeConfig
from ogpu_node.node.network import P2PConfig
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.p2p import limits
from ogpu_node.types.signing import Attestation, SignedAttestation
from tests.rpccall import rpc

CHAIN_ID = 4_343
_VALIDATOR = Keypair.from_private_key(keccak(b"hostile test validator"))


def _genesis(chain_id: int = CHAIN_ID) -> Any:
    key = ValidatorKey(_VALIDATOR, randao_chain(_VALIDATOR.private_key, 256))
    address = "0x" + _VALIDATOR.address.hex()
    genesis = parse_genesis({
        "config": {"chainId": chain_id},
        "alloc": {address: {"balance": hex(10**24)}},
        "consensus": {"genesisTime": int(time.time()) + 1, "slotTime": 1, "slotsPerEpoch": 4, "randaoLength": 256,
                      "validators": [{"address": address, "stake": hex(1_000 * 10**18),
                                      "randaoTip": "0x" + key.randao.tip.hex()}]},
    })
    return genesis, key


async def start_node(nursery: trio.Nursery, datadir: Path, *, chain_id: int = CHAIN_ID, validator: bool = True,
                     bootnodes: tuple[str, ...] = ()) -> Node:
    genesis, key = _genesis(chain_id)
    config = NodeConfig(datadir=datadir, genesis=genesis, signer=None, http_port=0, ws_port=None, durable=False,
                        validator=key if validator else None, p2p=P2PConfig(port=0, bootnodes=bootnodes))
    return await nursery.start(Node(config).run)


async def wait_until(what: str, done: Callable[[], bool], timeout: float = 20) -> None:
    with trio.move_on_after(timeout):
        while not done():
            await trio.sleep(0.05)
        return
    pytest.fail(f"{what} within {timeout} s")


async def node_rpc(node: Node, method: str, *params: Any) -> Any:
    return await trio.to_thread.run_sync(rpc, f"http://127.0.0.1:{node.http_port}", method, *params)


async def assert_node_keeps_working(node: Node) -> None:
    """The node seals two more blocks and JSON-RPC reports them."""
    start = node.chain.head.block_number
    await wait_until("two more blocks", lambda: node.chain.head.block_number >= start + 2)
    assert int(await node_rpc(node, "eth_blockNumber"), 16) >= start + 2


async def joined(attacker: Attacker, node: Node) -> Any:
    """Dial the node and pass its status handshake as a node of its chain would."""
    net = node.network.host
    peer = await attacker.connect(net.multiaddr)
    await attacker.handshake(peer, genesis_status(node.chain.chain_id, node.chain.genesis_hash))
    await wait_until("the handshake", lambda: attacker.peer_id.to_base58() in net.peers)
    return peer


async def assert_dropped_and_banned(attacker: Attacker, peer: Any, node: Node) -> None:
    net = node.network.host
    me = attacker.peer_id.to_base58()
    assert await attacker.wait_disconnected(peer), "the node kept the attacker's connection"
    await wait_until("the attacker forgotten", lambda: me not in net.peers and me not in net._connections)
    assert net.book.is_banned(me, time.monotonic())
    assert net._pubsub.is_peer_blacklisted(attacker.peer_id)
    # A reconnect gets no further than the transport: dropped before any handshake, never a peer.
    try:
        await attacker.connect(net.multiaddr)
        with trio.move_on_after(2):
            await attacker.handshake(peer, genesis_status(node.chain.chain_id, node.chain.genesis_hash))
    except Exception:  # refused while dialing or on the status stream: both are a refusal
        pass
    assert await attacker.wait_disconnected(peer), "a banned peer's reconnect was kept"
    assert me not in net.peers and me not in net._connections


def ban_logged(caplog: pytest.LogCaptureFixture, attacker: Attacker) -> str:
    """The offence the node banned the attacker for, as it logged it."""
    me = attacker.peer_id.to_base58()
    reasons = [r.getMessage() for r in caplog.records if r.name == "ogpu.p2p" and f"peer {me} banned" in r.getMessage()]
    assert len(reasons) == 1, reasons  # banned once: later offences of a banned peer are not counted
    return reasons[0].rsplit("(", 1)[1].rstrip(")")


# -- the attacks --------------------------------------------------------------------------------


async def gossip_random_bytes(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, MESHSUB)
    await stream.write(random_bytes(4096, seed))
    await stream.close()


async def request_random_bytes(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)
    await stream.write(random_bytes(4096, seed))
    await stream.close()


async def request_huge_length(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_HASH)
    await stream.write(varint(1 << 40))  # and then nothing: the node must not wait for a terabyte


async def request_not_rlp(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)
    await stream.write(frame(b"\xff" * 40))  # a frame within bounds whose bytes are not a range
    await stream.close()


async def gossip_frame_over_pubsub_limit(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, MESHSUB)
    await stream.write(varint(limits.MAX_FRAME + 4096 + 1))


async def gossip_oversized_block(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    # Within pubsub's frame limit, one byte over the block topic's bound.
    stream = await attacker.stream(peer, MESHSUB)
    await stream.write(gossip_rpc(limits.TOPIC_BLOCKS, [b"\x01" * (limits.MAX_BLOCK_BYTES + 1)], attacker.peer_id))


async def gossip_oversized_attestation(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, MESHSUB)
    payload = random_bytes(limits.MAX_ATTESTATION_BYTES + 1, seed)
    await stream.write(gossip_rpc(limits.TOPIC_ATTESTATIONS, [payload], attacker.peer_id))


def _badly_signed_attestation(node: Node, n: int) -> bytes:
    """An attestation right in every field for the node's head, signed by the validator's key over
    another message: a well-formed message whose signature is not the validator's."""
    core = node.pos.core
    head = core.head()
    state = core.fork_choice.states[head]
    params = core.rules.params
    source = state.current_justified
    message = Attestation(params.start_slot(state.current.epoch), head, source.epoch, source.root,
                          state.current.epoch, state.current.target_root)
    wrong_root = keccak(b"not the attestation %d" % n)
    return SignedAttestation(message, _VALIDATOR.sign_hash(wrong_root)).encode()


async def gossip_badly_signed_attestations(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    stream = await attacker.stream(peer, MESHSUB)
    for n in range(3):  # -20 each: the third takes the score below the ban threshold
        await stream.write(gossip_rpc(limits.TOPIC_ATTESTATIONS, [_badly_signed_attestation(node, n)], attacker.peer_id,
                                      first_seqno=n + 1))


def _forged_block(node: Node, n: int) -> bytes:
    """The head block's message with its header's extra data changed: it decodes, its parent is known,
    and consensus refuses it (the proposer signed another block)."""
    head = node.chain.head
    raw, body, signature = rlp.decode(node.network._message_of(head.hash))
    header, *rest = rlp.decode(raw)
    header[12] = b"forged %d" % n  # extra data
    return rlp.encode([rlp.encode([header, *rest]), body, signature])


async def gossip_forged_blocks(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    await wait_until("a block past genesis", lambda: node.chain.head.block_number >= 1)
    stream = await attacker.stream(peer, MESHSUB)
    for n in range(3):
        await stream.write(gossip_rpc(limits.TOPIC_BLOCKS, [_forged_block(node, n)], attacker.peer_id, first_seqno=n + 1))


def _unknown_head_attestation(node: Node, seed: int) -> bytes:
    """The validator's signed vote for a head nobody knows, far ahead and one epoch long: it conflicts
    with none of the validator's own votes (no slashing evidence comes of it)."""
    message = Attestation(1000 * 4, random_bytes(32, seed), 999, random_bytes(32, seed + 1), 1000,
                          random_bytes(32, seed + 2))
    signature = _VALIDATOR.sign_hash(message.signing_root(node.chain.chain_id, node.chain.genesis_hash))
    return SignedAttestation(message, signature).encode()


async def gossip_attestation_flood(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    """2,000 copies of one attestation (kept, not scored: see _unknown_head_attestation), in 20 RPCs
    written back to back: only the rate limit (burst 512) can stop them."""
    attestation = _unknown_head_attestation(node, seed)
    stream = await attacker.stream(peer, MESHSUB)
    for batch in range(20):
        await stream.write(gossip_rpc(limits.TOPIC_ATTESTATIONS, [attestation] * 100, attacker.peer_id,
                                      first_seqno=batch * 100 + 1))


async def idle_request_streams(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    """100 request streams opened at once, none ever written: at most MAX_CONCURRENT_REQUESTS are held,
    each only until the request read times out."""
    state = node.network.host._connections[attacker.peer_id.to_base58()]
    streams: list[Any] = []

    async def open_one() -> None:
        try:
            streams.append(await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE))
        except Exception:  # refused once the node banned us
            pass

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(open_one)
    assert state.requests <= limits.MAX_CONCURRENT_REQUESTS
    await wait_until("every held request released", lambda: state.requests == 0, limits.REQUEST_TIMEOUT + 5)


async def idle_gossip_streams(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    async def open_one() -> None:
        try:
            await attacker.stream(peer, MESHSUB)
        except Exception:
            pass

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(open_one)


async def slow_requests(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    """Streams within the concurrency bound that never send their request: each read times out (so
    nothing is held past REQUEST_TIMEOUT) and scores the peer."""
    for _ in range(limits.MAX_CONCURRENT_REQUESTS):
        await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)


async def peers_answered_with_a_huge_list(attacker: Attacker, peer: Any, node: Node, seed: int) -> None:
    """The node asks a peer for its peers every few seconds; this one answers with 4 MiB of rlp that pyrlp
    would spend seconds of the trio thread on. The answer must be refused by its length prefix."""
    attacker.answer(limits.PROTOCOL_PEERS, frame(huge_rlp_list(limits.MAX_FRAME - 8)))


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Attacker, Any, Node, int], Awaitable[None]]
    offences: frozenset[str]  # what the node may ban it for, as logged
    seed: int = 0


ATTACKS = [
    Attack("gossip random bytes 1", gossip_random_bytes, frozenset({"undecodable", "oversized"}), 1),
    Attack("gossip random bytes 2", gossip_random_bytes, frozenset({"undecodable", "oversized"}), 2),
    Attack("request random bytes 1", request_random_bytes, frozenset({"undecodable", "oversized"}), 1),
    Attack("request random bytes 2", request_random_bytes, frozenset({"undecodable", "oversized"}), 2),
    Attack("request length prefix of 1 TiB", request_huge_length, frozenset({"oversized"})),
    Attack("request frame that is not rlp", request_not_rlp, frozenset({"undecodable"})),
    Attack("gossip frame over pubsub's limit", gossip_frame_over_pubsub_limit, frozenset({"oversized"})),
    Attack("block message over MAX_BLOCK_BYTES", gossip_oversized_block, frozenset({"oversized"})),
    Attack("attestation over MAX_ATTESTATION_BYTES", gossip_oversized_attestation, frozenset({"oversized"}), 3),
    Attack("attestations with a bad signature", gossip_badly_signed_attestations, frozenset({"invalid"})),
    Attack("block messages that fail consensus", gossip_forged_blocks, frozenset({"invalid"})),
    Attack("2000 attestations at once", gossip_attestation_flood, frozenset({"over_rate"}), 4),
    Attack("100 idle request streams", idle_request_streams, frozenset({"over_rate"})),
    Attack("100 idle gossip streams", idle_gossip_streams, frozenset({"over_rate"})),
    Attack("requests never sent", slow_requests, frozenset({"bad_response"})),
    Attack("peers answered with 4 MiB of rlp", peers_answered_with_a_huge_list, frozenset({"oversized"})),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_hostile_peer_is_dropped_and_banned_and_the_node_keeps_working(attack, nursery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ogpu.p2p")
    node = await start_node(nursery, tmp_path / "node")
    async with attacker_host() as attacker:
        peer = await joined(attacker, node)
        await attack.run(attacker, peer, node, attack.seed)
        await assert_dropped_and_banned(attacker, peer, node)
        assert ban_logged(caplog, attacker) in attack.offences
    await assert_node_keeps_working(node)


# -- the handshake and the transport ------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_node_of_another_genesis_is_refused_at_the_status_handshake(nursery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ogpu.p2p")
    node = await start_node(nursery, tmp_path / "node")
    stranger = await start_node(nursery, tmp_path / "stranger", chain_id=CHAIN_ID + 1, validator=False,
                                bootnodes=(node.network.host.multiaddr,))
    ours, theirs = node.network.host, stranger.network.host
    await wait_until("the refusal", lambda: ours.book.is_banned(theirs.peer_id, time.monotonic()))
    await wait_until("both sides dropped", lambda: theirs.peer_id not in ours._connections
                     and ours.peer_id not in theirs._connections)
    assert not ours.peers and not theirs.peers
    assert f"peer {theirs.peer_id} refused at the status handshake" in caplog.text
    # Its bootnode dial is not retried into a connection while the ban lasts.
    await trio.sleep(3)
    assert theirs.peer_id not in ours._connections and not ours.peers
    await assert_node_keeps_working(node)


@pytest.mark.timeout(60)
async def test_a_dialed_peer_answering_the_status_with_a_huge_frame_is_refused_unread(nursery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ogpu.p2p")
    async with attacker_host() as attacker:
        attacker.answer(limits.PROTOCOL_STATUS, frame(huge_rlp_list(limits.MAX_FRAME - 8)))
        node = await start_node(nursery, tmp_path / "node", bootnodes=(attacker.multiaddr,))
        net = node.network.host
        me = attacker.peer_id.to_base58()
        await wait_until("the refusal", lambda: net.book.is_banned(me, time.monotonic()))
        assert me not in net.peers
        assert ban_logged(caplog, attacker) == "oversized"
        await wait_until("the attacker dropped", lambda: me not in net._connections)
    await assert_node_keeps_working(node)


@pytest.mark.timeout(60)
async def test_a_plaintext_dial_is_refused_and_a_noise_dial_works(nursery, tmp_path):
    node = await start_node(nursery, tmp_path / "node")
    net = node.network.host
    async with attacker_host(plaintext=True) as plain:
        with pytest.raises(Exception):  # noqa: B017 -- py-libp2p raises several kinds for a failed upgrade
            await plain.connect(net.multiaddr)
        assert not plain.host.get_network().connections
        await trio.sleep(0.5)
        assert plain.peer_id.to_base58() not in net._connections
        assert plain.peer_id not in net._host.get_network().connections
    async with attacker_host() as noise:
        await joined(noise, node)
        assert noise.peer_id.to_base58() in net.peers


# -- scores and the peers that only go away -----------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_peer_score_survives_a_reconnect(nursery, tmp_path, caplog):
    """Two invalid messages (-40) are not a ban; reconnecting must not wipe them, so a third is."""
    caplog.set_level(logging.INFO, logger="ogpu.p2p")
    node = await start_node(nursery, tmp_path / "node")
    net = node.network.host
    async with attacker_host() as attacker:
        me = attacker.peer_id.to_base58()
        for n in range(3):
            peer = await joined(attacker, node)
            stream = await attacker.stream(peer, MESHSUB)
            await stream.write(gossip_rpc(limits.TOPIC_ATTESTATIONS, [_badly_signed_attestation(node, n)],
                                          attacker.peer_id, first_seqno=n + 1))
            if n < 2:
                await wait_until("the message scored",
                                 lambda floor=-20 * n - 19: net.book.score(me, time.monotonic()) < floor)
                assert not net.book.is_banned(me, time.monotonic())
                await attacker.disconnect(peer)
                await wait_until("the peer gone", lambda: me not in net._connections)
        await assert_dropped_and_banned(attacker, peer, node)
        assert ban_logged(caplog, attacker) == "invalid"


@pytest.mark.timeout(60)
async def test_a_peer_that_resets_its_request_or_leaves_is_not_punished(nursery, tmp_path):
    """Going away is not an offence: a request stream reset halfway through its frame, a gossip stream
    reset, and a disconnect leave the peer's score at 0 and the peer free to return."""
    node = await start_node(nursery, tmp_path / "node")
    net = node.network.host
    async with attacker_host() as peer_host:
        me = peer_host.peer_id.to_base58()
        peer = await joined(peer_host, node)
        stream = await peer_host.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)
        await stream.write(varint(100) + b"\xc2")  # a frame begun, never finished
        await stream.reset()
        gossip = await peer_host.stream(peer, MESHSUB)
        await gossip.write(varint(100) + b"\x0a")
        await gossip.reset()
        request = await peer_host.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)
        await request.write(frame(rlp.encode([1, 2])))
        await read_all(request)  # a good request is still served after the resets
        await trio.sleep(0.5)
        assert net.book.score(me, time.monotonic()) == 0
        await peer_host.disconnect(peer)
        await wait_until("the peer gone", lambda: me not in net._connections)
        await joined(peer_host, node)
        assert not net.book.is_banned(me, time.monotonic())


# -- what node/network.py decides --------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_random_bytes_on_the_transaction_topic_are_undecodable(nursery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ogpu.p2p")
    node = await start_node(nursery, tmp_path / "node")
    async with attacker_host() as attacker:
        peer = await joined(attacker, node)
        stream = await attacker.stream(peer, MESHSUB)
        await stream.write(gossip_rpc(limits.TOPIC_TXS, [random_bytes(300, 5)], attacker.peer_id))
        with trio.move_on_after(5):
            await attacker.wait_disconnected(peer)
        assert ban_logged(caplog, attacker) == "undecodable"


@pytest.mark.timeout(60)
async def test_an_attestation_for_an_unknown_head_is_neither_forwarded_nor_rewarded(nursery, tmp_path):
    """The validator's vote for a head the node does not know is kept until the block comes, but it cannot
    be checked against that head yet: not forwarded, and its sender neither rewarded nor punished."""
    node = await start_node(nursery, tmp_path / "node")
    net = node.network.host
    unchecked = _unknown_head_attestation(node, 6)
    async with attacker_host() as attacker:
        peer = await joined(attacker, node)
        stream = await attacker.stream(peer, MESHSUB)
        await stream.write(gossip_rpc(limits.TOPIC_ATTESTATIONS, [unchecked], attacker.peer_id))
        probe = await attacker.stream(peer, limits.PROTOCOL_BLOCKS_BY_RANGE)  # after the gossip, in order
        await probe.write(frame(rlp.encode([1, 1])))
        await read_all(probe)
        await trio.sleep(0.5)
        message_id = keccak(limits.TOPIC_ATTESTATIONS.encode() + unchecked)
        assert not net._pubsub.seen_messages.has(message_id)  # seen = validated and forwarded
        assert net.book.score(attacker.peer_id.to_base58(), time.monotonic()) == 0


# -- against a real node process ----------------------------------------------------------------

_PASSWORD = "hostile"
_HTTP = re.compile(r"Listening on (http://127\.0\.0\.1:\d+)")
_P2P = re.compile(r"p2p listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)")


class NodeProcess:
    """`ogpu-node run` validating a one-validator genesis, p2p and RPC on 127.0.0.1 (free ports)."""

    def __init__(self, tmp_path: Path) -> None:
        keystore = tmp_path / "keystore"
        create_account(keystore, _PASSWORD, _VALIDATOR.private_key, kdf_iterations=LIGHT_SCRYPT_N)
        (tmp_path / "password").write_text(_PASSWORD + "\n")
        genesis, key = _genesis()
        address = "0x" + _VALIDATOR.address.hex()
        doc = {"config": {"chainId": CHAIN_ID}, "alloc": {address: {"balance": hex(10**24)}},
               "consensus": {"genesisTime": int(time.time()) + 2, "slotTime": 1, "slotsPerEpoch": 4,
                             "randaoLength": 256, "validators": [{"address": address, "stake": hex(1_000 * 10**18),
                                                                  "randaoTip": "0x" + key.randao.tip.hex()}]}}
        (tmp_path / "genesis.json").write_text(json.dumps(doc))
        datadir = tmp_path / "data"
        init = cli("init", "--datadir", datadir, tmp_path / "genesis.json")
        assert init.returncode == 0, init.stderr
        self.err_path = tmp_path / "node.err"
        with open(tmp_path / "node.out", "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [*CLI, "run", "--datadir", str(datadir), "--genesis", str(tmp_path / "genesis.json"),
                 "--keystore", str(keystore), "--password-file", str(tmp_path / "password"),
                 "--http.port", "0", "--no-ws", "--port", "0"], stdout=out, stderr=err, env=ENV, cwd=ROOT)
        self.out_path = tmp_path / "node.out"
        self.url = self._wait_for(_HTTP, self.out_path)
        self.multiaddr = self._wait_for(_P2P, self.err_path)
        self.chain_id = CHAIN_ID
        self.genesis_hash = bytes.fromhex(self.rpc("eth_getBlockByNumber", "0x0", False)["hash"][2:])

    def _wait_for(self, pattern: re.Pattern[str], path: Path) -> str:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            match = pattern.search(path.read_text(errors="replace"))
            if match:
                return match.group(1)
            assert self.process.poll() is None, self.err_path.read_text()
            time.sleep(0.05)
        pytest.fail(f"the node printed no {pattern.pattern} within 90 s: {self.err_path.read_text()[-3000:]}")

    def rpc(self, method: str, *params: Any) -> Any:
        return rpc(self.url, method, *params)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def node_process(tmp_path):
    started: list[NodeProcess] = []

    def start() -> NodeProcess:
        started.append(NodeProcess(tmp_path))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_thousand_connect_close_cycles_leave_the_node_rss_where_it_was_and_its_door_open(node_process):
    """py-libp2p 0.8.1 kept a task and an inbound slot for every connection ever accepted: memory grew
    with each, and after 250 the node refused every inbound connection (ogpu_node/p2p/inbound.py)."""
    node = node_process()
    async with attacker_host() as attacker:
        await attacker.cycle(node.multiaddr, 100)  # warm-up: caches, allocator arenas, lazy imports
        baseline = node.rss_kib()
        await attacker.cycle(node.multiaddr, 1000)  # each dial must succeed, or this raises
        after = node.rss_kib()
    assert after - baseline < 20 * 1024, f"RSS grew by {(after - baseline) / 1024:.1f} MiB over 1,000 cycles"
    async with attacker_host() as newcomer:  # another peer still gets in, and through the handshake
        peer = await newcomer.connect(node.multiaddr)
        await newcomer.handshake(peer, genesis_status(node.chain_id, node.genesis_hash))
        assert await trio.to_thread.run_sync(node.rpc, "net_peerCount") == "0x1"
    start = await trio.to_thread.run_sync(node.block_number)
    await wait_until("a block after the cycles", lambda: node.block_number() > start)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_real_node_survives_random_bytes_and_bans_their_sender(node_process):
    node = node_process()
    status = genesis_status(node.chain_id, node.genesis_hash)
    for attack, protocol in ((1, MESHSUB), (2, limits.PROTOCOL_BLOCKS_BY_RANGE)):
        async with attacker_host() as attacker:
            peer = await attacker.connect(node.multiaddr)
            await attacker.handshake(peer, status)
            stream = await attacker.stream(peer, protocol)
            await stream.write(random_bytes(4096, attack))
            await stream.close()
            assert await attacker.wait_disconnected(peer), "the node kept the attacker's connection"
            try:  # a reconnect is dropped before the handshake
                await attacker.connect(node.multiaddr)
                with trio.move_on_after(2):
                    await attacker.handshake(peer, status)
            except Exception:
                pass
            assert await attacker.wait_disconnected(peer)
            assert f"peer {attacker.peer_id.to_base58()} banned (" in node.err_path.read_text()
            await wait_until("the node's peer count back to 0", lambda: node.rpc("net_peerCount") == "0x0")
    assert node.process.poll() is None, node.err_path.read_text()[-3000:]
    start = await trio.to_thread.run_sync(node.block_number)
    await wait_until("two blocks after the attacks", lambda: node.block_number() >= start + 2)
    assert "Traceback" not in node.err_path.read_text()
