"""Issue 12's incentives in the simulation with real execution (`sim.py` with a `sim_chain.ChainLedger`:
every node executes every block on its own Chain, and each block applies the settlement its parent's
consensus state derives). docs/consensus.md, "Rewards and penalties". A failure names its seed.

- The inactivity leak: with more than a third of the stake away for good, finality stops; the leak
  shrinks the absent validators' stake until the rest hold two thirds, and finality resumes within
  the epochs docs/consensus.md derives.
- Honest validators' stake grows; the absent's shrinks.
- The supply, after every block any node builds or imports (side branches included): every coin there
  is equals the genesis supply plus what settlements minted, less what they burned, base fees, slashes
  and Task's burns along the block's branch; Stake holds exactly the stake and unbonding it records.
  Every run of this file checks it. (Slashes and Task's burns need offences or checkpoint verdicts,
  which these runs do not reach: counted, but zero here; tests/unit/contracts/test_invariants.py
  drives them.)

Every node executing every block makes a run cost one to five seconds, so these are 29 schedules
(about a minute): 4 long leak runs, 20 short growth runs, 5 partitions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import decode_logs, topic_bytes

from ogpu_node.chain import Chain
from ogpu_node.contracts.addresses import ALL as NATIVE_CONTRACTS
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.contracts.stake import Stake
from ogpu_node.execution.native import SystemHost
from ogpu_node.execution.state import ExecutedBlock
from ogpu_node.types.protocol import INACTIVITY_GRACE_EPOCHS
from tests.unit.consensus.sim import Simulation, make_keys
from tests.unit.consensus.sim_chain import GENESIS_TIME, OGPU, SLOT_TIME, ChainLedger, random_traffic
from tests.unit.consensus.test_simulation import assert_never_reverted, finalized_epoch_at

MAX_DELAY = SLOT_TIME / 3 - 0.01  # every message arrives before the next duty that needs it


def stake_of(chain: Chain, header: Any) -> tuple[Stake, SystemHost]:
    """Stake's logic over ``header``'s state (reads only)."""
    return chain.execution.stake, chain.execution.read_host(header)


def staked(chain: Chain, header: Any, who: bytes) -> int:
    stake, host = stake_of(chain, header)
    return stake.stakeOf(host, who).staked


# -- the supply invariant --

def block_logs(system_logs: Iterable[tuple[bytes, list[bytes], bytes]], receipts: Iterable[Any]) -> list[tuple]:
    """A block's logs as (address, topics, data): its system call's, then its transactions'."""
    return [*system_logs, *((log.address, [topic_bytes(t) for t in log.topics], log.data)
                            for receipt in receipts for log in receipt.logs)]


@dataclass
class SupplyMoves:
    """What a block adds to the supply and takes from it."""

    minted: int = 0  # EpochSettled.minted: rewards
    burned: int = 0  # EpochSettled.burned: penalties
    base_fees: int = 0  # gas_used × base_fee_per_gas
    slashed: int = 0  # StakeSlashed.burned
    task_burned: int = 0  # Task's FundsBurned.amount

    @classmethod
    def of(cls, header: Any, logs: Sequence[tuple]) -> SupplyMoves:
        moves = cls(base_fees=header.gas_used * header.base_fee_per_gas)
        for event in decode_logs(logs):
            if event.name == "EpochSettled":
                moves.minted += event["minted"]
                moves.burned += event["burned"]
            elif event.name == "StakeSlashed":
                moves.slashed += event["burned"]
            elif event.name == "FundsBurned":
                moves.task_burned += event["amount"]
        return moves

    @property
    def net(self) -> int:
        return self.minted - self.burned - self.base_fees - self.slashed - self.task_burned


@dataclass
class SupplyCheck:
    """`ChainLedger.on_block`: after each block a node builds or imports, its state holds exactly the
    supply its branch accounts for. A block's expected supply is its parent's plus its own moves, kept
    by block hash, so a block of a side branch (or one a reorg later abandons) is checked against its
    own branch; `assert_canonical` recomputes a node's head supply over its canonical blocks."""

    ledger: ChainLedger
    seed: int
    expected: dict[bytes, int] = field(default_factory=dict)
    totals: SupplyMoves = field(default_factory=SupplyMoves)  # over every distinct block seen
    checks: int = 0
    checked: dict[bytes, int] = field(default_factory=dict)  # state root -> the supply it was found to hold

    def __post_init__(self) -> None:
        genesis = self.ledger.nodes[0].chain.header_by_number(0)
        self.expected[genesis.hash] = self.ledger.genesis.total_supply
        users = self.ledger.clients + self.ledger.providers
        # Every account that can hold coins: validators (the coinbases), users, the native contracts.
        validators = [v.address for v in self.ledger.genesis.consensus.validators]
        self.holders = validators + [u.address for u in users] + list(NATIVE_CONTRACTS)
        self.stakers = validators + [p.address for p in self.ledger.providers]  # the clients never stake

    def __call__(self, index: int, executed: ExecutedBlock) -> None:
        header = executed.header
        moves = SupplyMoves.of(header, block_logs(executed.system_logs, executed.receipts))
        expected = self.expected[header.parent_hash] + moves.net
        if header.hash not in self.expected:
            self.expected[header.hash] = expected
            for name in ("minted", "burned", "base_fees", "slashed", "task_burned"):
                setattr(self.totals, name, getattr(self.totals, name) + getattr(moves, name))
        assert self.expected[header.hash] == expected, f"seed {self.seed}: block {header.block_number} moved the supply differently on node {index}"
        self.assert_holds(self.ledger.nodes[index].chain, header, expected, f"node {index} block {header.block_number}")

    def assert_holds(self, chain: Chain, header: Any, expected: int, where: str) -> None:
        """The supply and Stake's books in ``header``'s state on ``chain``. A state root already
        checked against the same supply is not read again: the root commits to every balance and slot,
        and the nodes of a simulation execute the same blocks into the same roots."""
        self.checks += 1
        if self.checked.get(header.state_root) == expected:
            return
        state = chain.execution.state_at(header)
        supply = sum(state.get_balance(a) for a in self.holders)
        assert supply == expected, f"seed {self.seed}: {where}: the accounts hold {supply} wei, the supply is {expected} ({supply - expected:+})"
        stake, host = chain.execution.stake, SystemHost(state, [])
        records = [stake.stakeOf(host, a) for a in self.stakers]
        assert state.get_balance(STAKE) == sum(r.staked + r.unbonding for r in records), \
            f"seed {self.seed}: {where}: Stake's balance is not its accounts' staked + unbonding"
        assert stake.totalStaked(host) == sum(r.staked for r in records), f"seed {self.seed}: {where}: totalStaked"
        self.checked[header.state_root] = expected

    def assert_canonical(self, index: int) -> None:
        """Node ``index``'s head holds genesis + the moves of its canonical blocks, read back from the
        blocks it stored (receipts and system logs), not from the per-block record."""
        chain = self.ledger.nodes[index].chain
        supply = self.ledger.genesis.total_supply
        for number in range(1, chain.head.block_number + 1):
            block = chain.block_by_number(number)
            supply += SupplyMoves.of(block.header, block_logs(block.system_logs, block.receipts)).net
        assert supply == self.expected[chain.head.hash], f"seed {self.seed}: node {index}'s canonical blocks do not sum to its head's supply"
        self.assert_holds(chain, chain.head, supply, f"node {index}'s head")


def assert_supply_everywhere(check: SupplyCheck, sim: Simulation) -> None:
    assert check.checks >= len(check.expected) - 1, f"seed {check.seed}: blocks went unchecked"
    for index in range(len(sim.nodes)):
        check.assert_canonical(index)


# -- the inactivity leak --

def leak_epochs_needed(quotient: int, away_share: float) -> int:
    """docs/consensus.md's n: the smallest n with n(n+1) ≥ 2Q·ln(2f/(1−f)), the leak epochs after which
    the absent share f is at most half the present one."""
    target = 2 * quotient * math.log(2 * away_share / (1 - away_share))
    n = 0
    while n * (n + 1) < target:
        n += 1
    return n


def epoch_sets(chain: Chain, epochs: int, slots_per_epoch: int) -> list[dict[bytes, int]]:
    """Each epoch's validator set as Stake gives it on ``chain``'s canonical branch: read in the state
    of the last block before the epoch's first slot (docs/consensus.md, "Duties")."""
    headers = [chain.header_by_number(n) for n in range(chain.head.block_number + 1)]
    sets = []
    for epoch in range(epochs):
        start = GENESIS_TIME + epoch * slots_per_epoch * SLOT_TIME
        before = [h for h in headers if h.block_number == 0 or h.timestamp < start][-1]
        stake, host = stake_of(chain, before)
        sets.append({who: stake.stakeOf(host, who).staked for who in stake.validators(host)})
    return sets


def assert_leak_burned(chain: Chain, sets: list[dict[bytes, int]], absent: set[bytes], finalized: int,
                       quotient: int, until: int, slots_per_epoch: int, label: str) -> None:
    """Every epoch boundary before ``until`` (while ``finalized`` is the last finalized epoch) burns
    from each absent validator at least the leak's s·k/Q of each leak epoch it settles (s: its stake in
    that epoch's set), or all it has left: read from Stake at the crossing block and its parent."""
    epoch_of = lambda header: (header.timestamp - GENESIS_TIME) // SLOT_TIME // slots_per_epoch  # noqa: E731
    leaked = 0
    for number in range(1, chain.head.block_number + 1):
        header, parent = chain.header_by_number(number), chain.header_by_number(number - 1)
        if epoch_of(header) >= until:
            break
        # Crossing from epoch c to c + 1 settles c − 1.
        settled = range(max(epoch_of(parent) - 1, 1), epoch_of(header) - 1)
        leak_epochs = [e for e in settled if e - finalized > INACTIVITY_GRACE_EPOCHS]
        if not leak_epochs:
            continue
        leaked += 1
        for who in absent:
            before, after = staked(chain, parent, who), staked(chain, header, who)
            owed = sum(sets[e][who] * (e - finalized - INACTIVITY_GRACE_EPOCHS) // quotient for e in leak_epochs)
            assert before - after >= min(before, owed), f"{label}: block {number} burned {before - after} of 0x{who.hex()}, the leak owes {owed}"
    assert leaked, f"{label}: no leak epoch was settled"


LEAK_SLOTS_PER_EPOCH = 8
# (stakes in OGPU, the indices away): half the stake away, and just over a third (16/46).
LEAK_CASES = {"half": ([10_000] * 4, {2, 3}), "third": ([10_000, 10_000, 10_000, 16_000], {3})}
LEAK_SCHEDULES = [(case, quotient, seed) for case in LEAK_CASES for quotient in (16, 64) for seed in range(1)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case", "quotient", "seed"), LEAK_SCHEDULES,
                         ids=[f"{c}-Q{q}-seed_{s}" for c, q, s in LEAK_SCHEDULES])
def test_the_inactivity_leak_shrinks_an_absent_third_until_finality_resumes(case, quotient, seed):
    """Four validators; from a random early epoch the `away` ones, holding a share f > ⅓ of the stake,
    are gone for good, and finality stops at epoch F. Each leak epoch (a settled epoch e with e − F > G,
    G = INACTIVITY_GRACE_EPOCHS) burns at least s·(e − F − G)/Q from each of them (read from Stake on a
    present node's chain). With n the docs' leak epochs for Q and f: the first epoch whose set gives the
    present two thirds comes by F + G + n + 3 (the k-th leak epoch F + G + k is settled by the first
    block of F + G + k + 2, after that epoch's set was read, so the set of F + G + k + 3 shows it), with
    the absent still in it (the leak restored the majority, not an ejection); finality resumes two
    epochs after that set at the earliest, and by F + G + n + 5, the bound docs/consensus.md derives (its
    loose exp bound on n makes it tight only when the stakes need all n leak epochs, as with Q = 64 and
    f = 16/46: finality resumes at F + 12). Afterwards an absent validator whose stake fell under minValidatorStake is out of the set, and only
    then.

    Eight slots per epoch: with four validators every vote is then included within its epoch, so each
    justification is on time. With four slots the last slot's votes land in the next epoch, justifying
    a boundary late (docs/consensus.md, "Casper FFG"), and a four-slot window whose proposers are all
    away drops a present validator's vote (about one in sixteen with half away), which the leak then
    charges and which breaks a justification: resumption was measured one to five epochs later there."""
    stakes_ogpu, away = LEAK_CASES[case]
    rng = random.Random(seed * 1_000 + quotient)
    spe = LEAK_SLOTS_PER_EPOCH
    keys = make_keys(len(stakes_ogpu))
    stakes = [s * OGPU for s in stakes_ogpu]
    away_share = sum(stakes[i] for i in away) / sum(stakes)
    n = leak_epochs_needed(quotient, away_share)
    leave = rng.randint(0, 3)  # epochs
    epochs = leave + INACTIVITY_GRACE_EPOCHS + n + 6
    present = sorted(set(range(len(keys))) - away)
    absent = {keys[i].address for i in away}
    with ChainLedger(keys, stakes, seed, slots_per_epoch=spe, traffic=random_traffic(seed, 0.05, 0.3),
                     bid_share=0.03, consensus={"inactivityQuotient": quotient}) as ledger:
        check = SupplyCheck(ledger, seed)
        ledger.on_block = check
        sim = Simulation(seed, keys, ledger.rules, max_delay=MAX_DELAY, ledger=ledger)
        sim.offline = lambda node, slot: node in away and slot >= leave * spe
        run = sim.play(epochs * spe)
        label = f"seed {seed} ({case}, Q={quotient}, f={away_share:.3f}, n={n}, away from epoch {leave})"

        node = present[0]
        seen = run.finalized[node]
        # Whatever was justified before they left is finalized by epoch leave + 2 at the latest.
        last = finalized_epoch_at(seen, (leave + 3) * spe - 1)
        after = [(e, s // spe) for e, _, s in seen if e > last]
        assert after, f"{label}: finality never resumed ({seen})"
        resumed_checkpoint, resumed = after[0]
        assert last < max(leave, 1), f"{label}: epoch {last} finalized with the absent away"
        chain = ledger.nodes[node].chain
        sets = epoch_sets(chain, epochs + 1, spe)

        def present_share_ok(epoch: int) -> bool:
            members = sets[epoch]
            return 3 * sum(s for a, s in members.items() if a not in absent) >= 2 * sum(members.values())

        majority = next(e for e in range(leave + 1, epochs + 1) if present_share_ok(e))
        assert majority <= last + INACTIVITY_GRACE_EPOCHS + n + 3, f"{label}: the leak took too long: ⅔ from epoch {majority}"
        assert absent <= sets[majority].keys(), f"{label}: an absent validator was ejected before the leak restored ⅔"
        # Before that set no checkpoint after F can be justified: finality stalls.
        assert resumed_checkpoint >= majority and resumed >= majority + 2, \
            f"{label}: epoch {resumed_checkpoint} finalized in epoch {resumed}, with the first ⅔ set in {majority}"
        assert_leak_burned(chain, sets, absent, last, quotient, resumed, spe, label)
        bound = last + INACTIVITY_GRACE_EPOCHS + n + 5
        assert resumed <= bound, f"{label}: finality resumed in epoch {resumed}, after F + G + n + 5 = {bound}"

        stake, host = stake_of(chain, chain.head)
        minimum = ledger.genesis.protocol.min_validator_stake
        for who in absent:
            assert (who in stake.validators(host)) == (stake.stakeOf(host, who).staked >= minimum), \
                f"{label}: 0x{who.hex()} holds {stake.stakeOf(host, who).staked} wei and its membership disagrees"
        for other in present[1:]:
            assert sim.nodes[other].finalized.epoch >= resumed_checkpoint, f"{label}: node {other} did not follow"
        assert_never_reverted(sim, seed)
        assert_supply_everywhere(check, sim)


# -- honest validators' stake grows --

GROWTH_SLOTS_PER_EPOCH = 4
GROWTH_EPOCHS = 5  # the boundaries of epochs 3 to 5 settle epochs 1 to 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(700, 720), ids=lambda s: f"seed_{s}")
def test_honest_validators_stake_grows_and_the_absent_shrinks(seed):
    """4 or 5 validators of random stakes; in most schedules some are away from the start, holding
    less than a third of the stake (finality goes on, so no leak). Random reward parameters, block
    rewards included or not (then presence alone must pay). At the end, on every present node's head,
    each present validator holds more stake than at genesis and each absent one less."""
    rng = random.Random(seed)
    count = rng.randint(4, 5)
    keys = make_keys(count)
    stakes = [rng.randint(1_000, 3_000) * OGPU for _ in keys]
    away: set[int] = set()
    for i in rng.sample(range(count), rng.randint(0, (count - 1) // 3)):
        if 3 * (sum(stakes[j] for j in away) + stakes[i]) < sum(stakes):
            away.add(i)
    params = {"baseRewardPpb": rng.choice([25, 10_000]), "blockReward": rng.choice([0, 10**17])}
    spe = GROWTH_SLOTS_PER_EPOCH
    with ChainLedger(keys, stakes, seed, slots_per_epoch=spe, traffic=random_traffic(seed, 0.05, 0.3),
                     bid_share=0.03, consensus=params) as ledger:
        check = SupplyCheck(ledger, seed)
        ledger.on_block = check
        sim = Simulation(seed, keys, ledger.rules, max_delay=MAX_DELAY, ledger=ledger)
        sim.offline = lambda node, slot: node in away
        sim.play(GROWTH_EPOCHS * spe)
        label = f"seed {seed} ({count} validators, {sorted(away)} away, {params})"
        for node in set(range(count)) - away:
            chain = ledger.nodes[node].chain
            for i, key in enumerate(keys):
                now = staked(chain, chain.head, key.address)
                if i in away:
                    assert now < stakes[i], f"{label}: node {node}: absent validator {i} kept {now} of {stakes[i]}"
                else:
                    assert now > stakes[i], f"{label}: node {node}: present validator {i} has {now}, started with {stakes[i]}"
        assert_never_reverted(sim, seed)
        assert_supply_everywhere(check, sim)


# -- the supply across reorganizations --

@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(800, 805), ids=lambda s: f"seed_{s}")
def test_the_supply_holds_on_every_block_across_a_partition_that_heals(seed):
    """4 validators split 2/2 for more than an epoch (both sides build blocks with transfers, tasks
    and bids and cross an epoch boundary, so both branches apply settlements); the partition heals and
    the nodes abandon the losing branch. Every block of both branches, on every node that built or
    imported it, holds its own branch's supply; each head holds its canonical blocks' supply."""
    rng = random.Random(seed)
    keys = make_keys(4)
    side = set(rng.sample(range(4), 2))
    spe = GROWTH_SLOTS_PER_EPOCH
    split = rng.randint(2 * spe, 3 * spe)  # so the split spans the crossing into epoch 3 or 4, which settle
    heal = split + rng.randint(spe + 1, 2 * spe)
    params = {"baseRewardPpb": rng.choice([25, 10_000]), "blockReward": rng.choice([0, 10**17])}
    with ChainLedger(keys, [rng.randint(1_000, 2_000) * OGPU for _ in keys], seed, slots_per_epoch=spe,
                     traffic=random_traffic(seed, 0.2, 0.4), bid_share=0.1, consensus=params) as ledger:
        check = SupplyCheck(ledger, seed)
        ledger.on_block = check
        sim = Simulation(seed, keys, ledger.rules, max_delay=MAX_DELAY, ledger=ledger)
        sim.linked = lambda a, b, slot: not (split <= slot < heal) or ((a in side) == (b in side))
        sim.play(heal + 2 * spe)
        abandoned = [block.hash for _, change in ledger.reorgs for block in change.abandoned]
        assert any(ledger.settlements[root] for root in abandoned), f"seed {seed}: no abandoned block applied a settlement"
        assert len({node.head() for node in sim.nodes}) == 1, f"seed {seed}: nodes disagree on the head"
        totals = check.totals
        assert totals.minted and totals.burned and totals.base_fees, f"seed {seed}: the supply never moved both ways: {totals}"
        assert_never_reverted(sim, seed)
        assert_supply_everywhere(check, sim)
