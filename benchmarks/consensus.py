"""Consensus: the simulation with real execution against execution alone, and finality latency.

One run of `tests/unit/consensus/sim.py` with a `sim_chain.ChainLedger`: V validators (default 16),
each a node with its own LMDB `Chain`, the real consensus core, a simulated network with delays under
a third of a slot, every node's users sending transfers and Task/Bid/Stake calls. Every proposal is a
real block built by its proposer and imported by every other node; each node's canonical chain
follows its fork choice.

Figures, each beside its baseline from the same run:
- throughput: simulated blocks per second (wall time of the whole simulation: V nodes building,
  importing and following every block, attestations, fork choice, finality) ÷ the same blocks
  imported, in order, into one fresh `Chain` with no consensus core. Each of the V nodes executes
  every block, so ratio × V is what consensus leaves of one node's execution speed;
- finality latency: slots from a block's proposal to the slot its node saw it finalized, averaged
  over nodes and canonical blocks from epoch 2 on (epochs 0 and 1 end unprocessed, as on Ethereum),
  against the target for the same blocks: finalized two epochs after the epoch of the first
  checkpoint that covers it (the block itself when it is its epoch's first slot, else the next
  epoch's), Ethereum's latency with everyone online. Shown inverted (per 100 slots of latency), so
  higher is better and the target ratio is 1.

Sizes: --validators/BENCH_CONSENSUS_VALIDATORS (V, 16), --epochs/BENCH_CONSENSUS_EPOCHS (7, of 8 slots).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks import Result, env_int
from ogpu_node.execution.codec import decode_block
from tests.unit.consensus.sim import Simulation, make_keys
from tests.unit.consensus.sim_chain import OGPU, SLOT_TIME, ChainLedger, random_traffic

SLOTS_PER_EPOCH = 8
SEED = 11


def finality_latencies(sim: Simulation, ledger: ChainLedger, head: bytes) -> tuple[list[int], list[int], int]:
    """(measured, target) slots per (node, canonical block from epoch 2 on, finalized in the run), and
    how many such blocks no node saw finalized before the run ended."""
    spe = SLOTS_PER_EPOCH
    measured, target, pending = [], [], 0
    for root in ledger.branch(head):
        slot = sim.run.blocks[root].body.slot
        if slot < 2 * spe:
            continue
        covering = -(-slot // spe)  # the epoch of the first checkpoint at or after the block
        seen = [next((s for _, r, s in changes if sim.descends(r, root)), None) for changes in sim.run.finalized]
        if None in seen:
            pending += 1
            continue
        measured += [s - slot for s in seen]
        target += [(covering + 2) * spe - slot] * len(seen)
    return measured, target, pending


def run(validators: int, epochs: int) -> list[Result]:
    slots = epochs * SLOTS_PER_EPOCH
    print(f"consensus: {validators} validators, {slots} slots of {SLOTS_PER_EPOCH} per epoch, real execution",
          flush=True)
    keys = make_keys(validators)
    with ChainLedger(keys, [1_000 * OGPU] * validators, SEED, slots_per_epoch=SLOTS_PER_EPOCH,
                     traffic=random_traffic(SEED, send_share=0.15, task_share=0.3), bid_share=0.05) as ledger:
        sim = Simulation(SEED, keys, ledger.rules, max_delay=SLOT_TIME / 3 - 0.01, ledger=ledger)
        start, cpu = time.perf_counter(), time.process_time()
        sim.play(slots)
        sim_wall, sim_cpu = time.perf_counter() - start, time.process_time() - cpu
        heads = {node.head() for node in sim.nodes}
        assert len(heads) == 1, "the nodes disagree on the head"
        [head] = heads
        blocks = sorted(ledger.raw, key=lambda root: sim.run.blocks[root].body.slot)
        txs = sum(len(decode_block(ledger.raw[root]).transactions) for root in blocks)

        fresh = ledger.open_chain("baseline")
        start, cpu = time.perf_counter(), time.process_time()
        for root in blocks:
            fresh.import_block(decode_block(ledger.raw[root]), as_head=True, settlement=ledger.settlements[root])
        bare_wall, bare_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert fresh.head.hash == head, "the blocks imported without consensus end elsewhere"
        measured, target, pending = finality_latencies(sim, ledger, head)
        finalized = sim.nodes[0].finalized.epoch

    print(f"  simulation: {len(blocks)} blocks, {txs} transactions, {sim_wall:.2f} s (CPU {sim_cpu:.2f} s); "
          f"finalized epoch {finalized}", flush=True)
    print(f"  without consensus (one fresh Chain importing the same blocks): {bare_wall:.2f} s (CPU {bare_cpu:.2f} s)",
          flush=True)
    throughput = Result(
        name="consensus simulation",
        unit="blocks/s",
        ours=len(blocks) / sim_wall,
        baseline=len(blocks) / bare_wall,
        baseline_name="execution alone",
        target=None,
        note=f"{validators} nodes each execute every block: per node, consensus keeps "
             f"{validators * bare_wall / sim_wall:.2f} of execution's speed (CPU: {validators * bare_cpu / sim_cpu:.2f}); "
             f"{len(blocks)} blocks, {txs} txs",
    )
    mean, goal = statistics.mean(measured), statistics.mean(target)
    latency = Result(
        name="finality latency",
        unit="/100 slots",
        ours=100 / mean,
        baseline=100 / goal,
        baseline_name="target",
        target=1.0,
        note=f"slots from proposal to finalization: mean {mean:.1f}, median {statistics.median(measured):.0f}, "
             f"max {max(measured)}; target (two epochs after the block's checkpoint epoch) mean {goal:.1f}; "
             f"{len(measured) // validators} blocks x {validators} nodes, {pending} blocks not yet finalized",
    )
    for result in (throughput, latency):
        print("  " + result.line(), flush=True)
        print("    " + result.note, flush=True)
    return [throughput, latency]


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consensus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validators", type=int, default=env_int("BENCH_CONSENSUS_VALIDATORS", 16))
    parser.add_argument("--epochs", type=int, default=env_int("BENCH_CONSENSUS_EPOCHS", 7))
    args = parser.parse_args(argv)
    return run(args.validators, args.epochs)


if __name__ == "__main__":
    main(sys.argv[1:])
