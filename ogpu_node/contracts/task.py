"""Task: prescriptions, escrow and safety deposits, assignment, checkpoints, councils, streams (DESIGN.md §6).

The contract itself only dispatches: each ABI function and each due deadline becomes one step
function over a `TaskContext`, in the module of its stage:

- submission.py: a batch task is submitted, bid on through Bid, and assigned on the halting rule H;
- checkpoints.py: the executor commits and reveals checkpoints, or lets one expire;
- council.py: councils are drawn, commit and reveal, and the tally decides;
- settlement.py: checkpoints are paid, executors penalised and replaced, tasks confirmed, disputed,
  cancelled and settled;
- streams.py: stream tasks form, change terms, settle receipts and close.

Invariant: the contract's balance = Σ escrow + deposit of tasks not yet settled.
"""

from __future__ import annotations

from collections.abc import Callable

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts import checkpoints, council, settlement, streams, submission
from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.bid import Bid
from ogpu_node.contracts.context import TaskContext, collateral_floor, split_subject
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.scheduler import Deadline, DeadlineQueue
from ogpu_node.contracts.slashing import Slashing
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.submission import TERMS, BiddingTask, Terms
from ogpu_node.types.protocol import MAX_CHECKPOINTS, MAX_COUNCIL, MAX_WINDOW, DeadlineKind, TaskKind
from ogpu_node.types.records import CheckpointRecord, ProgressRecord, StreamRecord, TaskRecord, TermsRecord

__all__ = ["MAX_CHECKPOINTS", "MAX_COUNCIL", "MAX_WINDOW", "TERMS", "Task", "Terms"]


class Task(NativeContract):
    NAME = "Task"
    ADDRESS = TASK

    def __init__(self, params: ProtocolParams, bid: Bid, stake: Stake, slashing: Slashing) -> None:
        super().__init__()
        self.config = params
        self.bid = bid
        self.stake = stake
        self.slashing = slashing
        bid.task = self
        slashing.task = self

    def context(self, host: Host) -> TaskContext:
        return TaskContext(host, self.storage(host), self.config, self.stake, self.bid, self.slashing, self.abi)

    def queue(self, host: Host) -> DeadlineQueue:
        return DeadlineQueue(self.storage(host))

    # -- the start-of-block system call --

    def run_deadline(self, host: Host, deadline: Deadline) -> None:
        """Run the step a due deadline names (it returns without effect if the step is stale)."""
        ctx = self.context(host)
        if deadline.kind == DeadlineKind.CLOSE_BIDDING:
            submission.close_bidding(ctx, deadline.subject)
            return
        task_id, k, tag = split_subject(deadline.subject)
        steps: dict[int, Callable[[], None]] = {
            DeadlineKind.DRAW_COUNCIL: lambda: council.draw_council(ctx, task_id, k, tag),
            DeadlineKind.CLOSE_COMMITS: lambda: council.close_commits(ctx, task_id, k, tag),
            DeadlineKind.CLOSE_REVEALS: lambda: council.close_reveals(ctx, task_id, k, tag),
            DeadlineKind.CLOSE_JUDGING: lambda: council.close_judging(ctx, task_id, k, tag),
            DeadlineKind.EXPIRE_CHECKPOINT: lambda: checkpoints.expire_checkpoint(ctx, task_id, k, tag),
            DeadlineKind.AUTO_CONFIRM: lambda: settlement.auto_confirm(ctx, task_id),
            DeadlineKind.CLOSE_STREAM: lambda: streams.close_stream(ctx, task_id),
        }
        step = steps.get(deadline.kind)
        if step is None:
            raise Revert(f"Task: unknown deadline kind {deadline.kind}")
        step()

    # -- batch tasks --

    def submitTask(self, host: Host, prescription_hash: bytes, kind: int, raw_terms: tuple) -> int:
        return submission.submit_task(self.context(host), prescription_hash, kind, raw_terms)

    def commitCheckpoint(self, host: Host, task_id: int, k: int, commitment: bytes) -> None:
        checkpoints.commit_checkpoint(self.context(host), task_id, k, commitment)

    def revealCheckpoint(self, host: Host, task_id: int, k: int, checkpoint_hash: bytes) -> None:
        checkpoints.reveal_checkpoint(self.context(host), task_id, k, checkpoint_hash)

    def commitResult(self, host: Host, task_id: int, k: int, commitment: bytes) -> None:
        council.commit_result(self.context(host), task_id, k, commitment)

    def revealResult(
        self, host: Host, task_id: int, k: int, verdict: bool, result_hash: bytes, step_hash: bytes,
        salt: bytes, fetched: bool,
    ) -> None:
        council.reveal_result(self.context(host), task_id, k, verdict, result_hash, step_hash, salt, fetched)

    def judgeResults(self, host: Host, task_id: int, k: int, verdicts: list[bool]) -> None:
        council.judge_results(self.context(host), task_id, k, verdicts)

    def confirm(self, host: Host, task_id: int) -> None:
        settlement.confirm(self.context(host), task_id)

    def dispute(self, host: Host, task_id: int) -> None:
        settlement.dispute(self.context(host), task_id)

    # -- stream tasks --

    def submitStream(self, host: Host, prescription_hash: bytes, raw_terms: tuple) -> int:
        return streams.submit_stream(self.context(host), prescription_hash, raw_terms)

    def updateTerms(self, host: Host, task_id: int, price: int, method: int, weight: int) -> int:
        return streams.update_terms(self.context(host), task_id, price, method, weight)

    def setRequestKey(self, host: Host, task_id: int, key: bytes) -> None:
        streams.set_request_key(self.context(host), task_id, key)

    def topUp(self, host: Host, task_id: int) -> None:
        streams.top_up(self.context(host), task_id)

    def reportConsensusFailure(self, host: Host, task_id: int) -> None:
        streams.report_consensus_failure(self.context(host), task_id)

    def retract(self, host: Host, task_id: int) -> None:
        streams.retract(self.context(host), task_id)

    def settle(
        self, host: Host, task_id: int, provider: bytes, cumulative_units: int, version: int, signature: bytes
    ) -> int:
        return streams.settle(self.context(host), task_id, provider, cumulative_units, version, signature)

    # -- views --

    def getTask(self, host: Host, task_id: int) -> TaskRecord:
        return self.context(host).existing(task_id).load(TaskRecord)

    def getTerms(self, host: Host, task_id: int) -> TermsRecord:
        ctx = self.context(host)
        ctx.existing(task_id)
        return ctx.terms(task_id).load(TermsRecord)

    def getProgress(self, host: Host, task_id: int) -> ProgressRecord:
        ctx = self.context(host)
        ctx.existing(task_id)
        return ctx.progress(task_id).load(ProgressRecord)

    def getCheckpoint(self, host: Host, task_id: int, k: int) -> CheckpointRecord:
        ctx = self.context(host)
        ctx.existing(task_id)
        checkpoint = ctx.checkpoint(task_id, k)
        round_ = checkpoint.round
        return CheckpointRecord(
            phase=checkpoint.phase, round=round_, commitment=checkpoint.commitment,
            checkpoint_hash=checkpoint.checkpoint_hash, phase_ends=checkpoint.phase_ends,
            council=list(ctx.council(task_id, k, round_)), step_index=checkpoint.step_index,
        )

    def getStream(self, host: Host, task_id: int) -> StreamRecord:
        return streams.stream_record(self.context(host), task_id)

    def settledUnits(self, host: Host, task_id: int, provider: bytes, version: int) -> int:
        return streams.settled_units(self.context(host), task_id, provider, version)

    def taskCount(self, host: Host) -> int:
        return self.context(host).counter().count

    def minimumDeposit(self, host: Host, amount: int) -> int:
        """The safety deposit a task escrowing ``amount`` (maxPayment, or a stream's budget) must add."""
        return submission.minimum_deposit(self.context(host), amount)

    def pendingDeadlines(self, host: Host) -> tuple[int, int]:
        queue = self.queue(host)
        head = queue.peek()
        return len(queue), 0 if head is None else head.due

    # -- for Bid, within the same call --

    def open_for_bids(self, host: Host, task_id: int) -> BiddingTask:
        return submission.open_for_bids(self.context(host), task_id)

    def collateral_floor(self, host: Host, task_id: int) -> int:
        ctx = self.context(host)
        if ctx.existing(task_id).kind != TaskKind.BATCH:
            raise Revert("Bid: not a batch task")
        return collateral_floor(ctx, task_id)

    def close_bidding(self, host: Host, task_id: int) -> None:
        submission.close_bidding(self.context(host), task_id)

    def open_for_subscription(self, host: Host, task_id: int) -> tuple[bytes, int, int, bytes]:
        return streams.open_for_subscription(self.context(host), task_id)

    def membership_changed(self, host: Host, task_id: int) -> None:
        streams.membership_changed(self.context(host), task_id)

    # -- for Slashing, within the same call --

    def stream_fault_terms(self, host: Host, task_id: int) -> tuple[bytes, int]:
        return streams.fault_terms(self.context(host), task_id)

    def signs_for_client(self, host: Host, task_id: int, signer: bytes) -> bool:
        return streams.signs_for_client(self.context(host), task_id, signer)
