"""The simulation's execution layer (`sim.py` with ``ledger=``): each simulated node keeps a real
`Chain` on its own LMDB store, on a proof-of-stake genesis. A proposal becomes a real block built by
`Chain.build_block` from the node's pool (plain transfers, Stake, Task and Bid calls of the node's
local users); a block that arrives is imported (`Chain.import_block`, kept until its parent is known),
and after every message the node's canonical chain follows its consensus core's head with
`Chain.set_head`, so a reorg rewrites each node's canonical index as fork choice decides.

Every node has a local client who sends transactions through it, gossiped like the rest (transfers
to other clients, `submitTask`), and the first few nodes a provider (staked and registered in slot 1,
then bidding on the newest task its node's head shows).

Each node's consensus is a `ProofOfStake` over its chain, as a validator node's is, so a node can
report the offences its core found as the validator service does (`report_offences`), and a
byzantine one can sign a second block for its slot (`build_conflicting`).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import encode

from ogpu_node.chain import Chain, HeadChange, system_tx_hash
from ogpu_node.config import GenesisConfig, parse_genesis
from ogpu_node.consensus import BlockInput, ConsensusCore, Proposal, ValidatorKey, apply_block
from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.addresses import BID, STAKE, TASK
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.execution.calls import CallRequest, call
from ogpu_node.execution.codec import decode_block, decode_transaction, encode_block
from ogpu_node.execution.errors import ExecutionReverted
from ogpu_node.execution.state import BlockAttributes, ExecutedBlock
from ogpu_node.node.pos import ProofOfStake, block_input, chain_rules
from ogpu_node.node.validator import ValidatorService
from ogpu_node.types.protocol import BPS, Role, TaskKind
from ogpu_node.types.signing import BlockProposal
from tests.abiterms import struct_arg
from tests.txfactory import sign_tx

OGPU = 10**18
GWEI = 10**9
CHAIN_ID = 7_778
GENESIS_TIME = 1_000_000
SLOT_TIME = 12
FUNDS = 10**6 * OGPU
PROVIDER_STAKE = 500 * OGPU
CALL_GAS = 2_000_000
TERMS = {  # a batch task that stays in its bid window for a few slots, then is assigned or cancelled
    "maxPayment": 10 * OGPU, "councilSize": 1, "councilShareBps": 1_000, "checkpoints": 2,
    "segmentWindow": 3_600, "bidWindow": 3 * SLOT_TIME, "firstN": 0, "minBids": 1, "confirmWindow": 600,
}


def _abi_call(contract: str, function: str, *args: Any) -> bytes:
    fn = load_abi(contract).function(function)
    return fn.selector + encode(list(fn.inputs), list(args))


def _terms(**overrides: int) -> tuple:
    """submitTask's terms struct in the ABI's component order (a component not named is its zero)."""
    return struct_arg("Task", "submitTask", "terms", **{**TERMS, **overrides})


Traffic = Callable[[int, int], str | None]  # (node, slot) -> what its client sends: "task", "transfer" or None


def random_traffic(seed: int, send_share: float, task_share: float) -> Traffic:
    """Each node's client sends at a slot with probability send_share: a task with task_share, else a transfer."""
    rng = random.Random(seed ^ 0x7AFF1C)

    def traffic(node: int, slot: int) -> str | None:
        if rng.random() >= send_share:
            return None
        return "task" if rng.random() < task_share else "transfer"

    return traffic


@dataclass(frozen=True)
class TransactionMessage:
    """A transaction as gossiped: its raw bytes, and the decoded object a builder takes."""

    raw: bytes
    tx: Any
    sender: bytes
    nonce: int
    to_task: bool


@dataclass
class User:
    keypair: Keypair
    nonce: int = 0

    @property
    def address(self) -> bytes:
        return self.keypair.address

    def send(self, to: bytes, data: bytes = b"", value: int = 0, gas: int = 21_000) -> TransactionMessage:
        signed = sign_tx(self.keypair, self.nonce, to=to, value=value, data=data, gas=gas, tip=GWEI,
                         max_fee=10 * GWEI, chain_id=CHAIN_ID)
        self.nonce += 1
        return TransactionMessage(signed.raw, decode_transaction(signed.raw), self.address, self.nonce - 1, to == TASK)


def make_genesis(keys: Sequence[ValidatorKey], stakes: Sequence[int], users: Sequence[User],
                 slots_per_epoch: int, consensus: Mapping[str, int] | None = None) -> GenesisConfig:
    """A proof-of-stake genesis: the validators (stake in wei) and every user funded. ``consensus``:
    further fields of its consensus section (e.g. ``inactivityQuotient``, ``baseRewardPpb``)."""
    funded = [k.address for k in keys] + [u.address for u in users]
    return parse_genesis({
        "config": {"chainId": CHAIN_ID},
        "alloc": {"0x" + a.hex(): {"balance": hex(FUNDS)} for a in funded},
        "timestamp": GENESIS_TIME,
        "consensus": {
            "genesisTime": GENESIS_TIME, "slotTime": SLOT_TIME, "slotsPerEpoch": slots_per_epoch,
            "randaoLength": keys[0].randao.length,
            "validators": [{"address": "0x" + k.address.hex(), "stake": hex(s), "randaoTip": "0x" + k.randao.tip.hex()}
                           for k, s in zip(keys, stakes, strict=True)],
            **(consensus or {}),
        },
    })


@dataclass
class Node:
    chain: Chain
    pool: dict[tuple[bytes, int], TransactionMessage] = field(default_factory=dict)  # by (sender, nonce)
    waiting: dict[bytes, list[bytes]] = field(default_factory=dict)  # parent hash -> blocks waiting for it
    pos: ProofOfStake | None = None  # its consensus, once `ChainLedger.core` made it
    service: ValidatorService | None = None  # what reports its core's offences, once asked to


async def _no_seal(attrs: BlockAttributes, build: Callable[..., ExecutedBlock]) -> None:
    raise AssertionError("a simulated node's blocks are built by ChainLedger.build, not by its validator service")


class ChainLedger:
    """The real chains of a simulation's nodes, the blocks' wire bytes and the users' traffic."""

    def __init__(self, keys: Sequence[ValidatorKey], stakes: Sequence[int], seed: int, *,
                 slots_per_epoch: int = 8, traffic: Traffic | None = None, bid_share: float = 0.3,
                 providers: int = 4, directory: Path | None = None, consensus: Mapping[str, int] | None = None) -> None:
        """``consensus``: further fields of the genesis's consensus section (`make_genesis`)."""
        self.rng = random.Random(seed ^ 0x5EED)
        self.clients = [User(Keypair.from_private_key(keccak(b"sim client %d" % i))) for i in range(len(keys))]
        self.providers = [User(Keypair.from_private_key(keccak(b"sim provider %d" % i))) for i in range(len(keys))]
        # What each node's client sends at each slot; the first provider_nodes nodes' providers stake
        # in slot 1 and then bid with probability bid_share.
        self.traffic = traffic or random_traffic(seed, send_share=0.3, task_share=0.3)
        self.bid_share = bid_share
        self.provider_nodes = min(providers, len(keys)) if bid_share else 0
        self.genesis = make_genesis(keys, stakes, self.clients + self.providers[:self.provider_nodes], slots_per_epoch,
                                    consensus)
        # Called as on_block(node, executed) after each block a node builds or imports: for checks that
        # must hold on every block, side branches included.
        self.on_block: Callable[[int, ExecutedBlock], None] | None = None
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="ogpu-sim-")) if directory is None else directory
        self._stores: list[LMDBStore] = []
        self.nodes = [Node(self.open_chain(f"node{i}")) for i in range(len(keys))]
        self.rules = chain_rules(self.nodes[0].chain, self.genesis.consensus)
        self.raw: dict[bytes, bytes] = {}  # block hash -> RLP, what the network carries
        # Block hash -> the rewards and penalties its system call applies: what every node derives from
        # the block's parent consensus state (apply_block), the same on every node.
        self.settlements: dict[bytes, tuple[tuple[bytes, int], ...]] = {}
        self.sent: list[TransactionMessage] = []
        self.reorgs: list[tuple[int, HeadChange]] = []  # (node, a head switch that abandoned blocks)

    def open_chain(self, name: str) -> Chain:
        """An empty chain of this genesis on its own store (closed with the ledger)."""
        store = LMDBStore(self.directory / name, durable=False)
        self._stores.append(store)
        return Chain(store, self.genesis)

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ChainLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- consensus side --

    def core(self, index: int, key: ValidatorKey) -> ConsensusCore:
        """Node ``index``'s consensus core: its `ProofOfStake` over its own chain (anchored at the
        chain's genesis block, with the rules the chain gives), as a validator node makes it."""
        node = self.nodes[index]
        node.pos = ProofOfStake(node.chain, self.genesis.consensus, key)
        return node.pos.core

    def build(self, index: int, core: ConsensusCore, proposal: Proposal) -> BlockInput:
        """The proposal as a real block of node ``index``'s pool, built on the proposal's parent."""
        chain = self.nodes[index].chain
        if chain.head.hash != proposal.parent_root:
            chain.set_head(proposal.parent_root)
        attrs = BlockAttributes(proposal.timestamp, proposal.coinbase, proposal.mix_hash, extra_data=proposal.body.root,
                                settlement=proposal.settlement)
        executed = chain.build_block(attrs, self._pending(index))
        if self.on_block is not None:
            self.on_block(index, executed)
        header = executed.header
        self.raw[header.hash] = encode_block(executed.block)
        block = block_input(header, proposal.body, core.sign_proposal(proposal.slot, header.hash))
        assert apply_block(core.rules, core.state(proposal.parent_root), block).settlement == proposal.settlement
        self.settlements[header.hash] = proposal.settlement
        return block

    def build_conflicting(self, index: int, core: ConsensusCore, proposal: Proposal) -> BlockInput:
        """A second block for the proposal's slot, other than `build`'s: the pool's transactions and a
        zero transfer of the validator to itself (so it differs whatever the pool holds), signed with the
        validator's key directly, past its core's slashing protection: a double proposal."""
        assert core.key is not None
        chain = self.nodes[index].chain
        chain.set_head(proposal.parent_root)
        address = core.key.address
        marker = sign_tx(core.key.keypair, self.next_nonce(index, address), to=address, tip=GWEI, max_fee=10 * GWEI,
                         chain_id=CHAIN_ID)
        attrs = BlockAttributes(proposal.timestamp, proposal.coinbase, proposal.mix_hash, extra_data=proposal.body.root,
                                settlement=proposal.settlement)
        executed = chain.build_block(attrs, [*self._pending(index), marker.decoded])
        if self.on_block is not None:
            self.on_block(index, executed)
        header = executed.header
        self.raw[header.hash] = encode_block(executed.block)
        signing_root = BlockProposal(proposal.slot, header.hash).signing_root(core.rules.chain_id, core.rules.genesis_hash)
        self.settlements[header.hash] = proposal.settlement
        return block_input(header, proposal.body, core.key.keypair.sign_hash(signing_root))

    def _pending(self, index: int) -> list[Any]:
        """The pool's transactions not yet on the head's branch, each sender's in nonce order."""
        node = self.nodes[index]
        state = node.chain.execution.state_at(node.chain.head)
        nonces: dict[bytes, int] = {}
        chosen = []
        for (sender, nonce), message in sorted(node.pool.items()):
            if sender not in nonces:
                nonces[sender] = state.get_nonce(sender)
            if nonce >= nonces[sender]:
                chosen.append(message.tx)
        return chosen

    def receive_block(self, index: int, root: bytes) -> None:
        """Import a block that arrived (and the blocks that waited for it), or keep it until its
        parent comes. An honest block the chain refuses fails the simulation."""
        node = self.nodes[index]
        if node.chain.has_block(root):
            return
        block = decode_block(self.raw[root])
        parent = block.header.parent_hash
        if not node.chain.has_block(parent):
            node.waiting.setdefault(parent, []).append(root)
            return
        executed = node.chain.import_block(block, settlement=self.settlements[root])
        if self.on_block is not None:
            self.on_block(index, executed)
        for child in node.waiting.pop(root, []):
            self.receive_block(index, child)

    def receive_tx(self, index: int, message: TransactionMessage) -> None:
        self.nodes[index].pool.setdefault((message.sender, message.nonce), message)

    def next_nonce(self, index: int, sender: bytes) -> int:
        """``sender``'s next nonce on node ``index``: its head's, counting the pool's pending ones (as
        the transaction pool's `next_nonce`)."""
        node = self.nodes[index]
        nonce = node.chain.account(node.chain.head, sender)[0]
        while (sender, nonce) in node.pool:
            nonce += 1
        return nonce

    def report_offences(self, index: int) -> list[TransactionMessage]:
        """What node ``index``'s validator service sends for the offences its core found: a Slashing
        report each (`ValidatorService.report_offences`), signed by its validator at its next nonce into
        its own pool, as `Node._submit_own` does; the caller gossips them."""
        node = self.nodes[index]
        assert node.pos is not None
        if node.service is None:
            node.service = ValidatorService(node.pos, _no_seal, submit=lambda sign: self._submit_own(index, sign))
        sent = len(self.sent)
        node.service.report_offences()
        return self.sent[sent:]

    def _submit_own(self, index: int, sign: Callable[[int], Any]) -> bytes:
        pos = self.nodes[index].pos
        assert pos is not None and pos.key is not None
        address = pos.key.address
        nonce = self.next_nonce(index, address)
        raw = sign(nonce).encode()
        message = TransactionMessage(raw, decode_transaction(raw), address, nonce, False)
        self.receive_tx(index, message)
        self.sent.append(message)
        return message.tx.hash

    def follow(self, index: int, core: ConsensusCore) -> None:
        """Make the node's canonical chain its core's fork-choice head, and never revert what its core
        has finalized."""
        chain = self.nodes[index].chain
        head = core.head()
        if head != chain.head.hash:
            change = chain.set_head(head)
            if change.abandoned:
                self.reorgs.append((index, change))
        chain.finalized_number = chain.header_by_hash(core.finalized.root).block_number

    # -- traffic --

    def submit(self, index: int, slot: int) -> list[TransactionMessage]:
        """What node ``index``'s users send at ``slot`` (into its own pool; the caller gossips them)."""
        client, provider = self.clients[index], self.providers[index]
        sent = []
        if index >= self.provider_nodes:
            provider = None
        elif slot == 1:
            sent += [provider.send(STAKE, _abi_call("Stake", "stake"), PROVIDER_STAKE, CALL_GAS),
                     provider.send(STAKE, _abi_call("Stake", "registerResources", 0, 8_000, 10, ""), gas=CALL_GAS),
                     provider.send(STAKE, _abi_call("Stake", "setRoles", Role.PROVIDER), gas=CALL_GAS)]
        kind = self.traffic(index, slot)
        if kind == "task":
            pay = self.rng.randint(5, 10) * OGPU
            deposit = pay * self.genesis.protocol.client_deposit_bps // BPS
            data = _abi_call("Task", "submitTask", keccak(b"sim task %d %d" % (index, slot)), TaskKind.BATCH,
                             _terms(maxPayment=pay))
            sent.append(client.send(TASK, data, pay + deposit, CALL_GAS))
        elif kind == "transfer":
            others = [c for c in self.clients if c is not client]
            to = self.rng.choice(others).address if others else client.address
            sent.append(client.send(to, value=self.rng.randint(1, 1000) * GWEI))
        elif kind is not None:
            raise ValueError(f"unknown traffic {kind!r}")
        if provider is not None and slot > 1 and self.rng.random() < self.bid_share:
            chain = self.nodes[index].chain
            newest = int.from_bytes(self.view(chain, chain.head, "Task", "taskCount"), "big")
            if newest:
                sent.append(provider.send(BID, _abi_call("Bid", "placeBid", newest, 2 * OGPU), gas=CALL_GAS))
        for message in sent:
            self.receive_tx(index, message)
        self.sent.extend(sent)
        return sent

    # -- what the checks compare --

    @staticmethod
    def view(chain: Chain, header: Any, contract: str, function: str, *args: Any) -> bytes | None:
        """A view's raw return data on ``header``'s state; a revert as None."""
        address = {"Task": TASK, "Bid": BID, "Stake": STAKE}[contract]
        try:
            return call(chain.execution, header, CallRequest(to=address, data=_abi_call(contract, function, *args)))
        except ExecutionReverted:
            return None

    def slot_of(self, header: Any) -> int:
        return (header.timestamp - GENESIS_TIME) // SLOT_TIME

    def branch(self, head: bytes) -> list[bytes]:
        """The blocks from genesis (excluded) to ``head``, oldest first, by the blocks' own parents."""
        roots = []
        while head in self.raw:
            roots.append(head)
            head = decode_block(self.raw[head]).header.parent_hash
        return roots[::-1]

    def replay(self, head: bytes, name: str = "replay") -> Chain:
        """A fresh chain that imports only ``head``'s branch: the chain as if no other branch was made."""
        chain = self.open_chain(name)
        for root in self.branch(head):
            chain.import_block(decode_block(self.raw[root]), as_head=True, settlement=self.settlements[root])
        return chain

    def snapshot(self, chain: Chain, *, views: bool = True) -> dict[str, Any]:
        """What the head of ``chain`` shows: state root, canonical index, every user's and contract's
        account, the receipt (or absence) of every transaction sent and of every block's system call,
        and with ``views`` what Task, Bid and Stake answer: Task's tasks (one past its count too: a task
        only a losing branch made is absent), their progress, bids, the deadline queue and the
        providers' stakes (about 5 ms a view: the state root already covers them)."""
        head = chain.head
        accounts = [u.address for u in self.clients + self.providers] + [TASK, BID, STAKE]
        accounts += [v.address for v in self.genesis.consensus.validators]
        state = chain.execution.state_at(head)
        shown: dict[str, Any] = {
            "head": (head.block_number, head.hash, head.state_root),
            "canonical": [chain.header_by_number(n).hash for n in range(head.block_number + 1)],
            "accounts": {a: (state.get_nonce(a), state.get_balance(a), state.get_code(a)) for a in accounts},
            "receipts": {m.raw: chain.receipt_json(m.tx.hash) for m in self.sent},
            "system": {root: chain.receipt_json(system_tx_hash(root)) for root in self.raw},
        }
        if not views:
            return shown
        view: Callable[..., bytes | None] = lambda *a: self.view(chain, head, *a)  # noqa: E731
        count = view("Task", "taskCount")
        tasks = range(1, int.from_bytes(count, "big") + 2)
        return shown | {
            "task_count": count,
            "tasks": [(view("Task", "getTask", t), view("Task", "getProgress", t), view("Bid", "bidsOf", t))
                      for t in tasks],
            "deadlines": view("Task", "pendingDeadlines"),
            "stakes": [view("Stake", "stakeOf", u.address) for u in self.providers[:self.provider_nodes]],
            "providers": view("Stake", "providers"),
        }
