"""Where a batch task's money goes (DESIGN.md §6): checkpoint payments, faults, re-assignment, confirmation,
disputes, cancellation and settlement, as step functions over a TaskContext.

Every path ends a task the same way: the client gets back escrow − Σ paid plus its deposit (less what
a lost dispute costs it), every pledge still held is unlocked, and Task keeps nothing of the task.
"""

from __future__ import annotations

from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.context import (
    TaskContext,
    collateral_floor,
    due,
    release_council,
    schedule_draw,
    schedule_expiry,
    subject,
    verification_fee,
)
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.layout import TaskEntry
from ogpu_node.types.protocol import BPS, CancelReason, DeadlineKind, Outcome, Penalty, Phase, Role, TaskState

# -- an accepted checkpoint --


def accept(ctx: TaskContext, task_id: int, k: int, yes: list[bytes]) -> None:
    """Pay checkpoint k: its share of the price, less the lateness discount, split between the executor
    and the council members who voted yes; after the last one the client has a window to confirm."""
    task, terms, progress = ctx.task(task_id), ctx.terms(task_id), ctx.progress(task_id)
    checkpoint = ctx.checkpoint(task_id, k)
    checkpoints = terms.checkpoints
    price = task.price
    part = price * k // checkpoints - price * (k - 1) // checkpoints
    late = max(0, checkpoint.committed_at - due(ctx, task_id, k))
    rate = min(BPS, late * terms.lateness_bps_per_second)
    discount = part * rate // BPS  # stays in escrow: refunded to the client at settlement
    net = part - discount
    share = net * terms.council_share_bps // BPS // len(yes)
    executor = task.executor
    for member in yes:
        ctx.pay(member, share)
    ctx.pay(executor, net - share * len(yes))
    task.escrow -= net
    progress.paid += net
    progress.accepted = k
    checkpoint.phase = Phase.ACCEPTED
    ctx.emit(
        "CheckpointAccepted", taskId=task_id, k=k, executorPaid=net - share * len(yes),
        councilPaid=share * len(yes), discount=discount,
    )
    if k == checkpoints:
        deadline = ctx.host.timestamp + terms.confirm_window
        task.state = TaskState.AWAITING_CONFIRMATION
        progress.confirm_deadline = deadline
        ctx.schedule(deadline, DeadlineKind.AUTO_CONFIRM, subject(task_id))
    elif progress.committed > k:
        schedule_draw(ctx, task_id, k + 1)


# -- an executor at fault --


def pay_out(ctx: TaskContext, task_id: int, amount: int, workers: list[bytes], harmed: bytes | None) -> None:
    """Share out `amount` Task just took from a loser: each member of `workers` (who did the work that
    proved the fault) up to the verification fee S first, then the reporter share of the rest to the
    workers (to `harmed` when given, or when nobody worked); the remainder and any dust burn."""
    count = len(workers)
    each = min(verification_fee(ctx, task_id), amount // count) if count else 0
    for member in workers:
        ctx.pay(member, each)
    rest = amount - each * count
    reward = rest * ctx.params.reporter_share_bps // BPS
    if harmed is not None or not count:
        ctx.pay(ctx.task(task_id).client if harmed is None else harmed, reward)
        paid = reward
    else:
        for member in workers:
            ctx.pay(member, reward // count)
        paid = reward // count * count
    ctx.burn(task_id, rest - paid)


def take_collateral(ctx: TaskContext, task_id: int, kind: Penalty) -> int:
    """Slash the executor's whole collateral into Task, which shares it out (pay_out)."""
    task = ctx.task(task_id)
    collateral = task.collateral
    task.collateral = 0
    ctx.stake.unlock(ctx.host, task.executor, collateral)
    return ctx.slashing.penalize(ctx.host, task.executor, task_id, kind, collateral, TASK, reward_bps=BPS)


def executor_failed(ctx: TaskContext, task_id: int, k: int, kind: Penalty, beneficiaries: list[bytes]) -> None:
    """Slash the executor's collateral, pay the members who did the work from it (`beneficiaries`),
    void its later commitments, re-assign or cancel."""
    task, progress = ctx.task(task_id), ctx.progress(task_id)
    executor = task.executor
    penalty = take_collateral(ctx, task_id, kind)
    pay_out(ctx, task_id, penalty, beneficiaries, harmed=None)
    event = "CheckpointRejected" if kind == Penalty.REJECTED else "CheckpointMissed"
    ctx.emit(event, taskId=task_id, k=k, executor=executor, penalty=penalty)
    ctx.barred(task_id).add(executor)
    accepted = progress.accepted
    release_council(ctx, task_id, accepted + 1)
    for later in range(accepted + 1, progress.committed + 1):
        # Void the commitment; a new round number keeps this council's pending deadlines stale.
        checkpoint = ctx.checkpoint(task_id, later)
        checkpoint.phase = Phase.NONE
        checkpoint.revealed = False
        checkpoint.round += 1
        checkpoint.inconclusive = 0
    progress.committed = accepted
    reassign(ctx, task_id, executor)


def reassign(ctx: TaskContext, task_id: int, previous: bytes) -> None:
    """Hand the task to the best remaining bidder able to pledge its collateral, from the first
    unaccepted checkpoint on; with none left, cancel."""
    task, progress = ctx.task(task_id), ctx.progress(task_id)
    host = ctx.host
    barred, history = ctx.barred(task_id), ctx.history(task_id)
    client = task.client
    for price, _, provider in ctx.bid.ranked(host, task_id):
        if provider in barred or provider in history or provider == client:
            continue
        collateral = ctx.bid.collateral_for(price, collateral_floor(ctx, task_id))
        if ctx.stake.free_stake(host, provider) < collateral or not ctx.stake.stakeOf(host, provider).roles & Role.PROVIDER:
            continue
        ctx.stake.lock(host, provider, collateral)
        accepted = progress.accepted
        task.executor = provider
        task.price = price
        task.collateral = collateral
        progress.run_start = host.timestamp
        progress.run_base = accepted
        progress.generation += 1
        task.state = TaskState.RUNNING
        schedule_expiry(ctx, task_id, accepted + 1)
        ctx.emit(
            "ExecutorReplaced", taskId=task_id, previous=previous, executor=provider, price=price,
            resumeFrom=accepted,
        )
        return
    cancel(ctx, task_id, CancelReason.NO_REPLACEMENT, executor_at_fault=True)


# -- the client's confirmation --


def awaiting(ctx: TaskContext, task_id: int) -> TaskEntry:
    """The task, if its client may confirm or dispute it now."""
    task = ctx.existing(task_id)
    if ctx.host.caller != task.client:
        raise Revert("Task: caller is not the client")
    if task.state != TaskState.AWAITING_CONFIRMATION:
        raise Revert("Task: task is not awaiting confirmation")
    if ctx.host.timestamp >= ctx.progress(task_id).confirm_deadline:
        raise Revert("Task: the confirmation window has closed")
    return task


def confirm(ctx: TaskContext, task_id: int) -> None:
    awaiting(ctx, task_id)
    settle(ctx, task_id, Outcome.CONFIRMED)


def dispute(ctx: TaskContext, task_id: int) -> None:
    """The client disputes the final checkpoint: a fresh council re-checks it; the loser pays."""
    task = awaiting(ctx, task_id)
    k = ctx.terms(task_id).checkpoints
    task.state = TaskState.DISPUTED
    checkpoint = ctx.checkpoint(task_id, k)
    checkpoint.round += 1
    checkpoint.inconclusive = 0
    checkpoint.phase = Phase.COMMITTED
    schedule_draw(ctx, task_id, k)
    ctx.emit("TaskDisputed", taskId=task_id)


def auto_confirm(ctx: TaskContext, task_id: int) -> None:
    """Deadline: the confirmation window closed without a dispute."""
    task = ctx.task(task_id)
    if task.state == TaskState.AWAITING_CONFIRMATION and ctx.host.timestamp >= ctx.progress(task_id).confirm_deadline:
        settle(ctx, task_id, Outcome.CONFIRMED)


def settle_dispute(ctx: TaskContext, task_id: int, executor_lost: bool, majority: list[bytes]) -> None:
    """A dispute's council decided: the executor loses its collateral, or the client its deposit."""
    task = ctx.task(task_id)
    if executor_lost:
        penalty = take_collateral(ctx, task_id, Penalty.REJECTED)
        pay_out(ctx, task_id, penalty, majority, harmed=task.client)
        settle(ctx, task_id, Outcome.EXECUTOR_LOST)
        return
    # The client's deposit pays the council that upheld the work, as a cheater's collateral would.
    deposit = task.deposit
    task.deposit = 0
    pay_out(ctx, task_id, deposit, majority, harmed=None)
    settle(ctx, task_id, Outcome.CLIENT_LOST)


# -- the end of a task --


def settle(ctx: TaskContext, task_id: int, outcome: Outcome) -> None:
    """Refund escrow − Σ paid and the deposit; release the executor's collateral."""
    task = ctx.task(task_id)
    refund = task.escrow + task.deposit
    task.escrow = 0
    task.deposit = 0
    ctx.stake.unlock(ctx.host, task.executor, task.collateral)
    task.collateral = 0
    task.state = TaskState.SETTLED
    ctx.pay(task.client, refund)
    ctx.emit("TaskSettled", taskId=task_id, outcome=outcome, refund=refund, paid=ctx.progress(task_id).paid)


def cancel(ctx: TaskContext, task_id: int, reason: CancelReason, executor_at_fault: bool = False) -> None:
    """Refund the client escrow − Σ paid and the deposit; free every pledge still held."""
    task = ctx.task(task_id)
    if task.state not in (TaskState.BIDDING,) and not executor_at_fault:
        ctx.stake.unlock(ctx.host, task.executor, task.collateral)
    task.collateral = 0
    release_council(ctx, task_id, ctx.progress(task_id).accepted + 1)
    refund = task.escrow + task.deposit
    task.escrow = 0
    task.deposit = 0
    task.state = TaskState.CANCELLED
    ctx.pay(task.client, refund)
    ctx.emit("TaskCancelled", taskId=task_id, reason=reason, refund=refund)
