"""Issue 12's slashing in the simulation with real execution (`sim.py` with a `sim_chain.ChainLedger`):
one validator of each schedule equivocates — a double proposal, a double vote or a surround vote —
and is otherwise honest; every honest node reports what its core found, as a validator node does
(`ValidatorService.report_offences` through `ChainLedger.report_offences`: a Slashing report signed by
its validator key at its next nonce, into its pool, gossiped). docs/consensus.md, "Slashing". A failure
names its seed.

Checked in every schedule, on every honest node's canonical chain:
- one `ConsensusOffence` of the offender, of the offence's kind, in a block whose slot is at most two
  epochs (2 · slots_per_epoch slots) after the offence's slot: the slot at which the offender sent the
  second of its conflicting messages (both blocks of a double proposal at its slot's start; the
  second vote, or the surround vote, at its attestation slot);
- the offender's stake dropped in that block by exactly the event's penalty, which is at least the
  lone penalty (consensusPenaltyBps of its exposure) and is the correlated one
  (x · max(bps/10⁴, min(1, 3x/T)), with x its exposure and T the total stake right before the report);
- the reporter and the block's proposer received their halves of reporterShareBps of the penalty
  (each one's balance change in that block, less what its transactions paid and earned in fees);
- at the next epoch boundary (the first block of a later epoch) Stake shows the offender with status
  NONE and out of `validators()`; it was still in the set the block before; each epoch's validator set
  the node's consensus rules read from then on lacks it, and its core gives it no duties;
- every honest node finalizes the first epoch whose set no longer holds the offender, by the first
  slot of the fourth epoch after the ejection's boundary (the third when every vote is on time);
- the supply invariant after every block any node builds or imports
  (test_simulation_incentives.py's `SupplyCheck`), and no node reverts a finalized checkpoint.

Schedules: 4 or 5 validators, 4 slots per epoch, delays up to a third of a slot; a double proposal's
two blocks go to two random sides of the honest nodes; a third of the schedules also take one honest
node away for the 2 to 4 slots after the offence's (it misses part of the offence and the reports, and
catches up on return). The offender's stake is either a fifth to
a third of the total (the proportional penalty applies) or under a thirtieth (the lone 10 % applies).
Every node executing every block makes a run cost one to three seconds: 51 schedules, 17 per offence,
about 90 s on a loaded 2-core machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import decode_logs

from ogpu_node.chain import Chain
from ogpu_node.consensus import ConsensusCore
from ogpu_node.contracts.stake import Stake
from ogpu_node.execution.native import SystemHost
from ogpu_node.types.protocol import BPS, PROPORTIONAL_SLASHING_MULTIPLIER, Offence, ValidatorStatus
from ogpu_node.types.signing import Attestation, SignedAttestation
from tests.unit.consensus.sim import Simulation, make_keys
from tests.unit.consensus.sim_chain import GENESIS_TIME, OGPU, SLOT_TIME, ChainLedger, random_traffic
from tests.unit.consensus.test_simulation import assert_never_reverted
from tests.unit.consensus.test_simulation_incentives import SupplyCheck, assert_supply_everywhere, block_logs

SPE = 4  # slots per epoch
SUCCESS = b"\x01"
OFFENCES = (Offence.DOUBLE_PROPOSAL, Offence.DOUBLE_VOTE, Offence.SURROUND_VOTE)
SCHEDULES = [(offence, seed) for offence in OFFENCES for seed in range(17)]
MAX_EPOCHS = 16  # a run that has not finished its story by then fails
FINALITY_EPOCHS = 4  # from the ejection's boundary to the finality of the next epoch, at most


def epoch_of_header(header: Any) -> int:
    return (header.timestamp - GENESIS_TIME) // SLOT_TIME // SPE


def slot_of_header(header: Any) -> int:
    return (header.timestamp - GENESIS_TIME) // SLOT_TIME


@dataclass
class Byzantine:
    """One validator that commits ``offence`` once, at its first chance from ``epoch`` on, and is
    honest otherwise. It signs its conflicting messages with its key directly: its core's slashing
    protection would refuse them."""

    sim: Simulation
    node: int
    offence: Offence
    epoch: int
    rng: random.Random
    slot: int | None = None  # the offence's slot, once committed
    honest_sources: list[int] = field(default_factory=list)  # the source epoch of each honest vote it made

    @property
    def core(self) -> ConsensusCore:
        return self.sim.nodes[self.node]

    def _due(self, node: int, slot: int) -> bool:
        return node == self.node and self.slot is None and slot // SPE >= self.epoch

    def fork_block(self, node: int, slot: int) -> set[int] | None:
        """At its proposer slot: a second block, sent to some honest nodes, the first to the others."""
        if self.offence != Offence.DOUBLE_PROPOSAL or not self._due(node, slot):
            return None
        honest = [i for i in range(len(self.sim.nodes)) if i != self.node]
        self.slot = slot
        return set(self.rng.sample(honest, self.rng.randint(1, len(honest) - 1)))

    def attest(self, node: int, slot: int) -> list[SignedAttestation] | None:
        if node != self.node:
            return None
        core = self.core
        state = core.epoch_state(slot // SPE)
        if state.current.attestation_slot(core.key.address, core.rules.params) != slot:
            return None
        source = state.current_justified
        if self.offence == Offence.DOUBLE_VOTE and self._due(node, slot):
            vote = core.attest(slot)
            assert vote is not None
            a = vote.message  # the same vote for another head: the head's parent
            other = Attestation(a.slot, self._parent(a.head), a.source_epoch, a.source_root, a.target_epoch, a.target_root)
            self.slot = slot
            return [vote, self._sign(other)]
        if self.offence == Offence.SURROUND_VOTE and self._due(node, slot) and max(self.honest_sources, default=0) >= 1:
            # Instead of its vote: one from the genesis checkpoint, below the source of a vote it sent
            # before, to this epoch's target, above that vote's target.
            genesis = core.rules.genesis_hash
            surround = Attestation(slot, core.head(), 0, genesis, state.current.epoch, state.current.target_root)
            self.slot = slot
            return [self._sign(surround)]
        self.honest_sources.append(source.epoch)
        return None  # its duty, as its core makes it

    def _parent(self, root: bytes) -> bytes:
        header = self.sim.ledger.nodes[self.node].chain.header_by_hash(root)
        return header.parent_hash

    def _sign(self, attestation: Attestation) -> SignedAttestation:
        rules = self.core.rules
        return SignedAttestation(attestation, self.core.key.keypair.sign_hash(attestation.signing_root(rules.chain_id, rules.genesis_hash)))


def stakes_for(offence: Offence, rng: random.Random) -> tuple[list[int], int, str]:
    """The validators' stakes (wei), the offender's index and the profile's name. "correlated": 4 or 5
    validators of 1000–3000 OGPU, the offender a fifth to under a third of the stake, so the
    proportional penalty 3x/T (60 to 99 %) applies and mostly leaves it under minValidatorStake (Stake
    then takes the role itself); "lone": three of 15000–18000 OGPU and an offender of 1200–1500
    (x/T < 1/30), so the lone 10 % applies and leaves it above the minimum (Slashing takes the role). A
    double proposal needs the offender's proposer slots to come often: correlated only."""
    profile = "correlated" if offence == Offence.DOUBLE_PROPOSAL else rng.choice(["correlated", "lone"])
    if profile == "lone":
        stakes = [rng.randint(15_000, 18_000) for _ in range(3)] + [rng.randint(1_200, 1_500)]
    else:
        count = rng.choice([4, 4, 5])
        while True:
            stakes = [rng.randint(1_000, 3_000) for _ in range(count)]
            share = stakes[-1] / sum(stakes)
            if 1 / 5 <= share < 1 / 3:
                break
    order = list(range(len(stakes)))
    rng.shuffle(order)  # the offender anywhere in the address order
    shuffled = [0] * len(stakes)
    for position, index in zip(order, range(len(stakes)), strict=True):
        shuffled[position] = stakes[index] * OGPU
    return shuffled, order[-1], profile


def stake_at(chain: Chain, header: Any) -> tuple[Stake, SystemHost]:
    return chain.execution.stake, chain.execution.read_host(header)


def fee_moves(block: Any, who: bytes) -> int:
    """What ``who``'s balance gains in ``block`` from its transactions alone: the values it sends and
    receives, the gas it pays, and the priority fees it earns as the block's coinbase."""
    base_fee, coinbase = block.header.base_fee_per_gas, block.header.coinbase
    moved, used = 0, 0
    for tx, sender, receipt in zip(block.transactions, block.senders, block.receipts, strict=True):
        gas, used = receipt.gas_used - used, receipt.gas_used
        price = min(tx.max_fee_per_gas, base_fee + tx.max_priority_fee_per_gas)
        value = tx.value if receipt.state_root == SUCCESS else 0
        if sender == who:
            moved -= gas * price + value
        if tx.to == who:
            moved += value
        if coinbase == who:
            moved += gas * (price - base_fee)
    return moved


_OFFENCES: dict[bytes, list[Any]] = {}  # block hash -> its ConsensusOffence events (a block's logs never change)


def offence_events(chain: Chain, offender: bytes) -> list[tuple[Any, Any]]:
    """(block, event) of each ConsensusOffence of ``offender`` on ``chain``'s canonical branch."""
    found = []
    for number in range(1, chain.head.block_number + 1):
        root = chain.header_by_number(number).hash
        if root not in _OFFENCES:
            block = chain.block_by_hash(root)
            _OFFENCES[root] = [e for e in decode_logs(block_logs(block.system_logs, block.receipts))
                               if e.name == "ConsensusOffence"]
        found += [(chain.block_by_hash(root), e) for e in _OFFENCES[root] if e["offender"] == offender]
    return found


def ejection_boundary(chain: Chain, offender: bytes) -> Any | None:
    """The first canonical block of a later epoch than the block that punished ``offender`` (the
    boundary whose system call ejects it), or None while there is none."""
    events = offence_events(chain, offender)
    if not events:
        return None
    block = events[0][0]
    epoch = epoch_of_header(block.header)
    return next((chain.header_by_number(n) for n in range(block.number + 1, chain.head.block_number + 1)
                 if epoch_of_header(chain.header_by_number(n)) > epoch), None)


def assert_punished_and_ejected(sim: Simulation, ledger: ChainLedger, node: int, byz: Byzantine, label: str) -> int:
    """The checks of the module docstring on honest node ``node``; the epoch whose boundary ejected."""
    chain = ledger.nodes[node].chain
    core = sim.nodes[node]
    offender = byz.core.key.address
    protocol = ledger.genesis.protocol
    where = f"{label}: node {node}"

    events = offence_events(chain, offender)
    assert len(events) == 1, f"{where}: {len(events)} ConsensusOffence events of the offender on the canonical chain"
    [(block, event)] = events
    assert event["kind"] == byz.offence, f"{where}: punished for {Offence(event['kind']).name}"
    included = slot_of_header(block.header)
    assert byz.slot < included <= byz.slot + 2 * SPE, \
        f"{where}: offence at slot {byz.slot}, punished in the block of slot {included}: not within two epochs"

    # The penalty: Stake's drop in the block, less what the block's settlement applied before the report.
    parent = chain.header_by_hash(block.header.parent_hash)
    stake, before_host = stake_at(chain, parent)
    _, after_host = stake_at(chain, block.header)
    settlement = dict(ledger.settlements[block.hash])
    exposure = stake.stakeOf(before_host, offender).staked + settlement.get(offender, 0)
    total = stake.totalStaked(before_host) + sum(settlement.values())
    penalty = event["penalty"]
    assert exposure - stake.stakeOf(after_host, offender).staked == penalty, f"{where}: Stake's drop is not the event's penalty"
    lone = exposure * protocol.consensus_penalty_bps // BPS
    assert penalty >= lone, f"{where}: penalty {penalty} under the lone penalty {lone}"
    correlated = exposure * min(PROPORTIONAL_SLASHING_MULTIPLIER * exposure, total) // total
    assert penalty == max(lone, correlated), f"{where}: penalty {penalty}, expected max({lone}, {correlated})"

    # The reward: half to the reporter, half to the including proposer.
    reward = penalty * protocol.reporter_share_bps // BPS
    assert reward > 0
    reporter, proposer = event["reporter"], block.header.coinbase
    shares = {reporter: reward - reward // 2}
    shares[proposer] = shares.get(proposer, 0) + reward // 2
    for who, share in shares.items():
        gained = chain.account(block.header, who)[1] - chain.account(parent, who)[1] - fee_moves(block, who)
        assert gained == share, f"{where}: 0x{who.hex()} gained {gained} beyond fees, its share is {share}"
    assert reporter != offender, f"{where}: the offender reported itself"

    # Ejected at the next boundary: in the set until the block before it, out from it on.
    boundary = ejection_boundary(chain, offender)
    assert boundary is not None, f"{where}: the chain never crossed the next epoch boundary"
    _, host = stake_at(chain, chain.header_by_hash(boundary.parent_hash))
    assert offender in stake.validators(host), f"{where}: ejected before the epoch boundary"
    _, host = stake_at(chain, boundary)
    assert stake.validatorOf(host, offender).status == ValidatorStatus.NONE, f"{where}: not ejected at the boundary"
    assert offender not in stake.validators(host), f"{where}: still in Stake's validators after the boundary"
    ejected = epoch_of_header(boundary)
    # Each epoch's set as the node's consensus rules read it: from the last block before the epoch.
    head_epoch = epoch_of_header(chain.head)
    headers = [chain.header_by_number(n) for n in range(chain.head.block_number + 1)]
    for e in range(ejected, head_epoch + 1):
        last = max(n for n, header in enumerate(headers) if slot_of_header(header) < e * SPE)
        members = core.rules.validator_set(headers[last].hash, e)
        assert (offender in members) == (e == ejected), f"{where}: epoch {e}'s set {'lacks' if e == ejected else 'holds'} the offender"
    assert offender not in core.epoch_state(head_epoch + 1).current.validators, f"{where}: in the core's next set"
    assert core.duties(offender, head_epoch + 1) == ([], None), f"{where}: the core still gives the offender duties"
    return ejected


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("offence", "seed"), SCHEDULES, ids=[f"{o.name.lower()}-seed_{s}" for o, s in SCHEDULES])
def test_an_equivocating_validator_is_reported_slashed_within_two_epochs_and_ejected(offence, seed):
    """4 or 5 validators, delays up to a third of a slot; the offender equivocates at its first chance
    from epoch 1 (a surround vote once a vote of its has a source above genesis); the run goes on until
    every honest node finalized the first epoch whose set lacks the offender."""
    rng = random.Random(seed * 10 + offence)
    stakes, offender, profile = stakes_for(offence, rng)
    keys = make_keys(len(stakes))
    honest = [i for i in range(len(keys)) if i != offender]
    max_delay = rng.uniform(SLOT_TIME / 12, SLOT_TIME / 3 - 0.01)
    label = f"seed {seed} ({offence.name.lower()}, {profile}, {len(keys)} validators, offender {offender})"
    with ChainLedger(keys, stakes, seed, slots_per_epoch=SPE, traffic=random_traffic(seed, 0.05, 0.3),
                     bid_share=0) as ledger:
        check = SupplyCheck(ledger, seed)
        ledger.on_block = check
        sim = Simulation(seed, keys, ledger.rules, max_delay=max_delay, ledger=ledger)
        # From epoch 1: its first proposer slot or its attestation slot there; a surround vote needs a
        # vote of its own with a source above genesis first, so it comes in epoch 4 or later.
        byz = Byzantine(sim, offender, offence, 1, rng)
        if rng.random() < 1 / 3:
            # One honest node away for the 2 to 4 slots after the offence's: it misses what arrives after
            # that slot's start (a block of a double proposal, votes, the reports) and catches up on return.
            away, gone = rng.choice(honest), rng.randint(2, 4)
            sim.offline = lambda node, slot: node == away and byz.slot is not None and byz.slot < slot <= byz.slot + gone
            label += f", node {away} away for the {gone} slots after the offence's"
        sim.fork_block = byz.fork_block
        sim.byzantine_attest = byz.attest
        sim.reports = lambda node, slot: [] if node == offender else ledger.report_offences(node)

        def finalized_past_ejection(node: int) -> bool:
            """Whether ``node`` finalized the first epoch whose set its chain's ejection left out."""
            boundary = ejection_boundary(ledger.nodes[node].chain, keys[offender].address)
            return boundary is not None and sim.nodes[node].finalized.epoch > epoch_of_header(boundary)

        epoch = 0
        while byz.slot is None or not all(finalized_past_ejection(i) for i in honest):
            epoch += 1
            assert epoch <= MAX_EPOCHS, (
                f"{label}: offence at slot {byz.slot}; by epoch {epoch - 1} the honest nodes finalized "
                f"{[sim.nodes[i].finalized.epoch for i in honest]} and hold "
                f"{[len(offence_events(ledger.nodes[i].chain, keys[offender].address)) for i in honest]} ConsensusOffence events")
            sim.play(epoch * SPE)
        for node in honest:
            ejected = assert_punished_and_ejected(sim, ledger, node, byz, label)
            # Epochs ejected + 1 and + 2 justified at the boundaries after them finalize the first by
            # the first slot of ejected + 3; a boundary later when a last-slot vote comes late.
            when = next(slot for e, _, slot in sim.run.finalized[node] if e > ejected)
            assert when <= (ejected + FINALITY_EPOCHS) * SPE, \
                f"{label}: node {node} finalized past the ejection at epoch {ejected} only in slot {when}"
        assert_never_reverted(sim, seed)
        assert_supply_everywhere(check, sim)
