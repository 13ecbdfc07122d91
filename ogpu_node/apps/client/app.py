"""The client app: upload blobs, submit a batch task from a prescription, read its state, confirm or
dispute it, fetch its result. It talks to a node over JSON-RPC (web3.py) and the blob HTTP endpoint
only (`rpc`, `blobs`), reads the chain through typed views (`views`), and signs every transaction
locally with the client's key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from web3.logs import DISCARD

from ogpu_node.apps.client.blobs import BlobClient, Progress
from ogpu_node.apps.client.errors import BadCheckpoint, ClientError, NodeError, NoResult, WaitTimeout
from ogpu_node.apps.client.history import (
    LossPoint,
    TaskHistory,
    build_history,
    checkpoint_meta,
    loss_curve,
    task_events,
)
from ogpu_node.apps.client.results import extract_weights
from ogpu_node.apps.client.rpc import Rpc
from ogpu_node.apps.client.views import ChainViews
from ogpu_node.types.prescription import (
    InvalidPrescription,
    Prescription,
    check_against_chain,
    prescription_hash,
    to_terms,
)
from ogpu_node.types.protocol import DEVICE_KINDS, Outcome, Phase, Role, TaskKind, TaskState, profile_id

__all__ = ["CheckpointStatus", "Client", "TaskStatus"]


def label(enum: type[IntEnum], value: int) -> str:
    """The enum member's label, or the bare number for a value this client does not know (a newer chain)."""
    try:
        return enum(value).label  # type: ignore[attr-defined]
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class CheckpointStatus:
    k: int
    phase: str
    round: int
    phase_ends: int
    council: tuple[str, ...]


@dataclass(frozen=True)
class TaskStatus:
    task_id: int
    client: str
    kind: int
    state: str  # TaskState's label (`Running`); `state_code` is the number
    prescription_hash: bytes
    escrow: int
    deposit: int
    executor: str | None
    price: int
    bid_deadline: int
    assigned_at: int
    checkpoints: int
    bids: tuple[tuple[str, int], ...]
    accepted: int
    committed: int
    paid: int
    confirm_deadline: int
    checkpoint: CheckpointStatus | None = field(default=None)
    state_code: int = 0

    def result_ready(self) -> bool:
        """Whether the final checkpoint is accepted; NoResult if the task was cancelled and never will be."""
        if self.state_code == TaskState.CANCELLED:
            raise NoResult(f"task {self.task_id} was cancelled with {self.accepted}/{self.checkpoints} checkpoints "
                           "accepted: it has no result")
        done = self.state_code in (TaskState.AWAITING_CONFIRMATION, TaskState.SETTLED)
        return done and self.accepted == self.checkpoints


class Client:
    """A client of one node at ``rpc_url``; ``private_key`` is needed only to send transactions."""

    def __init__(self, rpc_url: str, private_key: bytes | None = None, *, timeout: float = 30.0) -> None:
        self.rpc = Rpc(rpc_url, private_key, timeout=timeout)
        self.views = ChainViews(self.rpc)
        self.blobs = BlobClient(self.rpc.rpc_url, timeout, self.rpc.sign_blob_upload)
        self.rpc_url, self.timeout = self.rpc.rpc_url, timeout
        self.w3, self.account = self.rpc.w3, self.rpc.account
        self.task, self.bid, self.stake = self.rpc.task, self.rpc.bid, self.rpc.stake

    # -- transport (see rpc.Rpc, blobs.BlobClient) --

    def guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.rpc.guard(what, fn, *args, **kwargs)

    def send(self, what: str, call: Any, value: int = 0, min_gas: int = 0) -> Any:
        return self.rpc.send(what, call, value, min_gas)

    def upload_blob(self, path: Path, progress: Progress | None = None) -> tuple[bytes, int]:
        return self.blobs.upload_blob(path, progress)

    def upload_bytes(self, name: str, data: bytes) -> tuple[bytes, int]:
        return self.blobs.upload_bytes(name, data)

    def fetch_blob(self, blob_hash: bytes, max_bytes: int = 1 << 31) -> bytes:
        return self.blobs.fetch_blob(blob_hash, max_bytes)

    def download_blob(self, blob_hash: bytes, out_path: Path, progress: Progress | None = None) -> int:
        return self.blobs.download_blob(blob_hash, out_path, progress)

    # -- providers --

    def register_provider(self, device: str, memory_mib: int, score: int, endpoint: str = "",
                          stake: int | None = None, min_gas: int = 0, profiles: tuple[str, ...] = ()) -> int:
        """Stake up to ``stake`` wei (default: the chain's provider minimum), register resources and
        take the provider role, as Stake requires in that order, and register the numeric
        ``profiles`` (names) when they differ from those on chain; return the wei newly staked."""
        fns = self.stake.functions
        mine = self.views.stake_of(self.rpc.address())
        wanted = self.views.stake_params().min_provider_stake if stake is None else stake
        added = max(0, wanted - mine.staked)
        if added:
            self.send("stake", fns.stake(), value=added, min_gas=min_gas)
        self.send("registerResources", fns.registerResources(DEVICE_KINDS.index(device), memory_mib, score, endpoint),
                  min_gas=min_gas)
        if not mine.roles & Role.PROVIDER:
            self.send("setRoles", fns.setRoles(int(mine.roles | Role.PROVIDER)), min_gas=min_gas)
        wanted_profiles = [profile_id(name) for name in profiles]
        if profiles and self.views.profiles_of(self.rpc.address()) != wanted_profiles:
            self.send("setProfiles", fns.setProfiles(wanted_profiles), min_gas=min_gas)
        return added

    def qualifying_providers(self, p: Prescription) -> int:
        """Providers other than this client whose registered resources meet ``p``'s hardware terms:
        the pool a council is drawn from (the executor, one of them, never sits on its own)."""
        me = self.account.address.lower() if self.account is not None else None
        mask = p.I.hardware.device_mask
        profile = p.I.numeric_profile
        count = 0
        for provider in self.views.providers():
            if provider.lower() == me:
                continue
            roles = self.views.stake_of(provider).roles
            resources = self.views.resources_of(provider)
            if (roles & Role.PROVIDER and resources.memory_mib >= p.I.hardware.min_memory_mib
                    and (not mask or mask >> resources.device_kind & 1)
                    and (profile is None or profile_id(profile) in self.views.profiles_of(provider))):
                count += 1
        return count

    # -- tasks --

    def check_against_chain(self, p: Prescription) -> None:
        """What only the chain can refuse before any upload or payment: a council larger than the
        qualifying providers (ClientError naming `prescription.I.council_size`)."""
        try:
            check_against_chain(p, self.qualifying_providers(p), p.I.max_payment)
        except InvalidPrescription as exc:
            raise ClientError(str(exc)) from None

    def minimum_deposit(self, p: Prescription) -> int:
        """The safety deposit Task requires for ``p`` (Task.minimumDeposit of its max payment)."""
        return self.views.minimum_deposit(p.I.max_payment)

    def submit_task(self, p: Prescription, deposit: int | None = None) -> tuple[int, int]:
        """Submit batch task ``p`` with value = max payment + deposit (default: the chain's minimum);
        return (task id, deposit)."""
        if p.kind != "batch":
            raise ClientError("prescription.kind: only batch tasks can be submitted with `task submit` "
                              "(a stream: `ogpu-node stream submit`)")
        self.check_against_chain(p)
        if deposit is None:
            deposit = self.minimum_deposit(p)
        # Providers fetch the document by the hash the chain records.
        self.upload_bytes("the prescription", p.canonical_json())
        call = self.task.functions.submitTask(prescription_hash(p), int(TaskKind.BATCH), to_terms(p))
        receipt = self.send("submitTask", call, value=p.I.max_payment + deposit)
        events = self.task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)
        if not events:
            raise NodeError("submitTask: no TaskSubmitted event in the receipt")
        return int(events[0]["args"]["taskId"]), deposit

    def confirm(self, task_id: int) -> Any:
        return self.send("confirm", self.task.functions.confirm(task_id))

    def dispute(self, task_id: int) -> Any:
        return self.send("dispute", self.task.functions.dispute(task_id))

    # -- reads --

    def status(self, task_id: int) -> TaskStatus:
        """The task's record, terms, bids and progress, and the checkpoint now under way."""
        self.views.require_task(task_id)
        task = self.views.task(task_id)
        checkpoints = self.views.terms(task_id).checkpoints
        bids = self.views.bids(task_id)
        progress = self.views.progress(task_id)
        checkpoint = None
        ended = (TaskState.NONE, TaskState.BIDDING, TaskState.CANCELLED, TaskState.SETTLED)
        if task.kind == TaskKind.BATCH and progress.accepted < checkpoints and task.state not in ended:
            k = progress.accepted + 1
            c = self.views.checkpoint(task_id, k)
            checkpoint = CheckpointStatus(k, label(Phase, c.phase), c.round, c.phase_ends, tuple(c.council))
        return TaskStatus(
            task_id=task_id, client=task.client, kind=task.kind, state=label(TaskState, task.state),
            prescription_hash=task.prescription_hash, escrow=task.escrow, deposit=task.deposit,
            executor=None if int(task.executor, 16) == 0 else task.executor, price=task.price,
            bid_deadline=task.bid_deadline, assigned_at=task.assigned_at, checkpoints=checkpoints,
            bids=tuple(zip(bids.providers, bids.prices, strict=True)), accepted=progress.accepted,
            committed=progress.committed, paid=progress.paid, confirm_deadline=progress.confirm_deadline,
            checkpoint=checkpoint, state_code=task.state,
        )

    def checkpoint_history(self, task_id: int) -> TaskHistory:
        """Every checkpoint's verdicts, reveals and payments, the executor changes and the task's end, from
        the Task logs carrying ``task_id``."""
        self.views.require_task(task_id)
        checkpoints = self.views.terms(task_id).checkpoints
        return build_history(task_id, checkpoints, task_events(self.rpc, task_id))

    def checkpoint_metadata(self, checkpoint_hash: bytes) -> dict[str, Any]:
        """The `ogpu` metadata of a checkpoint blob, from its header only (display only: not hash-checked)."""
        return checkpoint_meta(self.blobs, checkpoint_hash)

    def loss_curve(self, history: TaskHistory) -> list[LossPoint]:
        return loss_curve(self.blobs, history)

    # -- results --

    def result(self, task_id: int, out_path: Path, checkpoint_path: Path | None = None,
               progress: Progress | None = None) -> bytes:
        """Download the accepted final checkpoint K by its on-chain hash, check it, and write its weights
        (`model/<name>` as `<name>`) to ``out_path``; keep the whole checkpoint at ``checkpoint_path`` if
        given. Returns H(ckpt_K)."""
        s = self.status(task_id)
        if not s.result_ready():
            raise NoResult(f"task {task_id} has no result yet: state {s.state}, "
                           f"{s.accepted}/{s.checkpoints} checkpoints accepted")
        if s.state_code == TaskState.SETTLED and self.checkpoint_history(task_id).outcome == Outcome.EXECUTOR_LOST:
            raise NoResult(f"task {task_id}: the final checkpoint was rejected on dispute: it has no result")
        ckpt_hash = self.views.checkpoint(task_id, s.checkpoints).checkpoint_hash
        if not any(ckpt_hash):
            raise BadCheckpoint(f"task {task_id}: checkpoint {s.checkpoints} has no revealed hash")
        out_path = Path(out_path)
        keep = Path(checkpoint_path) if checkpoint_path is not None else None
        target = keep or out_path.with_name(f".{out_path.name}.checkpoint")
        try:
            self.download_blob(ckpt_hash, target, progress)
            extract_weights(target, out_path, ckpt_hash)
        except OSError as exc:
            raise ClientError(f"cannot write {out_path}: {exc.strerror or exc}") from None
        finally:
            if keep is None:
                target.unlink(missing_ok=True)
        return ckpt_hash

    def wait_for_result(self, task_id: int, timeout: float | None = None, poll: float = 2.0,
                        progress: Callable[[TaskStatus], None] | None = None) -> TaskStatus:
        """Poll until the final checkpoint is accepted; ``progress`` gets each status. NoResult when the
        task is cancelled, WaitTimeout when ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status(task_id)
            if progress is not None:
                progress(s)
            if s.result_ready():
                return s
            if deadline is not None and time.monotonic() + poll > deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for task {task_id}: state {s.state}, "
                                  f"{s.accepted}/{s.checkpoints} checkpoints accepted")
            time.sleep(poll)
