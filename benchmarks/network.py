"""Network: sync speed against local import, and gossip latency against bare py-libp2p gossipsub.

Both build real proof-of-stake blocks first (untimed): a single validator whose genesis lies far
enough in the past that every slot has begun, its blocks made without the clock through the consensus
core and `ProofOfStake.builder`, its attestation included once per epoch (the chain justifies and
finalizes as a live one does). Nodes listen on 127.0.0.1 and keep no fsync (durable=False).

Sync: B blocks (default 1,000) of T plain transfers (default 4), served by a `Node` (no validator)
in a process of its own, as a peer is another machine (its reading, framing and encryption are not
charged to the syncing node). Timed, in this process:
- local: a fresh node (p2p listening, no peers) fed the served block messages from a list, each
  through the import path sync uses (`decode_block_message`, then `NodeNetwork.import_block`:
  consensus checks, execution with the consensus record in one write, fork choice, the head); the
  first half before the sync and the second after, so a change of the machine's load weighs on both;
- sync: a fresh node whose bootnode is the serving one, from the status handshake that shows the
  peer ahead to its head reaching block B.
The figure is blocks/s; sync / local should be at least 0.9. Where sync's time goes (importing,
decoding, waiting for ranges) comes from timing wrappers on the syncing node's own methods.

Gossip: M block messages (default 100, after 5 unmeasured; one transfer with 20-100 KB of calldata
each) published one at a time, by the nodes in turn, on 4-node networks, each node connected to the
other 3; latency is publish to delivery at each of the other 3, median and p99 over all deliveries.
The sides take turns message by message (each going first every other time), so they share the
machine's load alike. Each network has its 4 nodes in this one process, one thread: a delivery also
waits for what the other receivers do meanwhile (in the node side, 3 block imports at once), which
separate machines would do in parallel; the node side therefore also prints the import's time alone.
- node: 4 full `Node`s; the proposer imports its block, then times `NodeNetwork.publish_block`
  (`Network.publish` on /ogpu/1/blocks); delivery is when a peer's gossip handler has checked the
  block (size, rate, its consensus, `apply_block`) and imported it (execution, fork choice), which is
  when it forwards it;
- host: our `Network` hosts (Noise, yamux, our gossipsub settings and message id, the topic validator
  with its handshake, size and rate checks) with a node handler that accepts every message at once;
  `Network.publish`, delivery is the handler's call;
- bare: py-libp2p hosts with the same transport and gossipsub settings (heartbeat 1, degree 6/4/12,
  spam protection, adaptive gossip and eclipse protection off, no signing, the raised queue sizes of
  host.py), py-libp2p's own message id, no validator; `Pubsub.publish`, delivery is the
  subscription's `get()`.
Latency is shown inverted (1000 / ms, "/s") so higher is better and ratio = bare latency / ours.
Targets: host / bare at least 0.9 on the median (our host should cost at most a tenth more than the
library it wraps); node / bare has none (it includes checking and importing the block at each hop,
which bare gossipsub does not do) and shows what validation adds; p99s have none (on a shared
machine they measure its load).

Sizes: --blocks/BENCH_SYNC_BLOCKS (B, 1000), --txs/BENCH_SYNC_TXS (T, 4),
--messages/BENCH_GOSSIP_MESSAGES (M, 100). `--only sync|gossip` runs one of the two.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import random
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import rlp
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from benchmarks import Result, env_int
from ogpu_node.chain import Chain
from ogpu_node.config import GenesisConfig, parse_genesis
from ogpu_node.consensus import ValidatorKey
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import floor_data_gas
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.node import Node, NodeConfig
from ogpu_node.node.network import P2PConfig, decode_block_message
from ogpu_node.node.pos import ProofOfStake
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.p2p import limits
from ogpu_node.p2p.host import Network, Verdict
from tests.txfactory import sign_tx

CHAIN_ID = 4_343
SLOT_TIME = 1
SLOTS_PER_EPOCH = 8
SYNC_TIMEOUT_S = 600.0
SERVER_START_S = 120.0
GENESIS_FILE = "genesis.json"
ROOT = Path(__file__).resolve().parents[1]
GOSSIP_NODES = 4
GOSSIP_WARMUP = 5  # messages published before the measured ones (connections and meshes settle)
MESSAGE_BYTES = (20 * 1024, 100 * 1024)
GOSSIP_GAP_S = 0.02  # after a message reached every peer, before the next side publishes
DELIVERY_TIMEOUT_S = 10.0
MESH_TIMEOUT_S = 60.0

# A slot's transactions: (slot, the users' keypairs) -> signed transactions (py-evm objects).
Transactions = Callable[[int, list[Keypair]], list[Any]]


# -- the chain ------------------------------------------------------------------------------------


def transfers(slot: int, users: list[Keypair]) -> list[Any]:
    """One plain transfer from each user to a fresh address."""
    return [sign_tx(user, slot - 1, to=keccak(b"ogpu-bench-network to %d %d" % (i, slot))[:20], value=10**12,
                    chain_id=CHAIN_ID).decoded for i, user in enumerate(users)]


def calldata_transfer(seed: int) -> Transactions:
    """One transfer carrying 20-100 KB of random calldata: a block message of that size, cheap to execute."""
    rng = random.Random(seed)

    def make(slot: int, users: list[Keypair]) -> list[Any]:
        data = rng.randbytes(rng.randint(*MESSAGE_BYTES) - 1024)
        return [sign_tx(users[0], slot - 1, to=keccak(b"ogpu-bench-network sink")[:20], data=data,
                        gas=floor_data_gas(data) + 1_000, chain_id=CHAIN_ID).decoded]

    return make


def build_chain(directory: Path, blocks: int, users: int, transactions: Transactions) -> GenesisConfig:
    """A single validator's chain of ``blocks`` blocks, every slot filled, in ``directory``/chaindata
    (a node's datadir); the genesis."""
    validator = Keypair.from_private_key(keccak(b"ogpu-bench-network validator"))
    accounts = [Keypair.from_private_key(keccak(b"ogpu-bench-network user %d" % i)) for i in range(users)]
    length = blocks // SLOTS_PER_EPOCH + 2  # one RANDAO reveal per epoch
    key = ValidatorKey(validator, randao_chain(validator.private_key, length))
    genesis_time = int(time.time()) - (blocks + 60) * SLOT_TIME  # every block's slot has begun
    document = {
        "config": {"chainId": CHAIN_ID},
        "timestamp": genesis_time,
        "alloc": {"0x" + k.address.hex(): {"balance": hex(10**24)} for k in (validator, *accounts)},
        "consensus": {
            "genesisTime": genesis_time, "slotTime": SLOT_TIME, "slotsPerEpoch": SLOTS_PER_EPOCH,
            "randaoLength": length,
            "validators": [{"address": "0x" + validator.address.hex(), "stake": hex(1_000 * 10**18),
                            "randaoTip": "0x" + key.randao.tip.hex()}],
        },
    }
    genesis = parse_genesis(document)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / GENESIS_FILE).write_text(json.dumps(document))  # for a serving node in another process
    store = LMDBStore(directory / "chaindata", durable=False)
    try:
        chain = Chain(store, genesis)
        pos = ProofOfStake(chain, genesis.consensus, key)
        for slot in range(1, blocks + 1):
            proposal = pos.core.propose(slot)
            assert proposal is not None, "the single validator proposes every slot"
            attrs = BlockAttributes(proposal.timestamp, proposal.coinbase, proposal.mix_hash,
                                    extra_data=proposal.body.root, settlement=proposal.settlement)
            built: list[Any] = []
            executed = pos.builder(proposal, built)(attrs, transactions(slot, accounts))
            if executed.excluded:
                raise RuntimeError(f"block {slot} left out transactions: {executed.excluded[:2]}")
            pos.core.on_block(built[0])
            pos.core.attest(slot)  # its attestation slot once per epoch: a later block includes it
        assert chain.head.block_number == blocks
    finally:
        store.close()
    return genesis


def _node_config(datadir: Path, genesis: GenesisConfig, bootnodes: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig(datadir=datadir, genesis=genesis, signer=None, http_port=0, ws_port=None, durable=False,
                      p2p=P2PConfig(port=0, bootnodes=bootnodes))


async def _messages(server: Node, blocks: int) -> list[bytes]:
    """The block messages ``server`` sends for blocks 1..blocks, through its blocks-by-range handler."""
    assert server.network is not None
    messages: list[bytes] = []
    while len(messages) < blocks:
        request = rlp.encode([len(messages) + 1, limits.MAX_BLOCKS_PER_REQUEST])
        before = len(messages)
        async for message in server.network.serve(limits.PROTOCOL_BLOCKS_BY_RANGE, request):
            messages.append(message)
        if len(messages) == before:
            raise RuntimeError(f"the node serves no block {before + 1}")
    return messages[:blocks]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"


# -- sync -----------------------------------------------------------------------------------------


@dataclass
class Spans:
    """Seconds spent in each wrapped method, and how often it was called."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    each: dict[str, list[float]] = field(default_factory=dict)

    def _add(self, name: str, start: float) -> None:
        took = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        self.calls[name] = self.calls.get(name, 0) + 1
        self.each.setdefault(name, []).append(took)

    def timed(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self._add(name, start)

        return wrapper

    def timed_sync(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._add(name, start)

        return wrapper

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time ``owner.attribute`` (a method, async or not) as ``name``, if it has one."""
        method = getattr(owner, attribute, None)
        if method is None:
            return
        timed = self.timed if inspect.iscoroutinefunction(method) else self.timed_sync
        setattr(owner, attribute, timed(name, method))


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # this process's CPU seconds (the serving node runs in another)
    spans: Spans


class LocalImport:
    """A fresh node (p2p listening, no peers) importing block messages read from a list, each through
    the import path sync uses; it can stop part way and go on later (the sync runs in between)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.spans = Spans()
        self.wall = self.cpu = 0.0
        node.network.import_block = self.spans.timed("import", node.network.import_block)

    async def feed(self, messages: list[bytes]) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        for message in messages:
            block, inp = decode_block_message(message)
            await self.node.network.import_block(block, inp)
        self.wall += time.perf_counter() - start
        self.cpu += time.process_time() - cpu

    def timing(self) -> Timing:
        return Timing(self.wall, self.cpu, self.spans)


async def _sync(genesis: GenesisConfig, directory: Path, bootnode: str, blocks: int) -> Timing:
    """A fresh node whose bootnode is the serving one syncs: from the status handshake that shows the
    server ahead to its head reaching ``blocks``."""
    spans = Spans()
    started: list[tuple[float, float]] = []
    async with trio.open_nursery() as nursery:
        node = Node(_node_config(directory, genesis, (bootnode,)))
        network = node.network
        assert network is not None
        on_peer = network.host.on_peer

        async def note_start(peer: str, status: bytes) -> None:
            if not started and network.peer_heads.get(peer, 0) > network.chain.head.block_number:
                started.append((time.perf_counter(), time.process_time()))
            await on_peer(peer, status)

        # Instance attributes shadow the methods: the node's own calls go through the timers. Past
        # import_block, these are sync's internals (node/sync.py): a renamed one is left untimed.
        network.host.on_peer = note_start
        imported = spans.timed("import", network.import_block)
        done = trio.Event()

        async def import_block(*args: Any) -> None:
            await imported(*args)
            if network.chain.head.block_number >= blocks:
                done.set()

        network.import_block = import_block
        spans.wrap(network.sync, "_import", "batch")  # decode a batch, import its blocks
        spans.wrap(network.sync, "_request", "request")  # runs WINDOW batches ahead of the importing one
        spans.wrap(network.sync, "_refresh_heads", "status")
        await nursery.start(node.run)
        with trio.fail_after(SYNC_TIMEOUT_S):
            await done.wait()
        timing = Timing(time.perf_counter() - started[0][0], time.process_time() - started[0][1], spans)
        nursery.cancel_scope.cancel()
    return timing


class Server:
    """The serving node in a process of its own (`--serve DATADIR`), as a peer is another machine: its
    work (reading blocks, framing, encryption) is not charged to the syncing node. It prints its
    multiaddr, serves until its stdin closes, then prints the seconds it spent reading ranges."""

    def __init__(self, datadir: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.network", "--serve", str(datadir)],
                                        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            address = _read_line(self.process, SERVER_START_S)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        self.multiaddr = address

    def stop(self) -> tuple[float, int]:
        """Stop it; (seconds it spent reading block ranges, how many)."""
        try:
            self.process.stdin.close()
            seconds, calls = _read_line(self.process, 30.0).split()
            self.process.wait(timeout=30)
            return float(seconds), int(calls)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line the process prints; RuntimeError if it exits or stays silent for ``timeout``."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"the serving node printed nothing in {timeout:.0f} s")
    line = process.stdout.readline().strip()
    if not line:
        raise RuntimeError(f"the serving node exited (status {process.wait()})")
    return line


def serve(datadir: Path) -> None:
    """Run a node on the chain in ``datadir`` (built by build_chain) until stdin closes (`--serve`)."""
    genesis = parse_genesis(json.loads((datadir / GENESIS_FILE).read_text()))

    async def main() -> None:
        spans = Spans()
        async with trio.open_nursery() as nursery:
            node = Node(_node_config(datadir, genesis))
            spans.wrap(node.network, "_range_messages", "serve")
            await nursery.start(node.run)
            print(node.network.host.multiaddr, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes it
            nursery.cancel_scope.cancel()
        print(spans.seconds.get("serve", 0.0), spans.calls.get("serve", 0), flush=True)

    trio.run(main)


async def _read_messages(genesis: GenesisConfig, datadir: Path, blocks: int) -> list[bytes]:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(Node(_node_config(datadir, genesis)).run)
        assert node.chain.head.block_number == blocks
        messages = await _messages(node, blocks)
        nursery.cancel_scope.cancel()
    return messages


async def _measure_sync(genesis: GenesisConfig, directory: Path, bootnode: str,
                        messages: list[bytes]) -> tuple[Timing, Timing]:
    blocks = len(messages)
    async with trio.open_nursery() as nursery:
        local = LocalImport(await nursery.start(Node(_node_config(directory / "local", genesis)).run))
        # The local import's two halves come before and after the sync, so a change in the machine's
        # load during the run weighs on both figures.
        await local.feed(messages[:blocks // 2])
        synced = await _sync(genesis, directory / "synced", bootnode, blocks)
        await local.feed(messages[blocks // 2:])
        assert local.node.chain.head.block_number == blocks, "the local import did not reach the last block"
        nursery.cancel_scope.cancel()
    return local.timing(), synced


def run_sync(blocks: int, txs: int) -> Result:
    print(f"sync: {blocks} proof-of-stake blocks x {txs} transfers from one peer; {_load()}", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="ogpu-bench-network-"))
    try:
        start = time.perf_counter()
        genesis = build_chain(directory / "server", blocks, txs, transfers)
        print(f"  built in {time.perf_counter() - start:.1f} s", flush=True)
        messages = trio.run(_read_messages, genesis, directory / "server", blocks)
        size = sum(len(m) for m in messages)
        server = Server(directory / "server")
        try:
            local, synced = trio.run(_measure_sync, genesis, directory, server.multiaddr, messages)
        finally:
            serve_s, serve_calls = server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    seconds, calls = synced.spans.seconds, synced.spans.calls
    importing = seconds["import"]
    batches = seconds.get("batch", importing)
    waiting = synced.wall - batches - seconds.get("status", 0.0)
    print(f"  {size / 1024:.0f} KiB of block messages", flush=True)
    print(f"  local import: {local.wall:.2f} s (CPU {local.cpu:.2f} s), {local.wall / blocks * 1000:.1f} ms/block; "
          f"half before the sync, half after", flush=True)
    print(f"  sync: {synced.wall:.2f} s (CPU {synced.cpu:.2f} s): importing "
          f"{importing:.2f} s ({importing / blocks * 1000:.1f} ms/block), decoding batches {batches - importing:.2f} s, "
          f"status exchanges {seconds.get('status', 0.0):.2f} s, the rest (waiting for a batch to arrive, "
          f"scheduling) {waiting:.2f} s", flush=True)
    if "request" in calls:
        print(f"    {calls['request']} range requests took {seconds['request']:.2f} s in all "
              f"({seconds['request'] / calls['request'] * 1000:.0f} ms each, overlapping the imports), of which "
              f"the server (another process) reading blocks {serve_s:.2f} s in {serve_calls}", flush=True)
    local_each, sync_each = local.spans.each["import"], synced.spans.each["import"]
    print(f"  median import_block: local {statistics.median(local_each) * 1000:.1f} ms, during sync "
          f"{statistics.median(sync_each) * 1000:.1f} ms; CPU-time ratio sync/local = {local.cpu / synced.cpu:.2f} "
          "(both less sensitive than wall time to other processes' load)", flush=True)
    result = Result(
        name="sync",
        unit="blocks/s",
        ours=blocks / synced.wall,
        baseline=blocks / local.wall,
        baseline_name="local import",
        target=0.9,
        note=f"{blocks} blocks x {txs} transfers from one peer; of sync's time, importing {importing / synced.wall:.0%}, "
             f"decoding {(batches - importing) / synced.wall:.0%}, waiting and the rest {waiting / synced.wall:.0%}",
    )
    print("  " + result.line(), flush=True)
    return result


# -- gossip ---------------------------------------------------------------------------------------


class Deliveries:
    """When each node of one network first got each message, by the message's index."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.index = {payload: i for i, payload in enumerate(payloads)}
        self.published: dict[int, float] = {}
        self.at: dict[int, dict[int, float]] = {}
        self._publisher: dict[int, int] = {}
        self._complete: dict[int, trio.Event] = {}

    def expect(self, index: int, publisher: int) -> trio.Event:
        self._publisher[index] = publisher
        self.at[index] = {}
        self._complete[index] = trio.Event()
        return self._complete[index]

    def record(self, node: int, payload: bytes) -> None:
        now = time.perf_counter()
        index = self.index.get(payload)
        seen = None if index is None else self.at.get(index)
        if seen is None or node == self._publisher[index] or node in seen:
            return
        seen[node] = now
        if len(seen) == GOSSIP_NODES - 1:
            self._complete[index].set()

    def latencies_ms(self, counted: range) -> tuple[list[float], int]:
        """The counted messages' latencies, sorted, and how many deliveries never came."""
        latencies, lost = [], 0
        for index in counted:
            seen = self.at[index]
            lost += GOSSIP_NODES - 1 - len(seen)
            latencies += [(at - self.published[index]) * 1000 for at in seen.values()]
        return sorted(latencies), lost

    def first_ms(self, counted: range) -> list[float]:
        """Each counted message's latency to the first peer that got it: the others' deliveries also
        wait for what the first one's node did with it (one thread)."""
        return [(min(self.at[i].values()) - self.published[i]) * 1000 for i in counted if self.at[i]]


# publish(payload) -> when the timed publish began (what comes before it, such as the proposer's own
# import of its block, is not timed)
Publish = Callable[[bytes], Awaitable[float]]


@dataclass
class GossipSide:
    name: str
    deliveries: Deliveries
    publish: list[Publish]
    pubsubs: list[Any]  # each node's py-libp2p Pubsub, to see its mesh
    hosts: list[Network] = field(default_factory=list)  # ours: each must have finished its status handshakes
    handling: list[float] = field(default_factory=list)  # node: ms in the gossip handler per delivery
    alone: list[float] = field(default_factory=list)  # node: ms for the proposer to decode and import its block

    def ready(self) -> bool:
        peers = GOSSIP_NODES - 1
        return (all(len(p.router.mesh.get(limits.TOPIC_BLOCKS, ())) == peers for p in self.pubsubs)
                and all(len(h.peers) == peers for h in self.hosts))


class AcceptAll:
    """A node's handlers with the node's decisions left out: every peer is on our chain, every message is
    valid (its delivery is recorded), no request is served."""

    def __init__(self, node: int, deliveries: Deliveries) -> None:
        self.node = node
        self.deliveries = deliveries

    def status(self) -> bytes:
        return b"bench"

    def accept_status(self, peer: str, status: bytes) -> bool:
        return True

    async def gossip(self, topic: str, payload: bytes, peer: str) -> Verdict:
        self.deliveries.record(self.node, payload)
        return Verdict.ACCEPT

    async def serve(self, protocol: str, request: bytes) -> AsyncIterator[bytes]:
        return
        yield b""


async def _start_nodes(nursery: trio.Nursery, genesis: GenesisConfig, directory: Path,
                       payloads: list[bytes]) -> GossipSide:
    side = GossipSide("node", Deliveries(payloads), [], [])
    for i in range(GOSSIP_NODES):  # each dials every node started before it: a full mesh
        node = Node(_node_config(directory / f"node{i}", genesis, tuple(h.multiaddr for h in side.hosts)))
        network = node.network
        gossip = network.gossip

        async def delivered(topic: str, payload: bytes, peer: str, i: int = i, gossip: Any = gossip) -> Verdict:
            start = time.perf_counter()
            verdict = await gossip(topic, payload, peer)
            if verdict is Verdict.ACCEPT:  # checked and imported: forwarded now
                side.deliveries.record(i, payload)
                side.handling.append((time.perf_counter() - start) * 1000)
            return verdict

        network.gossip = delivered

        async def publish(payload: bytes, network: Any = network) -> float:
            start = time.perf_counter()
            block, inp = decode_block_message(payload)
            await network.import_block(block, inp)  # the proposer has its block before it gossips it
            side.alone.append((time.perf_counter() - start) * 1000)  # no other node busy meanwhile
            start = time.perf_counter()
            await network.publish_block(inp)
            return start

        await nursery.start(node.run)
        side.hosts.append(network.host)
        side.pubsubs.append(network.host._pubsub)
        side.publish.append(publish)
    return side


async def _start_hosts(nursery: trio.Nursery, payloads: list[bytes]) -> GossipSide:
    side = GossipSide("host", Deliveries(payloads), [], [])
    for i in range(GOSSIP_NODES):
        config = P2PConfig(port=0, bootnodes=tuple(h.multiaddr for h in side.hosts))
        host = await nursery.start(Network(config, create_secp256k1_key_pair(), AcceptAll(i, side.deliveries)).run)

        async def publish(payload: bytes, host: Network = host) -> float:
            start = time.perf_counter()
            await host.publish(limits.TOPIC_BLOCKS, payload)
            return start

        side.hosts.append(host)
        side.pubsubs.append(host._pubsub)
        side.publish.append(publish)
    return side


async def _bare_node(index: int, deliveries: Deliveries, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A py-libp2p host with gossipsub configured as ours is (p2p/host.py), nothing of ours on top."""
    key = create_secp256k1_key_pair()
    noise = NoiseTransport(key, noise_privkey=create_x25519_key_pair().private_key)
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    host = new_host(key_pair=key, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX", listen_addrs=[listen])
    gossipsub = GossipSub([PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1,
                          adaptive_gossip_enabled=False, spam_protection_enabled=False,
                          eclipse_protection_enabled=False)
    pubsub = Pubsub(host, gossipsub, strict_signing=False, max_inbound_rpc_size=limits.MAX_FRAME + 4096,
                    cache_size=limits.SEEN_CACHE)
    try:
        async with background_trio_service(pubsub), background_trio_service(gossipsub):
            await pubsub.wait_until_ready()
            async with host.run(listen_addrs=[listen]):
                subscription = await pubsub.subscribe(limits.TOPIC_BLOCKS)
                port = host.get_addrs()[0].value_for_protocol("tcp")
                task_status.started((host, pubsub, f"/ip4/127.0.0.1/tcp/{port}/p2p/{host.get_id().to_base58()}"))
                while True:
                    message = await subscription.get()
                    deliveries.record(index, bytes(message.data))
    finally:
        with trio.CancelScope(shield=True):
            await host.close()


async def _start_bare(nursery: trio.Nursery, payloads: list[bytes]) -> GossipSide:
    side = GossipSide("bare", Deliveries(payloads), [], [])
    nodes = [await nursery.start(_bare_node, i, side.deliveries) for i in range(GOSSIP_NODES)]
    for i, (host, _, _) in enumerate(nodes):
        for _, _, address in nodes[:i]:
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(address)))
    for _, pubsub, _ in nodes:

        async def publish(payload: bytes, pubsub: Any = pubsub) -> float:
            start = time.perf_counter()
            await pubsub.publish(limits.TOPIC_BLOCKS, payload)
            return start

        side.pubsubs.append(pubsub)
        side.publish.append(publish)
    return side


async def _publish_one(side: GossipSide, index: int, payload: bytes) -> None:
    """Node index % 4 publishes message ``index``; returns once the other 3 have it (or after the timeout)."""
    publisher = index % GOSSIP_NODES
    complete = side.deliveries.expect(index, publisher)
    side.deliveries.published[index] = await side.publish[publisher](payload)
    with trio.move_on_after(DELIVERY_TIMEOUT_S):
        await complete.wait()


async def _measure_gossip(genesis: GenesisConfig, directory: Path, blocks: int) -> list[GossipSide]:
    async with trio.open_nursery() as nursery:
        source = await nursery.start(Node(_node_config(directory / "source", genesis)).run)
        payloads = await _messages(source, blocks)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        sides = [await _start_nodes(nursery, genesis, directory, payloads), await _start_hosts(nursery, payloads),
                 await _start_bare(nursery, payloads)]
        with trio.fail_after(MESH_TIMEOUT_S):
            while not all(side.ready() for side in sides):
                await trio.sleep(0.05)
        print(f"  {len(sides) * GOSSIP_NODES} nodes up, every mesh full, in {time.perf_counter() - start:.1f} s",
              flush=True)
        for index, payload in enumerate(payloads):
            for side in sides if index % 2 else sides[::-1]:
                await _publish_one(side, index, payload)
                await trio.sleep(GOSSIP_GAP_S)
        nursery.cancel_scope.cancel()
    return sides


def _percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))]


def run_gossip(count: int) -> list[Result]:
    print(f"gossip: {GOSSIP_NODES}-node networks in one process, {count} block messages of 20-100 KB, each "
          f"timed from publish to delivery at the other {GOSSIP_NODES - 1}; {_load()}", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="ogpu-bench-gossip-"))
    blocks = GOSSIP_WARMUP + count
    try:
        start = time.perf_counter()
        genesis = build_chain(directory / "source", blocks, 1, calldata_transfer(seed=13))
        print(f"  built {blocks} blocks in {time.perf_counter() - start:.1f} s", flush=True)
        sides = trio.run(_measure_gossip, genesis, directory, blocks)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    counted = range(GOSSIP_WARMUP, blocks)
    sizes = sorted(len(p) for p, i in sides[0].deliveries.index.items() if i in counted)
    measured = {side.name: side.deliveries.latencies_ms(counted) for side in sides}
    for side in sides:
        values, lost = measured[side.name]
        first = statistics.median(side.deliveries.first_ms(counted))
        print(f"  {side.name}: {len(values)} deliveries, {lost} lost; median {statistics.median(values):.1f} ms, "
              f"p90 {_percentile(values, 0.9):.1f} ms, p99 {_percentile(values, 0.99):.1f} ms, "
              f"max {values[-1]:.1f} ms; to the first of the {GOSSIP_NODES - 1} peers, median {first:.1f} ms",
              flush=True)
    handling = sorted(sides[0].handling[GOSSIP_WARMUP * (GOSSIP_NODES - 1):])
    alone = statistics.median(sides[0].alone[GOSSIP_WARMUP:])
    print(f"  node: the gossip handler (checks, import, fork choice) took {statistics.median(handling):.1f} ms "
          f"per delivery (median; p90 {_percentile(handling, 0.9):.1f} ms), while the 3 receivers share one "
          f"thread; the same block decoded and imported with no other node busy (the proposer, before it "
          f"publishes): {alone:.1f} ms", flush=True)
    bare, bare_lost = measured["bare"]
    results = []
    for name, target in (("host", 0.9), ("node", None)):
        ours, lost = measured[name]
        for label, share in (("median", 0.5), ("p99", 0.99)):
            ours_ms, bare_ms = (statistics.median(ours), statistics.median(bare)) if share == 0.5 else \
                (_percentile(ours, share), _percentile(bare, share))
            results.append(Result(
                name=f"gossip {label} ({name})",
                unit="/s",
                ours=1000 / ours_ms,
                baseline=1000 / bare_ms,
                baseline_name="bare gossipsub",
                target=target if label == "median" else None,
                note=f"{label} publish-to-delivery {ours_ms:.1f} ms, bare {bare_ms:.1f} ms (shown as 1000/ms); "
                     f"{count} messages of {sizes[0] // 1024}-{sizes[-1] // 1024} KiB x {GOSSIP_NODES - 1} peers; "
                     f"lost {lost}, bare {bare_lost}",
            ))
    for result in results:
        print("  " + result.line(), flush=True)
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.network", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=env_int("BENCH_SYNC_BLOCKS", 1000))
    parser.add_argument("--txs", type=int, default=env_int("BENCH_SYNC_TXS", 4))
    parser.add_argument("--messages", type=int, default=env_int("BENCH_GOSSIP_MESSAGES", 100))
    parser.add_argument("--only", choices=("sync", "gossip"), help="run one of the two")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the sync's serving node (Server)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return []
    logging.getLogger("libp2p").setLevel(logging.WARNING)  # its warnings about peers going away at the end
    results = []
    if args.only in (None, "sync"):
        results.append(run_sync(args.blocks, args.txs))
    if args.only in (None, "gossip"):
        results += run_gossip(args.messages)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
