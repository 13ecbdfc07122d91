"""The context every step of the Task contract runs in, and the small helpers its steps share.

A step is a plain function `step(ctx, task_id, ...)`: it reads and writes the task's stored records
through `ctx`, calls Stake, Bid and Slashing as plain functions within the same call, schedules
time-triggered steps on the deadline queue and emits Task's events. Nothing else is shared between
steps: what a step needs to know lives in storage, so the next block's step finds it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts.abi import ContractAbi
from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.layout import (
    CheckpointEntry,
    ProgressEntry,
    TaskCounter,
    TaskEntry,
    TermsEntry,
    VoteEntry,
)
from ogpu_node.contracts.scheduler import DeadlineQueue
from ogpu_node.contracts.storage import AddressSet, Storage
from ogpu_node.types.protocol import BPS, DeadlineKind, Phase

if TYPE_CHECKING:
    from ogpu_node.contracts.bid import Bid
    from ogpu_node.contracts.slashing import Slashing
    from ogpu_node.contracts.stake import Stake


def subject(task_id: int, k: int = 0, tag: int = 0) -> int:
    """A deadline's subject: task id, checkpoint, and a round or executor generation."""
    return task_id << 24 | k << 8 | tag


def split_subject(value: int) -> tuple[int, int, int]:
    return value >> 24, (value >> 8) & 0xFFFF, value & 0xFF


def deadline_task_id(kind: int, value: int) -> int:
    """The task a deadline belongs to: a bid window's subject is the bare task id, every other
    deadline's is `subject(task_id, k, tag)`."""
    return value if kind == DeadlineKind.CLOSE_BIDDING else split_subject(value)[0]


@dataclass(frozen=True)
class TaskContext:
    """One call into Task (a transaction's or the start-of-block system call's)."""

    host: Host
    store: Storage  # Task's own storage
    params: ProtocolParams
    stake: Stake
    bid: Bid
    slashing: Slashing
    abi: ContractAbi  # Task's, for its events

    # -- stored records --

    def counter(self) -> TaskCounter:
        return TaskCounter(self.store)

    def task(self, task_id: int) -> TaskEntry:
        return TaskEntry(self.store, task_id)

    def progress(self, task_id: int) -> ProgressEntry:
        return ProgressEntry(self.store, task_id)

    def terms(self, task_id: int) -> TermsEntry:
        return TermsEntry(self.store, task_id)

    def checkpoint(self, task_id: int, k: int) -> CheckpointEntry:
        return CheckpointEntry(self.store, task_id, k)

    def vote(self, task_id: int, k: int, round_: int, member: bytes) -> VoteEntry:
        return VoteEntry(self.store, task_id, k, round_, member)

    def council(self, task_id: int, k: int, round_: int) -> AddressSet:
        """The council drawn for checkpoint k in round `round_`."""
        return AddressSet(self.store, f"council/{task_id}/{k}/{round_}")

    def barred(self, task_id: int) -> AddressSet:
        """Executors removed from the task for a fault: never assigned to it again."""
        return AddressSet(self.store, f"barred/{task_id}")

    def history(self, task_id: int) -> AddressSet:
        """Everyone who sat on one of the task's councils: never its replacement executor."""
        return AddressSet(self.store, f"history/{task_id}")

    @property
    def queue(self) -> DeadlineQueue:
        return DeadlineQueue(self.store)

    # -- calls --

    def existing(self, task_id: int) -> TaskEntry:
        """The task, or a revert if no task has this id."""
        if task_id == 0 or task_id > self.counter().count:
            raise Revert(f"Task: no task {task_id}")
        return self.task(task_id)

    def emit(self, event: str, **values: Any) -> None:
        topics, data = self.abi.encode_event(event, values)
        self.host.log(TASK, topics, data)

    def schedule(self, due: int, kind: DeadlineKind, subject_: int) -> None:
        self.queue.schedule(due, kind, subject_)

    def pay(self, recipient: bytes, amount: int) -> None:
        self.host.transfer(TASK, recipient, amount)

    def burn(self, task_id: int, amount: int) -> None:
        """Destroy `amount` of Task's balance (what no one may keep: a refused deposit, dust)."""
        if amount:
            self.host.burn(TASK, amount)
            self.emit("FundsBurned", taskId=task_id, amount=amount)


# -- what verification is worth (docs/protocol.md, "Verification that cannot be gamed") --


def verification_fee(ctx: TaskContext, task_id: int) -> int:
    """S: what a whole council earns for a checkpoint paid at the maximum price; each member that
    did the work of a rejection is paid up to S from the loser's pledge."""
    terms = ctx.terms(task_id)
    return terms.max_payment // terms.checkpoints * terms.council_share_bps // BPS


def collateral_floor(ctx: TaskContext, task_id: int) -> int:
    """The least a bid on the task locks, whatever its price: a 1-wei bid still risks this."""
    terms, params = ctx.terms(task_id), ctx.params
    return max(
        terms.max_payment * params.collateral_floor_bps // BPS,
        terms.council_size * verification_fee(ctx, task_id),
        params.min_collateral,
    )


# -- scheduling shared by the checkpoint, council and settlement steps --


def due(ctx: TaskContext, task_id: int, k: int) -> int:
    """When checkpoint k is due: the executor's run start plus one segment window per checkpoint."""
    progress = ctx.progress(task_id)
    window = ctx.terms(task_id).segment_window
    return progress.run_start + (k - progress.run_base) * window


def schedule_expiry(ctx: TaskContext, task_id: int, k: int) -> None:
    """Checkpoint k expires one segment window after it is due, unless committed by then."""
    terms = ctx.terms(task_id)
    if k > terms.checkpoints:
        return
    grace = terms.segment_window
    generation = ctx.progress(task_id).generation
    ctx.schedule(due(ctx, task_id, k) + grace, DeadlineKind.EXPIRE_CHECKPOINT, subject(task_id, k, generation))


def schedule_draw(ctx: TaskContext, task_id: int, k: int) -> None:
    """Draw checkpoint k's council at the first block of the next epoch, from its RANDAO mix, which
    the committer cannot know (under --dev: the next block's mix)."""
    round_ = ctx.checkpoint(task_id, k).round
    ctx.schedule(ctx.stake.next_boundary(ctx.host.timestamp), DeadlineKind.DRAW_COUNCIL, subject(task_id, k, round_))


def release_council(ctx: TaskContext, task_id: int, k: int) -> None:
    """Unlock the seats of checkpoint k's current council, if one is sitting."""
    checkpoint = ctx.checkpoint(task_id, k)
    if not Phase(checkpoint.phase).sitting:
        return
    for member in ctx.council(task_id, k, checkpoint.round):
        ctx.stake.unlock(ctx.host, member, ctx.params.council_seat_stake)
    checkpoint.phase = Phase.COMMITTED
