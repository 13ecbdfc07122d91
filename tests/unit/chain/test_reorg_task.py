"""A reorganization across blocks that carry Task transactions (issue 11, must show): after the switch,
Task's state, its deadline queue and the system call's logs are exactly those of a chain that only
ever had the winning branch.

Both branches share a prefix (staked providers). Branch A submits a task, bids and reaches its bid
deadline (the system call assigns it); branch B, one block longer, does the same for another client's
task with other terms, so both branches have system-call logs at the same height.
"""

from __future__ import annotations

import pytest
from eth_hash.auto import keccak
from harness import BID_ABI, OGPU, STAKE_ABI, TASK_ABI, Harness

from ogpu_node.chain import Chain, system_tx_hash
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.types.protocol import BPS, TaskKind

pytestmark = pytest.mark.timeout(180)

BASE_TERMS = {
    "maxPayment": 10 * OGPU, "councilSize": 3, "councilShareBps": 1_000, "checkpoints": 4,
    "segmentWindow": 3_600, "bidWindow": 30, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0,
    "confirmWindow": 600, "responseMethod": 0, "responseWeight": 0,
}


def run_task_to_assignment(h: Harness, client, provider, **overrides: int) -> tuple[int, list]:
    """submitTask, a bid, then a block at the bid deadline: three blocks; (task id, their results)."""
    terms = {**BASE_TERMS, **overrides}
    deposit = terms["maxPayment"] * h.chain.genesis.protocol.client_deposit_bps // BPS
    submitted = h.send(client, TASK_ABI, "submitTask", keccak(b"reorg prescription"), TaskKind.BATCH, terms,
                       value=terms["maxPayment"] + deposit)
    assert submitted.ok, submitted.reason
    task_id = submitted.events[-1]["taskId"]
    deadline = h.view(TASK_ABI, "getTask", task_id)["bidDeadline"]
    placed = h.send(provider, BID_ABI, "placeBid", task_id, terms["maxPayment"] // 2)
    assert placed.ok, placed.reason
    assigned = h.block(at=deadline)
    assert "TaskAssigned" in [e.name for e in assigned.system_events]
    return task_id, [submitted, placed, assigned]


def task_view(h: Harness, accounts) -> dict:
    """Everything Task and Stake show about the parties: tasks, Task's balance, stakes and balances."""
    count = h.view(TASK_ABI, "taskCount")
    return {
        "count": count,
        "tasks": [h.view(TASK_ABI, "getTask", i) for i in range(1, count + 1)],
        "task_balance": h.balance(TASK_ABI.address),
        "stakes": [h.view(STAKE_ABI, "stakeOf", a.address) for a in accounts],
        "balances": [h.balance(a.address) for a in accounts],
    }


@pytest.fixture
def side(tmp_path):
    store = LMDBStore(tmp_path / "side")
    yield store
    store.close()


def test_a_reorg_across_task_blocks_leaves_task_state_as_if_the_losing_branch_never_happened(
    chain, side, dev_accounts
):
    providers, client_a, client_b = dev_accounts[1:4], dev_accounts[5], dev_accounts[6]
    h = Harness(chain)
    h.make_providers(providers, 500 * OGPU)
    only_b = Chain(side, chain.genesis)  # the chain that only ever has branch B
    for prefix in h.blocks:
        only_b.import_block(decode_block(encode_block(prefix.executed.block)), as_head=True)
    hb = Harness(only_b)

    task_a, results_a = run_task_to_assignment(h, client_a, providers[0])
    _, results_b = run_task_to_assignment(hb, client_b, providers[1], bidWindow=45, maxPayment=8 * OGPU)
    hb.block(hb.tx(client_b, STAKE_ABI, "stake", value=OGPU))  # B is one block longer
    a_blocks = [result.executed.block for result in h.blocks[-3:]]
    b_blocks = [result.executed.block for result in hb.blocks[-4:]]
    assert a_blocks[2].header.block_number == b_blocks[2].header.block_number  # system logs at one height
    a_system, b_system = system_tx_hash(a_blocks[2].hash), system_tx_hash(b_blocks[2].hash)
    assert a_system != b_system
    assert chain.receipt_json(a_system)["blockHash"] == a_blocks[2].hash

    for block in b_blocks:
        chain.import_block(decode_block(encode_block(block)))
    change = chain.set_head(b_blocks[-1].hash)
    assert [blk.hash for blk in change.abandoned] == [blk.hash for blk in a_blocks]
    assert [blk.hash for blk in change.adopted] == [blk.hash for blk in b_blocks]

    assert chain.head.state_root == only_b.head.state_root
    assert task_view(h, dev_accounts) == task_view(hb, dev_accounts)
    assert h.view(TASK_ABI, "taskCount") == 1  # A's task is gone, B's took its id
    assert chain.receipt_json(results_a[0].tx.hash) is None
    assert chain.receipt_json(a_system) is None
    assert chain.receipt_json(b_system) == only_b.receipt_json(b_system)
    assert [tx.hash for tx in change.returned_transactions] == [r.tx.hash for r in results_a[:2]]

    # The deadline queue follows the canonical chain: a block past A's deadlines fires nothing of A's,
    # and is the very block the B-only chain makes.
    later = max(h.now, hb.now) + 3_600
    assert h.block(at=later).header == hb.block(at=later).header
    assert task_view(h, dev_accounts) == task_view(hb, dev_accounts)
    assert task_a == 1 and h.view(TASK_ABI, "getTask", task_a)["client"] == client_b.address
