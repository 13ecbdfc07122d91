"""The start-of-block system call cannot halt the chain (DESIGN.md §2, issue "ready to grow").

A deadline step that fails with an unexpected exception (a defect in a contract) is dropped with its
changes and logged with its task id, and the block is built; MemoryError and RecursionError, which
differ between machines, stop block production instead of being contained.
"""

from __future__ import annotations

import logging

import pytest
from eth_hash.auto import keccak
from harness import OGPU, TASK_ABI, Harness

from ogpu_node.types.protocol import BPS, TaskKind, TaskState

MAX_PAYMENT = 10 * OGPU
BID_WINDOW = 30
TERMS = {
    "maxPayment": MAX_PAYMENT, "councilSize": 1, "councilShareBps": 1_000, "checkpoints": 1,
    "segmentWindow": 3_600, "bidWindow": BID_WINDOW, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0,
    "confirmWindow": 600, "responseMethod": 0, "responseWeight": 0, "equivalence": 0, "minMemoryMiB": 0,
    "deviceMask": 0,
}


@pytest.fixture
def h(chain) -> Harness:
    return Harness(chain)


def _task_contract(h: Harness):
    return h.chain.execution.vm_class._state_class.task_contract


def _submit(h: Harness, client) -> int:
    value = MAX_PAYMENT + MAX_PAYMENT * h.chain.genesis.protocol.client_deposit_bps // BPS
    result = h.ok(client, TASK_ABI, "submitTask", keccak(b"a task"), TaskKind.BATCH, TERMS, value=value)
    return result.events[-1]["taskId"]


def test_a_failing_deadline_step_is_dropped_logged_and_blocks_go_on(h, dev_accounts, monkeypatch, caplog):
    client = dev_accounts[0]
    task_id = _submit(h, client)
    assert h.view(TASK_ABI, "pendingDeadlines")["count"] == 1

    def defect(host, deadline):
        raise ZeroDivisionError("a defect in a deadline step")

    monkeypatch.setattr(_task_contract(h), "run_deadline", defect)
    head = h.chain.head.block_number
    with caplog.at_level(logging.ERROR, logger="ogpu.contracts"):
        block = h.block(dt=BID_WINDOW + 1)  # the bid window's deadline falls due in this block
    assert block.executed.header.block_number == head + 1
    assert h.view(TASK_ABI, "pendingDeadlines")["count"] == 0  # dropped, not retried every block
    assert h.view(TASK_ABI, "getTask", task_id)["state"] == TaskState.BIDDING  # its changes undone
    [record] = [r for r in caplog.records if "deadline step" in r.getMessage()]
    assert f"CLOSE_BIDDING of task {task_id} failed" in record.getMessage()
    assert record.exc_info[0] is ZeroDivisionError

    monkeypatch.undo()
    h.block()
    h.ok(client, TASK_ABI, "taskCount")  # the chain still takes transactions
    assert h.chain.head.block_number == head + 3


@pytest.mark.parametrize("fatal", [MemoryError, RecursionError])
def test_memory_and_recursion_errors_in_a_step_stop_block_production(h, dev_accounts, monkeypatch, fatal):
    _submit(h, dev_accounts[0])

    def exhausted(host, deadline):
        raise fatal()

    monkeypatch.setattr(_task_contract(h), "run_deadline", exhausted)
    head = h.chain.head.block_number
    with pytest.raises(fatal):
        h.block(dt=BID_WINDOW + 1)
    assert h.chain.head.block_number == head
