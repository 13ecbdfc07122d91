"""Task: prescriptions, escrow and safety deposits, assignment on the halting rule H (DESIGN.md §6).

This is the submission and assignment stage of the batch lifecycle: the client escrows the maximum
payment plus a safety deposit; providers bid through Bid; when the bid window ends (a deadline the
start-of-block step runs) or the first N bids are in, the lowest bid (earliest on ties) becomes the
executor and the assignment seed is fixed from the block's RANDAO mix; with fewer than the minimum
bids the task is cancelled and the client refunded in full. Invariant: the contract's balance =
Σ escrow + deposit of tasks not yet settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_hash.auto import keccak

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.bid import Bid
from ogpu_node.contracts.checkpoints import CheckpointProtocol, split_subject
from ogpu_node.contracts.council import CouncilProtocol
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.scheduler import Deadline, DeadlineQueue
from ogpu_node.contracts.slashing import Slashing
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.storage import Storage
from ogpu_node.contracts.streams import StreamProtocol
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

TERMS = (
    "max_payment", "council_size", "council_share_bps", "checkpoints", "segment_window", "bid_window",
    "first_n", "min_bids", "lateness_bps_per_second", "confirm_window", "response_method", "response_weight",
    "equivalence", "min_memory_mib", "device_mask",
)


@dataclass(frozen=True)
class Terms:
    max_payment: int
    council_size: int
    council_share_bps: int
    checkpoints: int
    segment_window: int
    bid_window: int
    first_n: int
    min_bids: int
    lateness_bps_per_second: int
    confirm_window: int
    response_method: int
    response_weight: int
    equivalence: int  # how councils compare results: 0 exact (commit first), 1 allclose (reveal first)
    min_memory_mib: int  # council members' registered memory must reach this
    device_mask: int  # bit i allows device kind i (Stake.DEVICE_KINDS); 0 allows any

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


@dataclass(frozen=True)
class TaskView:
    client: bytes
    state: int
    max_payment: int
    first_n: int
    bid_deadline: int


class Task(CheckpointProtocol, CouncilProtocol, StreamProtocol, NativeContract):
    NAME = "Task"
    ADDRESS = TASK

    def __init__(self, params: ProtocolParams, bid: Bid, stake: Stake, slashing: Slashing) -> None:
        super().__init__()
        self.config = params
        self.bid = bid
        self.stake = stake
        self.slashing = slashing
        bid.task = self

    def queue(self, host: Host) -> DeadlineQueue:
        return DeadlineQueue(self.storage(host))

    # -- external functions --

    def submitTask(self, host: Host, prescription_hash: bytes, kind: int, raw_terms: tuple) -> int:
        if kind == TaskKind.STREAM:
            raise Revert("Task: stream tasks are submitted with submitStream")
        if kind != TaskKind.BATCH:
            raise Revert("Task: unknown task kind")
        terms = Terms(*raw_terms)
        terms.validate()
        minimum_deposit = self.minimumDeposit(host, terms.max_payment)
        if host.value < terms.max_payment + minimum_deposit:
            raise Revert(
                f"Task: value must cover maxPayment plus a safety deposit of at least {minimum_deposit} wei"
            )
        store = self.storage(host)
        task_id = store.add("count", delta=1)
        deposit = host.value - terms.max_payment
        bid_deadline = host.timestamp + terms.bid_window
        store.set_address("client", task_id, value=host.caller)
        store.set("kind", task_id, value=kind)
        store.set("state", task_id, value=TaskState.BIDDING)
        store.set("prescription", task_id, value=int.from_bytes(prescription_hash, "big"))
        store.set("escrow", task_id, value=terms.max_payment)
        store.set("deposit", task_id, value=deposit)
        store.set("bidDeadline", task_id, value=bid_deadline)
        for name, value in zip(TERMS, raw_terms, strict=True):
            store.set("terms", task_id, name, value=value)
        self.queue(host).schedule(bid_deadline, DeadlineKind.CLOSE_BIDDING, task_id)
        self.emit(
            host, "TaskSubmitted", taskId=task_id, client=host.caller, prescriptionHash=prescription_hash,
            kind=kind, maxPayment=terms.max_payment, deposit=deposit, bidDeadline=bid_deadline,
        )
        return task_id

    def getTask(self, host: Host, task_id: int) -> tuple:
        store = self._existing(host, task_id)
        return (
            store.get_address("client", task_id), store.get("kind", task_id), store.get("state", task_id),
            store.get("prescription", task_id).to_bytes(32, "big"), store.get("escrow", task_id),
            store.get("deposit", task_id), store.get_address("executor", task_id), store.get("price", task_id),
            store.get("seed", task_id).to_bytes(32, "big"), store.get("bidDeadline", task_id),
            store.get("assignedAt", task_id),
        )

    def getTerms(self, host: Host, task_id: int) -> tuple:
        store = self._existing(host, task_id)
        return tuple(store.get("terms", task_id, name) for name in TERMS)

    def taskCount(self, host: Host) -> int:
        return self.storage(host).get("count")

    def minimumDeposit(self, host: Host, amount: int) -> int:
        """The safety deposit a task escrowing ``amount`` (maxPayment, or a stream's budget) must add."""
        return amount * self.config.client_deposit_bps // BPS

    def pendingDeadlines(self, host: Host) -> tuple[int, int]:
        queue = self.queue(host)
        head = queue.peek()
        return len(queue), 0 if head is None else head.due

    # -- internal --

    def getCheckpoint(self, host: Host, task_id: int, k: int) -> tuple:
        store = self._existing(host, task_id)
        round_ = store.get("ck", task_id, k, "round")
        return (
            store.get("ck", task_id, k, "phase"), round_,
            store.get("ck", task_id, k, "commitment").to_bytes(32, "big"),
            store.get("ck", task_id, k, "hash").to_bytes(32, "big"), store.get("ck", task_id, k, "phaseEnds"),
            list(self._council(store, task_id, k, round_)), store.get("ck", task_id, k, "step"),
        )

    def getProgress(self, host: Host, task_id: int) -> tuple:
        store = self._existing(host, task_id)
        return tuple(
            store.get(name, task_id)
            for name in ("accepted", "committed", "paid", "runStart", "runBase", "generation", "confirmDeadline")
        )

    def _existing(self, host: Host, task_id: int) -> Storage:
        store = self.storage(host)
        if task_id == 0 or task_id > store.get("count"):
            raise Revert(f"Task: no task {task_id}")
        return store

    def open_for_bids(self, host: Host, task_id: int) -> TaskView:
        """The task, if it accepts bids now; Bid calls this first (late bids fail before the queue runs)."""
        store = self._existing(host, task_id)
        state = store.get("state", task_id)
        deadline = store.get("bidDeadline", task_id)
        if state != TaskState.BIDDING or host.timestamp >= deadline:
            raise Revert("Bid: bidding is closed for this task")
        return TaskView(
            client=store.get_address("client", task_id),
            state=state,
            max_payment=store.get("terms", task_id, "max_payment"),
            first_n=store.get("terms", task_id, "first_n"),
            bid_deadline=deadline,
        )

    def close_bidding(self, host: Host, task_id: int) -> None:
        """Apply H: assign the best bid, or cancel with a full refund when bids are too few."""
        store = self.storage(host)
        if store.get("state", task_id) != TaskState.BIDDING:
            return  # already closed by its first N bids
        ranked = self.bid.ranked(host, task_id)
        if len(ranked) < store.get("terms", task_id, "min_bids"):
            self.bid.release(host, task_id, keep=None)
            self.cancel(host, task_id, CancelReason.TOO_FEW_BIDS)
            return
        price, _, executor = ranked[0]
        self.bid.release(host, task_id, keep=executor)
        seed = keccak(host.mix_hash + task_id.to_bytes(32, "big"))
        store.set("state", task_id, value=TaskState.RUNNING)
        store.set_address("executor", task_id, value=executor)
        store.set("price", task_id, value=price)
        store.set("collateral", task_id, value=self.bid.collateral_for(price))
        store.set("seed", task_id, value=int.from_bytes(seed, "big"))
        store.set("assignedAt", task_id, value=host.timestamp)
        store.set("runStart", task_id, value=host.timestamp)
        self._schedule_expiry(host, store, task_id, 1)
        self.emit(host, "TaskAssigned", taskId=task_id, executor=executor, price=price, seed=seed)

    def cancel(self, host: Host, task_id: int, reason: int, executor_at_fault: bool = False) -> None:
        """Refund the client escrow − Σ paid and the deposit; free every pledge still held."""
        store = self.storage(host)
        if store.get("state", task_id) not in (TaskState.BIDDING,) and not executor_at_fault:
            self.stake.unlock(host, store.get_address("executor", task_id), store.get("collateral", task_id))
        store.set("collateral", task_id, value=0)
        self._release_council(host, store, task_id, store.get("accepted", task_id) + 1)
        refund = store.get("escrow", task_id) + store.get("deposit", task_id)
        store.set("escrow", task_id, value=0)
        store.set("deposit", task_id, value=0)
        store.set("state", task_id, value=TaskState.CANCELLED)
        host.transfer(TASK, store.get_address("client", task_id), refund)
        self.emit(host, "TaskCancelled", taskId=task_id, reason=reason, refund=refund)

    def run_deadline(self, host: Host, deadline: Deadline) -> None:
        if deadline.kind == DeadlineKind.CLOSE_BIDDING:
            self.close_bidding(host, deadline.subject)
            return
        if deadline.kind == DeadlineKind.CLOSE_STREAM:
            self.close_stream(host, deadline.subject >> 24)
            return
        task_id, k, tag = split_subject(deadline.subject)
        steps = {
            DeadlineKind.DRAW_COUNCIL: lambda: self.draw_council(host, task_id, k, tag),
            DeadlineKind.CLOSE_COMMITS: lambda: self.close_commits(host, task_id, k, tag),
            DeadlineKind.CLOSE_REVEALS: lambda: self.close_reveals(host, task_id, k, tag),
            DeadlineKind.EXPIRE_CHECKPOINT: lambda: self.expire_checkpoint(host, task_id, k, tag),
            DeadlineKind.AUTO_CONFIRM: lambda: self.auto_confirm(host, task_id),
        }
        step = steps.get(deadline.kind)
        if step is None:
            raise Revert(f"Task: unknown deadline kind {deadline.kind}")
        step()
