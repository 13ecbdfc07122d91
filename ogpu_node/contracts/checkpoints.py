"""The checkpoint protocol of a batch task (DESIGN.md §6, steps 1-5), as a part of Task.

Per checkpoint k: the executor commits; the next block's system call draws a council (council.py);
members commit and reveal (exact: members commit first, then the executor reveals; allclose: the
executor reveals first); the tally accepts, rejects or calls a fresh council. This module holds the
executor's side, payments, faults and re-assignment, confirmation, disputes and settlement.
Verification is sequential (k + 1 is drawn once k is accepted) while commits may run ahead.
"""

from __future__ import annotations

from eth_abi import encode
from eth_hash.auto import keccak

from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.storage import AddressSet, Storage
from ogpu_node.types.protocol import (
    BPS,
    CancelReason,
    DeadlineKind,
    Equivalence,
    Outcome,
    Penalty,
    Phase,
    Role,
    TaskState,
)


def subject(task_id: int, k: int = 0, tag: int = 0) -> int:
    """A deadline's subject: task id, checkpoint, and a round or executor generation."""
    return task_id << 24 | k << 8 | tag


def split_subject(value: int) -> tuple[int, int, int]:
    return value >> 24, (value >> 8) & 0xFFFF, value & 0xFF


def checkpoint_commitment(task_id: int, k: int, executor: bytes, checkpoint_hash: bytes) -> bytes:
    return keccak(encode(["uint256", "uint16", "address", "bytes32"], [task_id, k, executor, checkpoint_hash]))


def exact_result_commitment(
    task_id: int, k: int, member: bytes, result_hash: bytes, step_hash: bytes, salt: bytes
) -> bytes:
    return keccak(
        encode(["uint256", "uint16", "address", "bytes32", "bytes32", "bytes32"], [task_id, k, member, result_hash, step_hash, salt])
    )


def verdict_commitment(task_id: int, k: int, member: bytes, verdict: bool, result_hash: bytes, salt: bytes) -> bytes:
    return keccak(
        encode(["uint256", "uint16", "address", "bool", "bytes32", "bytes32"], [task_id, k, member, verdict, result_hash, salt])
    )


class CheckpointProtocol:
    """Mixed into Task; uses its storage, queue, stake, bid and slashing."""

    # -- small accessors --

    def _term(self, store: Storage, task_id: int, name: str) -> int:
        return store.get("terms", task_id, name)

    def _due(self, store: Storage, task_id: int, k: int) -> int:
        window = self._term(store, task_id, "segment_window")
        return store.get("runStart", task_id) + (k - store.get("runBase", task_id)) * window

    def _schedule_expiry(self, host: Host, store: Storage, task_id: int, k: int) -> None:
        if k > self._term(store, task_id, "checkpoints"):
            return
        grace = self._term(store, task_id, "segment_window")
        generation = store.get("generation", task_id)
        self.queue(host).schedule(
            self._due(store, task_id, k) + grace, DeadlineKind.EXPIRE_CHECKPOINT, subject(task_id, k, generation)
        )

    def _schedule_draw(self, host: Host, store: Storage, task_id: int, k: int) -> None:
        # The next block's start-of-block call draws it (its RANDAO mix is unknown to the committer).
        round_ = store.get("ck", task_id, k, "round")
        self.queue(host).schedule(host.timestamp, DeadlineKind.DRAW_COUNCIL, subject(task_id, k, round_))

    # -- executor --

    def commitCheckpoint(self, host: Host, task_id: int, k: int, commitment: bytes) -> None:
        store = self._existing(host, task_id)
        if store.get("state", task_id) != TaskState.RUNNING:
            raise Revert("Task: task is not running")
        if host.caller != store.get_address("executor", task_id):
            raise Revert("Task: caller is not the executor")
        if k != store.get("committed", task_id) + 1:
            raise Revert(f"Task: expected checkpoint {store.get('committed', task_id) + 1}")
        if k > self._term(store, task_id, "checkpoints"):
            raise Revert("Task: no such checkpoint")
        if host.timestamp >= self._due(store, task_id, k) + self._term(store, task_id, "segment_window"):
            raise Revert(f"Task: checkpoint {k} is past its deadline")
        store.set("committed", task_id, value=k)
        store.set("ck", task_id, k, "commitment", value=int.from_bytes(commitment, "big"))
        store.set("ck", task_id, k, "committedAt", value=host.timestamp)
        store.set("ck", task_id, k, "phase", value=Phase.COMMITTED)
        self.emit(host, "CheckpointCommitted", taskId=task_id, k=k, commitment=commitment)
        self._schedule_expiry(host, store, task_id, k + 1)
        if k == store.get("accepted", task_id) + 1:
            self._schedule_draw(host, store, task_id, k)

    def revealCheckpoint(self, host: Host, task_id: int, k: int, checkpoint_hash: bytes) -> None:
        store = self._existing(host, task_id)
        executor = store.get_address("executor", task_id)
        if host.caller != executor:
            raise Revert("Task: caller is not the executor")
        phase = store.get("ck", task_id, k, "phase")
        exact = self._term(store, task_id, "equivalence") == Equivalence.EXACT
        # exact: after the members committed; allclose: before they can commit, within their window.
        allowed = (Phase.REVEAL,) if exact else (Phase.COUNCIL_COMMIT,)
        if phase not in allowed or host.timestamp >= store.get("ck", task_id, k, "phaseEnds"):
            raise Revert("Task: checkpoint is not open for the executor's reveal")
        if store.get("ck", task_id, k, "revealed"):
            raise Revert("Task: checkpoint already revealed")
        stored = store.get("ck", task_id, k, "commitment").to_bytes(32, "big")
        if checkpoint_commitment(task_id, k, executor, checkpoint_hash) != stored:
            raise Revert("Task: reveal does not match the commitment")
        store.set("ck", task_id, k, "revealed", value=1)
        store.set("ck", task_id, k, "hash", value=int.from_bytes(checkpoint_hash, "big"))
        if exact:
            # Members can reveal only after the executor: however late it revealed, they get a full window.
            ends = max(store.get("ck", task_id, k, "phaseEnds"), host.timestamp + self.config.reveal_window)
            store.set("ck", task_id, k, "phaseEnds", value=ends)
        self.emit(host, "CheckpointRevealed", taskId=task_id, k=k, checkpointHash=checkpoint_hash)
        self._tally_if_complete(host, store, task_id, k)

    # -- time-triggered steps --

    def expire_checkpoint(self, host: Host, task_id: int, k: int, generation: int) -> None:
        store = self.storage(host)
        if store.get("state", task_id) != TaskState.RUNNING or store.get("generation", task_id) != generation:
            return
        if store.get("committed", task_id) < k:
            self._executor_failed(host, store, task_id, k, Penalty.MISSED_CHECKPOINT, beneficiaries=[])

    def _accept(self, host: Host, store: Storage, task_id: int, k: int, yes: list[bytes]) -> None:
        checkpoints = self._term(store, task_id, "checkpoints")
        price = store.get("price", task_id)
        part = price * k // checkpoints - price * (k - 1) // checkpoints
        late = max(0, store.get("ck", task_id, k, "committedAt") - self._due(store, task_id, k))
        rate = min(BPS, late * self._term(store, task_id, "lateness_bps_per_second"))
        discount = part * rate // BPS  # stays in escrow: refunded to the client at settlement
        net = part - discount
        share = net * self._term(store, task_id, "council_share_bps") // BPS // len(yes)
        executor = store.get_address("executor", task_id)
        for member in yes:
            host.transfer(TASK, member, share)
        host.transfer(TASK, executor, net - share * len(yes))
        store.add("escrow", task_id, delta=-net)
        store.add("paid", task_id, delta=net)
        store.set("accepted", task_id, value=k)
        store.set("ck", task_id, k, "phase", value=Phase.ACCEPTED)
        self.emit(
            host, "CheckpointAccepted", taskId=task_id, k=k, executorPaid=net - share * len(yes),
            councilPaid=share * len(yes), discount=discount,
        )
        if k == checkpoints:
            deadline = host.timestamp + self._term(store, task_id, "confirm_window")
            store.set("state", task_id, value=TaskState.AWAITING_CONFIRMATION)
            store.set("confirmDeadline", task_id, value=deadline)
            self.queue(host).schedule(deadline, DeadlineKind.AUTO_CONFIRM, subject(task_id))
        elif store.get("committed", task_id) > k:
            self._schedule_draw(host, store, task_id, k + 1)

    # -- faults, replacement, settlement --

    def _executor_failed(
        self, host: Host, store: Storage, task_id: int, k: int, kind: int, beneficiaries: list[bytes]
    ) -> None:
        """Slash the executor's collateral, void its later commitments, re-assign or cancel."""
        executor = store.get_address("executor", task_id)
        collateral = store.get("collateral", task_id)
        self.stake.unlock(host, executor, collateral)
        # The reporter share goes to the majority that rejected (split below), or to the client.
        beneficiary = TASK if beneficiaries else store.get_address("client", task_id)
        balance_before = host.balance(TASK)
        penalty = self.slashing.penalize(host, executor, task_id, kind, collateral, beneficiary)
        reward = host.balance(TASK) - balance_before
        for member in beneficiaries:
            host.transfer(TASK, member, reward // len(beneficiaries))
        if reward % max(1, len(beneficiaries)):
            self._burn(host, task_id, reward % len(beneficiaries))  # dust: Task holds only escrows
        event = "CheckpointRejected" if kind == Penalty.REJECTED else "CheckpointMissed"
        self.emit(host, event, taskId=task_id, k=k, executor=executor, penalty=penalty)
        AddressSet(store, f"barred/{task_id}").add(executor)
        accepted = store.get("accepted", task_id)
        self._release_council(host, store, task_id, accepted + 1)
        for later in range(accepted + 1, store.get("committed", task_id) + 1):
            # Void the commitment; a new round number keeps this council's pending deadlines stale.
            store.set("ck", task_id, later, "phase", value=Phase.NONE)
            store.set("ck", task_id, later, "revealed", value=0)
            store.add("ck", task_id, later, "round", delta=1)
            store.set("ck", task_id, later, "inconclusive", value=0)
        store.set("committed", task_id, value=accepted)
        self._reassign(host, store, task_id, executor)

    def _reassign(self, host: Host, store: Storage, task_id: int, previous: bytes) -> None:
        barred = AddressSet(store, f"barred/{task_id}")
        history = AddressSet(store, f"history/{task_id}")
        client = store.get_address("client", task_id)
        for price, _, provider in self.bid.ranked(host, task_id):
            if provider in barred or provider in history or provider == client:
                continue
            collateral = self.bid.collateral_for(price)
            if self.stake.free_stake(host, provider) < collateral or not self.stake.stakeOf(host, provider)[4] & Role.PROVIDER:
                continue
            self.stake.lock(host, provider, collateral)
            accepted = store.get("accepted", task_id)
            store.set_address("executor", task_id, value=provider)
            store.set("price", task_id, value=price)
            store.set("collateral", task_id, value=collateral)
            store.set("runStart", task_id, value=host.timestamp)
            store.set("runBase", task_id, value=accepted)
            store.add("generation", task_id, delta=1)
            store.set("state", task_id, value=TaskState.RUNNING)
            self._schedule_expiry(host, store, task_id, accepted + 1)
            self.emit(
                host, "ExecutorReplaced", taskId=task_id, previous=previous, executor=provider, price=price,
                resumeFrom=accepted,
            )
            return
        self.cancel(host, task_id, CancelReason.NO_REPLACEMENT, executor_at_fault=True)

    def confirm(self, host: Host, task_id: int) -> None:
        self._awaiting(host, task_id)
        self._settle_task(host, task_id, Outcome.CONFIRMED)

    def dispute(self, host: Host, task_id: int) -> None:
        store = self._awaiting(host, task_id)
        k = self._term(store, task_id, "checkpoints")
        store.set("state", task_id, value=TaskState.DISPUTED)
        store.add("ck", task_id, k, "round", delta=1)
        store.set("ck", task_id, k, "inconclusive", value=0)
        store.set("ck", task_id, k, "phase", value=Phase.COMMITTED)
        self._schedule_draw(host, store, task_id, k)
        self.emit(host, "TaskDisputed", taskId=task_id)

    def _awaiting(self, host: Host, task_id: int) -> Storage:
        store = self._existing(host, task_id)
        if host.caller != store.get_address("client", task_id):
            raise Revert("Task: caller is not the client")
        if store.get("state", task_id) != TaskState.AWAITING_CONFIRMATION:
            raise Revert("Task: task is not awaiting confirmation")
        if host.timestamp >= store.get("confirmDeadline", task_id):
            raise Revert("Task: the confirmation window has closed")
        return store

    def auto_confirm(self, host: Host, task_id: int) -> None:
        store = self.storage(host)
        if store.get("state", task_id) == TaskState.AWAITING_CONFIRMATION and host.timestamp >= store.get(
            "confirmDeadline", task_id
        ):
            self._settle_task(host, task_id, Outcome.CONFIRMED)

    def _settle_dispute(self, host: Host, store: Storage, task_id: int, executor_lost: bool, majority: list[bytes]) -> None:
        if executor_lost:
            executor = store.get_address("executor", task_id)
            collateral = store.get("collateral", task_id)
            self.stake.unlock(host, executor, collateral)
            store.set("collateral", task_id, value=0)
            self.slashing.penalize(
                host, executor, task_id, Penalty.REJECTED, collateral, store.get_address("client", task_id)
            )
            self._settle_task(host, task_id, Outcome.EXECUTOR_LOST)
            return
        # The client's deposit pays the council that upheld the work; the rest is burned.
        deposit = store.get("deposit", task_id)
        fee = deposit * self.config.reporter_share_bps // BPS // len(majority)
        for member in majority:
            host.transfer(TASK, member, fee)
        self._burn(host, task_id, deposit - fee * len(majority))
        store.set("deposit", task_id, value=0)
        self._settle_task(host, task_id, Outcome.CLIENT_LOST)

    def _burn(self, host: Host, task_id: int, amount: int) -> None:
        if amount:
            host.burn(TASK, amount)
            self.emit(host, "FundsBurned", taskId=task_id, amount=amount)

    def _settle_task(self, host: Host, task_id: int, outcome: int) -> None:
        """Refund escrow − Σ paid and the deposit; release the executor's collateral."""
        store = self.storage(host)
        refund = store.get("escrow", task_id) + store.get("deposit", task_id)
        store.set("escrow", task_id, value=0)
        store.set("deposit", task_id, value=0)
        self.stake.unlock(host, store.get_address("executor", task_id), store.get("collateral", task_id))
        store.set("collateral", task_id, value=0)
        store.set("state", task_id, value=TaskState.SETTLED)
        host.transfer(TASK, store.get_address("client", task_id), refund)
        self.emit(host, "TaskSettled", taskId=task_id, outcome=outcome, refund=refund, paid=store.get("paid", task_id))


# The apps imported these names from here before the protocol's constants had one table; they
# resolve to its enum members until every importer reads ogpu_node.types.protocol directly.
_LEGACY = {
    "PHASE": Phase, "STATE": TaskState, "DEADLINE": DeadlineKind, "CANCEL": CancelReason,
    "OUTCOME": Outcome, "PENALTY": Penalty,
}


def __getattr__(name: str) -> object:
    prefix, _, member = name.partition("_")
    enum = _LEGACY.get(prefix)
    if enum is None or member not in enum.__members__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return enum[member]
