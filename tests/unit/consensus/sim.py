"""A deterministic simulation of validators running the real consensus core: a simulated clock, a
network with seeded delays, drops and reordering, validators that go offline and come back, and
partitions that heal. No sockets, no wall clock; one seed reproduces a run exactly.

By default blocks carry no transactions (their root is a hash of their header fields); the core
checks them exactly as it checks a real block's header and consensus body. With ``ledger=`` (a
`sim_chain.ChainLedger`) every node also keeps a real `Chain`: proposals become real blocks of the
nodes' users' transactions, blocks are executed on import, transactions are gossiped like the rest,
and each node's canonical chain follows its core's head.

Byzantine behaviour is opt-in per node and slot (`fork_block`, `byzantine_attest`): a node then signs
with its key directly, past its core's slashing protection; a peer's core may refuse what it forged
(a surround vote is valid on no branch) without failing the run. `reports` lets the nodes send what
their validator service sends after attesting (slashing reports). `play` may be called again to go
on from the slot an earlier call stopped at.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import rlp

from ogpu_node.consensus import (
    BlockInput,
    ConsensusCore,
    ConsensusParams,
    HashChain,
    InvalidConsensus,
    Rules,
    UnknownParent,
    Validator,
    ValidatorKey,
    ValidatorSet,
    genesis_state,
)
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.types.signing import SignedAttestation

if TYPE_CHECKING:
    from tests.unit.consensus.sim_chain import ChainLedger

GENESIS_ROOT = keccak(b"sim genesis")
GENESIS_MIX = keccak(b"sim genesis mix")
CHAIN_ID = 7_777
RANDAO_LENGTH = 64  # epochs: enough for any run here, cheap to build


def make_keys(count: int) -> list[ValidatorKey]:
    return [
        ValidatorKey(Keypair.from_private_key(keccak(b"sim validator %d" % i)),
                     HashChain(keccak(b"sim randao %d" % i), RANDAO_LENGTH))
        for i in range(count)
    ]


def make_rules(keys: list[ValidatorKey], stakes: list[int] | None = None, slots_per_epoch: int = 8) -> Rules:
    stakes = stakes or [32] * len(keys)
    validators = ValidatorSet.of([Validator(k.address, s, k.randao.tip) for k, s in zip(keys, stakes, strict=True)])
    params = ConsensusParams(genesis_time=1_000_000, slot_time=12, slots_per_epoch=slots_per_epoch,
                             randao_length=RANDAO_LENGTH)
    return Rules(params, CHAIN_ID, GENESIS_ROOT, lambda root, epoch: validators)


def block_root(parent: bytes, timestamp: int, coinbase: bytes, mix: bytes, extra: bytes) -> bytes:
    return keccak(rlp.encode([parent, timestamp, coinbase, mix, extra]))


@dataclass
class Run:
    """What the simulation saw: each node's finalized checkpoints over time and final heads."""

    # per node, each change of its finalized checkpoint: (epoch, root, slot it happened in)
    finalized: list[list[tuple[int, bytes, int]]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    blocks: dict[bytes, BlockInput] = field(default_factory=dict)


class Simulation:
    def __init__(self, seed: int, keys: list[ValidatorKey], rules: Rules, max_delay: float,
                 drop: Callable[[int], float] = lambda slot: 0.0, ledger: ChainLedger | None = None) -> None:
        self.rng = random.Random(seed)
        self.rules = rules
        self.params = rules.params
        self.ledger = ledger
        if ledger is None:
            anchor = genesis_state(rules, GENESIS_ROOT, GENESIS_MIX)
            self.nodes = [ConsensusCore(rules, anchor, key) for key in keys]
        else:  # each node's core from its own chain's genesis and rules
            self.nodes = [ledger.core(i, key) for i, key in enumerate(keys)]
        self.max_delay = max_delay
        self.drop = drop  # the share of messages lost at a slot
        self.offline: Callable[[int, int], bool] = lambda node, slot: False
        self.linked: Callable[[int, int, int], bool] = lambda a, b, slot: True
        self._queue: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self.run = Run(finalized=[[] for _ in keys])
        self._missed: list[list[object]] = [[] for _ in keys]  # what a node got while it was away
        self._slot = 0
        self._played = 0  # the last slot played: a later play() goes on from there
        self._was_offline = [False] * len(keys)
        # Byzantine behaviour, None meaning honest (both need the node's key, which a test holds):
        # (node, slot) -> the peers that get a second block the node makes at its proposer slot, with
        # other transactions and signed past its guard (the other peers get its first): a double proposal.
        self.fork_block: Callable[[int, int], Collection[int] | None] = lambda node, slot: None
        # (node, slot) -> the attestations the node sends at the slot's attestation time instead of its
        # duty's, signed by the test (a double vote: its duty's and another; a surround vote).
        self.byzantine_attest: Callable[[int, int], list[SignedAttestation] | None] = lambda node, slot: None
        self._forged: set[object] = set()  # what byzantine nodes sent: a peer may refuse it
        # (node, slot) -> what the node sends after attesting: its validator's slashing reports.
        self.reports: Callable[[int, int], list[object]] = lambda node, slot: []

    def _send(self, sender: int, message: object, now: float, slot: int, to: Collection[int] | None = None) -> None:
        for receiver in range(len(self.nodes)):
            if receiver == sender or not self.linked(sender, receiver, slot) or (to is not None and receiver not in to):
                continue
            if self.rng.random() < self.drop(slot):
                continue
            self._seq += 1
            heapq.heappush(self._queue, (now + self.rng.random() * self.max_delay, self._seq, receiver, message))

    def _deliver(self, receiver: int, message: object, slot: int) -> None:
        if self.offline(receiver, slot):
            self._missed[receiver].append(message)
            return
        node = self.nodes[receiver]
        if not isinstance(message, BlockInput | SignedAttestation):  # a transaction (with a ledger only)
            assert self.ledger is not None
            self.ledger.receive_tx(receiver, message)
            return
        try:
            if isinstance(message, BlockInput):
                if self.ledger is not None:  # executed first: a block the chain refuses fails the run
                    self.ledger.receive_block(receiver, message.root)
                node.on_block(message)
            else:
                node.on_attestation(message)
        except UnknownParent:
            # Kept by the core; ask a peer for the missing block by its hash, as a node's sync does.
            missing = message.parent_root if isinstance(message, BlockInput) else message.message.head
            if missing in self.run.blocks:
                self._seq += 1
                heapq.heappush(self._queue, (self.params.timestamp(slot) + self.rng.random() * self.max_delay,
                                             self._seq, receiver, self.run.blocks[missing]))
        except InvalidConsensus as exc:
            if message not in self._forged:
                raise AssertionError(f"node {receiver} refused an honest message: {exc}") from exc
        if self.ledger is not None:
            self.ledger.follow(receiver, node)
        self._note(receiver)

    def _note(self, index: int) -> None:
        finalized = self.nodes[index].finalized
        seen = self.run.finalized[index]
        if not seen or seen[-1][:2] != (finalized.epoch, finalized.root):
            seen.append((finalized.epoch, finalized.root, self._slot))

    def _come_back(self, node: int, slot: int) -> None:
        """A node that returns gets what it missed, and the blocks it never received (a sync)."""
        missed, self._missed[node] = self._missed[node], []
        for block in sorted(self.run.blocks.values(), key=lambda b: b.body.slot):
            self._deliver(node, block, slot)
        for message in missed:
            self._deliver(node, message, slot)

    def descends(self, root: bytes, ancestor: bytes) -> bool:
        """Whether ``ancestor`` is on ``root``'s branch (by the blocks the simulation made)."""
        while root != ancestor:
            block = self.run.blocks.get(root)
            if block is None:
                return False
            root = block.parent_root
        return True

    def _run_until(self, time: float, slot: int) -> None:
        while self._queue and self._queue[0][0] <= time:
            _, _, receiver, message = heapq.heappop(self._queue)
            self._deliver(receiver, message, slot)

    def play(self, slots: int) -> Run:
        """Play up to slot ``slots``, from slot 1 or from where an earlier call stopped."""
        params = self.params
        was_offline = self._was_offline
        first, self._played = self._played + 1, max(self._played, slots)
        for slot in range(first, slots + 1):
            self._slot = slot
            start = params.timestamp(slot)
            for i in range(len(self.nodes)):
                away = self.offline(i, slot)
                if was_offline[i] and not away:
                    self._come_back(i, slot)
                was_offline[i] = away
            self._run_until(start, slot)
            if self.ledger is not None:
                for i in range(len(self.nodes)):
                    if not self.offline(i, slot):
                        for tx in self.ledger.submit(i, slot):
                            self._send(i, tx, start, slot)
            for i, node in enumerate(self.nodes):
                if self.offline(i, slot):
                    continue
                proposal = node.propose(slot)
                if proposal is None:
                    continue
                if self.ledger is None:
                    extra = proposal.body.root
                    root = block_root(proposal.parent_root, proposal.timestamp, proposal.coinbase,
                                      proposal.mix_hash, extra)
                    block = BlockInput(root, proposal.parent_root, proposal.timestamp, proposal.coinbase,
                                       proposal.mix_hash, extra, proposal.body, node.sign_proposal(slot, root))
                else:
                    block = self.ledger.build(i, node, proposal)
                fork_to = self.fork_block(i, slot)
                if fork_to is not None:
                    if self.ledger is None:
                        raise ValueError("a double proposal needs a ledger: its blocks differ in their transactions")
                    second = self.ledger.build_conflicting(i, node, proposal)
                    node.on_block(second)
                    self.run.blocks[second.root] = second
                    self._forged.update((block, second))
                    self._send(i, second, start, slot, to=fork_to)
                node.on_block(block)
                if self.ledger is not None:
                    self.ledger.follow(i, node)
                self._note(i)
                self.run.blocks[block.root] = block
                self._send(i, block, start, slot,
                           to=None if fork_to is None else set(range(len(self.nodes))) - set(fork_to))
            attesting = start + params.slot_time / 3
            self._run_until(attesting, slot)
            for i, node in enumerate(self.nodes):
                if self.offline(i, slot):
                    continue
                forged = self.byzantine_attest(i, slot)
                if forged is not None:
                    self._forged.update(forged)
                    for attestation in forged:
                        self._send(i, attestation, attesting, slot)
                    continue
                attestation = node.attest(slot)
                if attestation is not None:
                    self._send(i, attestation, attesting, slot)
            for i in range(len(self.nodes)):
                if not self.offline(i, slot):
                    for message in self.reports(i, slot):
                        self._send(i, message, attesting, slot)
        self._run_until(params.timestamp(slots + 1), slots + 1)
        self.run.heads = [node.head() for node in self.nodes]
        return self.run
