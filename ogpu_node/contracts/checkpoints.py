"""The executor's side of a batch task's checkpoints (DESIGN.md §6, steps 1-5), as step functions.

Per checkpoint k: the executor commits (by the time k is due, plus one segment window of grace); the
next block's system call draws a council (council.py); members commit first, then the executor
reveals, then members reveal (and under allclose judge each other); the tally accepts,
rejects or calls a fresh council (settlement.py pays or penalises). Verification is sequential
(k + 1 is drawn once k is accepted) while commits may run ahead. A checkpoint not committed in time
expires: the executor is penalised and replaced.
"""

from __future__ import annotations

from ogpu_node.contracts import council, settlement
from ogpu_node.contracts.commitments import checkpoint_commitment
from ogpu_node.contracts.context import TaskContext, due, schedule_draw, schedule_expiry
from ogpu_node.contracts.host import Revert
from ogpu_node.types.protocol import (
    Penalty,
    Phase,
    TaskState,
)

__all__ = ["commit_checkpoint", "expire_checkpoint", "reveal_checkpoint"]


def commit_checkpoint(ctx: TaskContext, task_id: int, k: int, commitment: bytes) -> None:
    """The executor commits checkpoint k (the next one), before its deadline."""
    task = ctx.existing(task_id)
    progress, terms = ctx.progress(task_id), ctx.terms(task_id)
    host = ctx.host
    if task.state != TaskState.RUNNING:
        raise Revert("Task: task is not running")
    if host.caller != task.executor:
        raise Revert("Task: caller is not the executor")
    if k != progress.committed + 1:
        raise Revert(f"Task: expected checkpoint {progress.committed + 1}")
    if k > terms.checkpoints:
        raise Revert("Task: no such checkpoint")
    if host.timestamp >= due(ctx, task_id, k) + terms.segment_window:
        raise Revert(f"Task: checkpoint {k} is past its deadline")
    progress.committed = k
    checkpoint = ctx.checkpoint(task_id, k)
    checkpoint.commitment = commitment
    checkpoint.committed_at = host.timestamp
    checkpoint.phase = Phase.COMMITTED
    ctx.emit("CheckpointCommitted", taskId=task_id, k=k, commitment=commitment)
    schedule_expiry(ctx, task_id, k + 1)
    if k == progress.accepted + 1:
        schedule_draw(ctx, task_id, k)


def reveal_checkpoint(ctx: TaskContext, task_id: int, k: int, checkpoint_hash: bytes) -> None:
    """The executor opens its commitment to checkpoint k after the members committed (they get a full
    reveal window after it)."""
    task = ctx.existing(task_id)
    host = ctx.host
    executor = task.executor
    if host.caller != executor:
        raise Revert("Task: caller is not the executor")
    checkpoint = ctx.checkpoint(task_id, k)
    phase = checkpoint.phase
    if phase != Phase.REVEAL or host.timestamp >= checkpoint.phase_ends:
        raise Revert("Task: checkpoint is not open for the executor's reveal")
    if checkpoint.revealed:
        raise Revert("Task: checkpoint already revealed")
    if checkpoint_commitment(task_id, k, executor, checkpoint_hash) != checkpoint.commitment:
        raise Revert("Task: reveal does not match the commitment")
    checkpoint.revealed = True
    checkpoint.checkpoint_hash = checkpoint_hash
    # Members can reveal only after the executor: however late it revealed, they get a full window.
    checkpoint.phase_ends = max(checkpoint.phase_ends, host.timestamp + ctx.params.reveal_window)
    ctx.emit("CheckpointRevealed", taskId=task_id, k=k, checkpointHash=checkpoint_hash)
    council.tally_if_complete(ctx, task_id, k)


def expire_checkpoint(ctx: TaskContext, task_id: int, k: int, generation: int) -> None:
    """Deadline: checkpoint k of executor `generation` is past its grace; if it was never committed,
    the executor is penalised and replaced."""
    progress = ctx.progress(task_id)
    if ctx.task(task_id).state != TaskState.RUNNING or progress.generation != generation:
        return
    if progress.committed < k:
        settlement.executor_failed(ctx, task_id, k, Penalty.MISSED_CHECKPOINT, beneficiaries=[])
