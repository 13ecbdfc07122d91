"""A batch task's history from its Task events: each checkpoint's verdicts and reveals, the executor
changes, the payments and how the task ended; the training-loss curve its checkpoints record; and the
anomaly agents' flags on its checkpoints (docs/tasks.md "Anomaly agents")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ogpu_node.apps.anomalies import loss_tolerance, metadata_divergence
from ogpu_node.apps.client.blobs import BlobClient
from ogpu_node.apps.client.errors import BadCheckpoint, ClientError
from ogpu_node.apps.client.results import checkpoint_metadata, mean_recent_loss
from ogpu_node.apps.client.rpc import TASK_ADDRESS, Rpc
from ogpu_node.types.prescription import MAX_PRESCRIPTION_BYTES, InvalidPrescription, Prescription

__all__ = [
    "CheckpointHistory", "ExecutorChange", "LossPoint", "TaskHistory", "Verdict", "build_history", "loss_curve",
    "task_anomalies", "task_events",
]

HISTORY_EVENTS = ("TaskSubmitted", "TaskAssigned", "ExecutorReplaced", "CheckpointRevealed", "ResultRevealed",
                  "CheckpointAccepted", "CheckpointRejected", "CheckpointMissed", "CheckpointInconclusive",
                  "TaskCancelled", "TaskSettled")
LOG_WINDOW = 100_000  # blocks per eth_getLogs call: the node's range limit (docs/rpc.md)
MAX_CHECKED_BYTES = 1 << 28  # a checkpoint larger than this is not downloaded for the anomaly checks
CHECKED_CHECKPOINTS = 4  # task status checks the latest checkpoints only: a status must stay quick


@dataclass(frozen=True)
class Verdict:
    """One decision on checkpoint k: `accepted` (with its payments and the hash accepted), `rejected` or
    `missed` (the executor slashed by `penalty`), or an `inconclusive` council round."""

    k: int
    kind: str
    block: int
    checkpoint_hash: bytes | None = None
    executor: str | None = None
    executor_paid: int = 0
    council_paid: int = 0
    discount: int = 0
    penalty: int = 0
    round: int | None = None


@dataclass(frozen=True)
class ExecutorChange:
    """The task assigned (`previous` None) or re-assigned, resuming after checkpoint `resume_from`."""

    block: int
    executor: str
    price: int
    previous: str | None = None
    resume_from: int = 0


@dataclass(frozen=True)
class CheckpointHistory:
    k: int
    verdicts: tuple[Verdict, ...] = ()
    revealed: bytes | None = None  # the latest H(ckpt_k) the executor revealed
    results: tuple[tuple[str, bytes], ...] = ()  # (member, H(its re-run)) revealed since that reveal

    @property
    def accepted(self) -> Verdict | None:
        return next((v for v in reversed(self.verdicts) if v.kind == "accepted"), None)

    @property
    def shown_hash(self) -> bytes | None:
        """The hash accepted, else the latest revealed."""
        accepted = self.accepted
        return accepted.checkpoint_hash if accepted and accepted.checkpoint_hash else self.revealed


@dataclass(frozen=True)
class TaskHistory:
    task_id: int
    checkpoints: tuple[CheckpointHistory, ...]  # k = 1..K
    executors: tuple[ExecutorChange, ...]
    executor_paid: int
    council_paid: int
    discounts: int
    cancel_reason: int | None = None  # TaskCancelled: a protocol.CancelReason
    outcome: int | None = None  # TaskSettled: a protocol.Outcome
    refund: int | None = None  # of either

    @property
    def paid(self) -> int:
        return self.executor_paid + self.council_paid


@dataclass(frozen=True)
class LossPoint:
    """The mean of checkpoint k's `recent_losses` (None: no loss data), and whether k is accepted yet."""

    k: int
    step: int | None
    loss: float | None
    accepted: bool


def build_history(task_id: int, checkpoints: int, events: list[tuple[str, dict[str, Any], int]]) -> TaskHistory:
    """Fold a task's Task events, in chain order, as (name, args, block number), into its history."""
    verdicts: dict[int, list[Verdict]] = {k: [] for k in range(1, checkpoints + 1)}
    revealed: dict[int, bytes] = {}
    results: dict[int, list[tuple[str, bytes]]] = {}
    executors: list[ExecutorChange] = []
    ended: dict[str, int] = {}
    for name, a, block in events:
        k = a.get("k", 0)
        if name == "TaskAssigned":
            executors.append(ExecutorChange(block, a["executor"], a["price"]))
        elif name == "ExecutorReplaced":
            executors.append(ExecutorChange(block, a["executor"], a["price"], a["previous"], a["resumeFrom"]))
        elif name == "CheckpointRevealed":
            revealed[k] = bytes(a["checkpointHash"])
            results[k] = []  # a new executor's checkpoint: earlier re-runs checked another one
        elif name == "ResultRevealed":
            if any(a["resultHash"]):
                results.setdefault(k, []).append((str(a["member"]), bytes(a["resultHash"])))
        elif name == "CheckpointAccepted":
            verdicts.setdefault(k, []).append(Verdict(
                k, "accepted", block, checkpoint_hash=revealed.get(k), executor_paid=a["executorPaid"],
                council_paid=a["councilPaid"], discount=a["discount"]))
        elif name in ("CheckpointRejected", "CheckpointMissed"):
            kind = "rejected" if name == "CheckpointRejected" else "missed"
            verdicts.setdefault(k, []).append(Verdict(
                k, kind, block, checkpoint_hash=revealed.get(k), executor=a["executor"], penalty=a["penalty"]))
        elif name == "CheckpointInconclusive":
            verdicts.setdefault(k, []).append(Verdict(k, "inconclusive", block, round=a["round"]))
        elif name == "TaskCancelled":
            ended = {"cancel_reason": a["reason"], "refund": a["refund"]}
        elif name == "TaskSettled":
            ended = {"outcome": a["outcome"], "refund": a["refund"]}
    accepted = [v for vs in verdicts.values() for v in vs if v.kind == "accepted"]
    return TaskHistory(
        task_id=task_id,
        checkpoints=tuple(CheckpointHistory(k, tuple(vs), revealed.get(k), tuple(results.get(k, ())))
                          for k, vs in sorted(verdicts.items())),
        executors=tuple(executors), executor_paid=sum(v.executor_paid for v in accepted),
        council_paid=sum(v.council_paid for v in accepted), discounts=sum(v.discount for v in accepted), **ended,
    )


def task_events(rpc: Rpc, task_id: int) -> list[tuple[str, dict[str, Any], int]]:
    """The Task events carrying ``task_id``, in chain order, as (name, args, block): read back from the
    head, `LOG_WINDOW` blocks at a time, until its TaskSubmitted."""
    events = {rpc.task.events[name].topic: rpc.task.events[name]() for name in HISTORY_EVENTS}
    submitted = rpc.task.events["TaskSubmitted"].topic
    task_topic = "0x" + task_id.to_bytes(32, "big").hex()
    logs: list[Any] = []
    last = rpc.head()
    while last >= 0:
        first = max(0, last - LOG_WINDOW + 1)
        batch = rpc.get_logs("eth_getLogs", {
            "address": TASK_ADDRESS, "fromBlock": first, "toBlock": last, "topics": [None, task_topic]})
        logs[:0] = batch
        if any("0x" + bytes(log["topics"][0]).hex() == submitted for log in batch):
            break
        last = first - 1
    decoded = []
    for log in logs:
        event = events.get("0x" + bytes(log["topics"][0]).hex())
        if event is not None:
            data = event.process_log(log)
            decoded.append((data["event"], dict(data["args"]), int(log["blockNumber"])))
    return decoded


def checkpoint_meta(blobs: BlobClient, checkpoint_hash: bytes) -> dict[str, Any]:
    """The `ogpu` metadata of a checkpoint blob, fetching only its header. Display only (not hash-checked)."""
    try:
        return checkpoint_metadata(blobs.fetch_header(checkpoint_hash))
    except BadCheckpoint as exc:
        raise BadCheckpoint(f"checkpoint 0x{checkpoint_hash.hex()}: {exc}") from None


def loss_curve(blobs: BlobClient, history: TaskHistory) -> list[LossPoint]:
    """Per checkpoint with a hash (the accepted one, else the latest revealed): the mean recent training
    loss from its header. A checkpoint whose blob the node lacks gets loss None."""
    points = []
    for c in history.checkpoints:
        ckpt_hash = c.shown_hash
        if ckpt_hash is None:
            continue
        try:
            meta = checkpoint_meta(blobs, ckpt_hash)
        except ClientError:
            meta = {}
        step = meta.get("step")
        points.append(LossPoint(c.k, step if isinstance(step, int) else None, mean_recent_loss(meta),
                                c.accepted is not None))
    return points


def task_anomalies(blobs: BlobClient, prescription_hash: bytes, history: TaskHistory) -> list[str]:
    """The anomaly agents' flags on a task's checkpoints, each naming its checkpoint: for every
    checkpoint with a hash (`shown_hash`), NaN/Inf in its tensors or a weight norm that grew more than
    `compute.anomaly.NORM_GROWTH_LIMIT` times since the checkpoint before it (none before checkpoint
    1: the client has no step-0 state), and its `recent_losses` against those of each council member's
    re-run that is published as a blob, under the prescription's tolerance. Checkpoints are
    downloaded whole and hash-checked (up to MAX_CHECKED_BYTES); one the node lacks, or a larger one,
    is not checked, and neither is the next one's norm. Only the latest CHECKED_CHECKPOINTS with a hash
    are checked (and the one before them read for the norm), so a status of a long task stays quick."""
    from ogpu_node.compute.anomaly import checkpoint_anomalies
    from ogpu_node.compute.tensorfile import TensorFileError, ogpu_metadata

    try:
        e = Prescription.from_json(blobs.fetch_blob(prescription_hash, MAX_PRESCRIPTION_BYTES)).e
        rtol, atol = loss_tolerance(e)
    except (ClientError, InvalidPrescription):
        rtol = atol = None  # without its tolerance, no loss comparison
    flags: list[str] = []
    previous: bytes | None = None
    hashed = [c.k for c in history.checkpoints if c.shown_hash is not None]
    first = hashed[-CHECKED_CHECKPOINTS] if len(hashed) >= CHECKED_CHECKPOINTS else 1
    for c in history.checkpoints:
        if c.k < first - 1:
            continue
        digest = c.shown_hash
        data = None
        if digest is not None:
            try:
                data = blobs.fetch_blob(digest, MAX_CHECKED_BYTES)
            except ClientError:
                pass
        if digest is None or data is None:
            previous = None
            continue
        if c.k < first:  # read only for the norm check of the first one checked
            previous = data
            continue
        label = f"checkpoint {c.k} (0x{digest.hex()})"
        flags += checkpoint_anomalies(previous, data, label)
        previous = data
        if rtol is None or atol is None:
            continue
        try:
            meta = ogpu_metadata(data)
        except TensorFileError:
            continue  # checkpoint_anomalies flagged it
        flag = _loss_flag(blobs, meta, c.results, rtol, atol)
        if flag is not None:
            flags.append(f"{label}: {flag}")
    return flags


def _loss_flag(blobs: BlobClient, meta: dict[str, Any], results: tuple[tuple[str, bytes], ...], rtol: float,
               atol: float) -> str | None:
    """The first council member's published re-run whose losses the executor's diverge from (its header
    only, display only: not hash-checked)."""
    for member, result in results:
        try:
            theirs = checkpoint_meta(blobs, result)
        except ClientError:
            continue  # not published (exact members publish only its hash)
        flag = metadata_divergence(meta, theirs, rtol, atol)
        if flag is not None:
            return f"{flag} (member {member})"
    return None
