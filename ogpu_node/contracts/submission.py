"""Submission and assignment of a batch task (DESIGN.md §6), as step functions over a TaskContext.

The client escrows the maximum payment plus a safety deposit; providers bid through Bid; when the bid
window ends (a deadline the start-of-block step runs) or the first N bids are in, the halting rule H
assigns the lowest bid (earliest on ties) and fixes the assignment seed from the block's RANDAO mix;
with fewer than the minimum bids the task is cancelled and the client refunded in full.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from eth_hash.auto import keccak

from ogpu_node.contracts import settlement
from ogpu_node.contracts.context import TaskContext, collateral_floor, schedule_expiry
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.layout import TaskEntry
from ogpu_node.types.protocol import (
    BPS,
    MAX_CHECKPOINTS,
    MAX_COUNCIL,
    MAX_WINDOW,
    CancelReason,
    DeadlineKind,
    Equivalence,
    ResponseMethod,
    TaskKind,
    TaskState,
)
from ogpu_node.types.records import TermsRecord


class Terms(TermsRecord):
    """A batch task's terms as submitted (TermsRecord), with the rules the chain holds them to."""

    def validate(self) -> None:
        if self.max_payment == 0:
            raise Revert("Task: maxPayment is zero")
        if not 1 <= self.council_size <= MAX_COUNCIL:
            raise Revert(f"Task: councilSize must be between 1 and {MAX_COUNCIL}")
        if self.council_share_bps > BPS:
            raise Revert("Task: councilShareBps above 10000")
        if not 1 <= self.checkpoints <= MAX_CHECKPOINTS:
            raise Revert(f"Task: checkpoints must be between 1 and {MAX_CHECKPOINTS}")
        for name, window in (
            ("segmentWindow", self.segment_window), ("bidWindow", self.bid_window), ("confirmWindow", self.confirm_window)
        ):
            if window == 0:
                raise Revert(f"Task: {name} is zero")
            if window > MAX_WINDOW:
                raise Revert(f"Task: {name} above {MAX_WINDOW} seconds")
        if self.min_bids == 0:
            raise Revert("Task: minBids is zero")
        if self.first_n and self.first_n < self.min_bids:
            raise Revert("Task: firstN is below minBids")
        if self.response_method >= len(ResponseMethod):
            raise Revert("Task: unknown responseMethod")
        if self.response_weight > BPS:
            raise Revert("Task: responseWeight above 10000")
        if self.equivalence >= len(Equivalence):
            raise Revert("Task: unknown equivalence")


TERMS = tuple(f.name for f in fields(TermsRecord))  # the terms tuple's field names, in ABI order


@dataclass(frozen=True)
class BiddingTask:
    """What Bid needs to know of a task that accepts bids."""

    client: bytes
    state: int
    max_payment: int
    first_n: int
    bid_deadline: int
    collateral_floor: int  # the least a bid locks, whatever its price


def minimum_deposit(ctx: TaskContext, amount: int) -> int:
    """The safety deposit a task escrowing `amount` (maxPayment, or a stream's budget) must add."""
    return amount * ctx.params.client_deposit_bps // BPS


def open_task(ctx: TaskContext, kind: TaskKind, state: TaskState, prescription_hash: bytes, escrow: int) -> TaskEntry:
    """A new task of the caller's, holding `escrow` and the rest of the call's value as its deposit."""
    host = ctx.host
    counter = ctx.counter()
    task_id = counter.count + 1
    counter.count = task_id
    task = ctx.task(task_id)
    task.client = host.caller
    task.kind = kind
    task.state = state
    task.prescription_hash = prescription_hash
    task.escrow = escrow
    task.deposit = host.value - escrow
    return task


def submit_task(ctx: TaskContext, prescription_hash: bytes, kind: int, raw_terms: tuple) -> int:
    """A client submits a batch task: escrow maxPayment plus the deposit, open bidding."""
    host = ctx.host
    if kind == TaskKind.STREAM:
        raise Revert("Task: stream tasks are submitted with submitStream")
    if kind != TaskKind.BATCH:
        raise Revert("Task: unknown task kind")
    terms = Terms(*raw_terms)
    terms.validate()
    deposit_floor = minimum_deposit(ctx, terms.max_payment)
    if host.value < terms.max_payment + deposit_floor:
        raise Revert(f"Task: value must cover maxPayment plus a safety deposit of at least {deposit_floor} wei")
    task = open_task(ctx, TaskKind.BATCH, TaskState.BIDDING, prescription_hash, terms.max_payment)
    task_id = task.key
    deposit = host.value - terms.max_payment
    bid_deadline = host.timestamp + terms.bid_window
    task.bid_deadline = bid_deadline
    ctx.terms(task_id).write(terms)
    ctx.schedule(bid_deadline, DeadlineKind.CLOSE_BIDDING, task_id)
    ctx.emit(
        "TaskSubmitted", taskId=task_id, client=host.caller, prescriptionHash=prescription_hash,
        kind=kind, maxPayment=terms.max_payment, deposit=deposit, bidDeadline=bid_deadline,
    )
    return task_id


def open_for_bids(ctx: TaskContext, task_id: int) -> BiddingTask:
    """The task, if it accepts bids now; Bid calls this first (late bids fail before the queue runs)."""
    task = ctx.existing(task_id)
    state = task.state
    deadline = task.bid_deadline
    if state != TaskState.BIDDING or ctx.host.timestamp >= deadline:
        raise Revert("Bid: bidding is closed for this task")
    terms = ctx.terms(task_id)
    return BiddingTask(
        client=task.client, state=state, max_payment=terms.max_payment, first_n=terms.first_n, bid_deadline=deadline,
        collateral_floor=collateral_floor(ctx, task_id),
    )


def close_bidding(ctx: TaskContext, task_id: int) -> None:
    """Apply H: assign the best bid, or cancel with a full refund when bids are too few."""
    host = ctx.host
    task = ctx.task(task_id)
    if task.state != TaskState.BIDDING:
        return  # already closed by its first N bids
    ranked = ctx.bid.ranked(host, task_id)
    if len(ranked) < ctx.terms(task_id).min_bids:
        ctx.bid.release(host, task_id, keep=None)
        settlement.cancel(ctx, task_id, CancelReason.TOO_FEW_BIDS)
        return
    price, _, executor = ranked[0]
    ctx.bid.release(host, task_id, keep=executor)
    seed = keccak(host.mix_hash + task_id.to_bytes(32, "big"))
    progress = ctx.progress(task_id)
    task.state = TaskState.RUNNING
    task.executor = executor
    task.price = price
    task.collateral = ctx.bid.collateral_for(price, collateral_floor(ctx, task_id))
    task.seed = seed
    task.assigned_at = host.timestamp
    progress.run_start = host.timestamp
    schedule_expiry(ctx, task_id, 1)
    ctx.emit("TaskAssigned", taskId=task_id, executor=executor, price=price, seed=seed)
