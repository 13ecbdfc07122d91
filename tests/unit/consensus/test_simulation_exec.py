"""The consensus simulation with real block execution (`sim.py` with a `sim_chain.ChainLedger`): every
node keeps its own `Chain` on LMDB, proposals are real blocks of transfers and Stake, Task and Bid
calls, and each node's canonical chain follows its core's fork choice. A failure names its seed
(`-k seed_N` reruns it).

The rule checked after every run: each node's head state (state root, canonical index, accounts,
every receipt; in the reorganization runs also Task's tasks, progress, bids and deadline queue and
the providers' stakes) equals that of a fresh chain that imported only the winning branch, so a
reorganization leaves nothing of the losing branch behind.

Execution makes a run about a hundred times dearer than the header-only `test_simulation.py`
(every node executes every block), so these are a dozen schedules, not fifty.
"""

from __future__ import annotations

import random

import pytest

from ogpu_node.contracts.addresses import TASK
from ogpu_node.execution.codec import decode_block
from tests.unit.consensus.sim import Simulation, make_keys
from tests.unit.consensus.sim_chain import OGPU, SLOT_TIME, ChainLedger, random_traffic
from tests.unit.consensus.test_simulation import assert_never_reverted

SLOTS_PER_EPOCH = 4  # short epochs: each validator attests every 4 slots, so heads converge fast
MAX_DELAY = SLOT_TIME / 3 - 0.01


def assert_every_node_is_its_winning_branch_replayed(sim: Simulation, ledger: ChainLedger, seed: int, *,
                                                     views: bool = True) -> None:
    heads = {node.head() for node in sim.nodes}
    assert len(heads) == 1, f"seed {seed}: nodes disagree on the head"
    [head] = heads
    for index, node in enumerate(ledger.nodes):
        assert node.chain.head.hash == head, f"seed {seed}: node {index}'s chain does not follow its core's head"
    expected = ledger.snapshot(ledger.replay(head), views=views)
    for index, node in enumerate(ledger.nodes):
        assert ledger.snapshot(node.chain, views=views) == expected, f"seed {seed}: node {index}'s head state is not the winning branch's"


def carries_task_txs(blocks) -> bool:
    return any(tx.to == TASK for block in blocks for tx in block.transactions)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(400, 410), ids=lambda s: f"seed_{s}")
def test_a_reorg_across_task_blocks_leaves_every_node_as_if_the_losing_branch_never_happened(seed):
    """4 validators split 2/2 (neither side can justify); right after the split every client submits a
    task, so both sides' branches carry Task transactions (and bids, assignments, cancellations by
    the start-of-block step); the partition heals and one branch wins on every node."""
    rng = random.Random(seed)
    keys = make_keys(4)
    side = set(rng.sample(range(4), 2))
    split = rng.randint(2, 5)
    heal = split + rng.randint(5, 7)
    quiet, busy = random_traffic(seed, send_share=0.05, task_share=0.3), random_traffic(seed + 1, 0.3, 0.5)

    def traffic(node: int, slot: int) -> str | None:
        if slot == split + 1:
            return "task"
        return busy(node, slot) if split <= slot < heal else quiet(node, slot)

    with ChainLedger(keys, [1_000 * OGPU] * 4, seed, slots_per_epoch=SLOTS_PER_EPOCH, traffic=traffic,
                     bid_share=0.1) as ledger:
        sim = Simulation(seed, keys, ledger.rules, max_delay=MAX_DELAY, ledger=ledger)
        sim.linked = lambda a, b, slot: not (split <= slot < heal) or ((a in side) == (b in side))
        sim.play(heal + 2 * SLOTS_PER_EPOCH)
        abandoned = [block for _, change in ledger.reorgs for block in change.abandoned]
        assert carries_task_txs(abandoned), f"seed {seed}: no node reorganized across a block with Task transactions"
        winning = [decode_block(ledger.raw[root]) for root in ledger.branch(sim.nodes[0].head())]
        during = [block for block in winning if split <= ledger.slot_of(block.header) < heal]
        assert carries_task_txs(during), f"seed {seed}: the winning branch has no Task transactions from the split"
        assert_every_node_is_its_winning_branch_replayed(sim, ledger, seed)
        assert_never_reverted(sim, seed)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(500, 502), ids=lambda s: f"seed_{s}")
def test_4_to_16_validators_finalize_real_blocks_and_agree_on_their_state(seed):
    """Delays up to a third of a slot, one node away for a few slots of the first two epochs (it
    catches up by importing the blocks it missed); from epoch 2 on every epoch is finalized two
    epochs later. The first seed runs 16 validators."""
    rng = random.Random(seed)
    count = 16 if seed == 500 else rng.randint(4, 16)
    keys = make_keys(count)
    away, leave = rng.randrange(count), rng.randint(1, 3)
    back = leave + rng.randint(1, 4)
    epochs = 4
    with ChainLedger(keys, [1_000 * OGPU] * count, seed, slots_per_epoch=SLOTS_PER_EPOCH,
                     traffic=random_traffic(seed, send_share=0.05, task_share=0.4), bid_share=0.03) as ledger:
        sim = Simulation(seed, keys, ledger.rules, max_delay=MAX_DELAY, ledger=ledger)
        sim.offline = lambda node, slot: node == away and leave <= slot < back
        run = sim.play(epochs * SLOTS_PER_EPOCH)  # the last slot's block processes epoch 3's boundary
        for node, seen in enumerate(run.finalized):
            assert seen[-1][0] == epochs - 2, f"seed {seed}: node {node} finalized {[e for e, _, _ in seen]}"
        assert_every_node_is_its_winning_branch_replayed(sim, ledger, seed, views=False)  # many nodes: the state root covers them
        assert_never_reverted(sim, seed)
