"""What both roles need of a task: its prescription, data, seed and training spec, fetched from the
node once per task, at most two downloads at once (a burst of submissions must not fetch every
dataset together)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider.chain import ChainClient
from ogpu_node.apps.provider.concurrency import blocking
from ogpu_node.apps.provider.strategy import Job
from ogpu_node.compute.errors import ComputeError
from ogpu_node.types.prescription import (
    MAX_PRESCRIPTION_BYTES,
    InvalidPrescription,
    Prescription,
    segment_bounds,
    training_seed,
)

if TYPE_CHECKING:
    from ogpu_node.compute import TrainSpec

MAX_DATASET_BYTES = 1 << 30
DOWNLOADS = 2  # document downloads at once

Documents = tuple[Prescription, bytes, bytes | None]  # prescription, dataset, initial weights
# What a bad task document raises while it is fetched and read: a blob missing, too large or not
# matching its hash (the client's typed errors), a prescription that does not parse or check, data
# or weights that do not fit its model. The task is skipped with the reason; the provider goes on.
DOCUMENT_ERRORS = (ClientError, InvalidPrescription, ComputeError)


@dataclass(frozen=True)
class TaskContext:
    task_id: int
    prescription: Prescription
    spec: TrainSpec
    initial: bytes | None  # the step-0 checkpoint when M has initial weights

    @property
    def exact(self) -> bool:
        return self.prescription.e.kind == "exact"

    @property
    def checkpoints(self) -> int:
        assert self.prescription.I.checkpoints is not None  # a batch prescription has them
        return self.prescription.I.checkpoints


def fetch_documents(chain: ChainClient, prescription_hash: bytes) -> Documents:
    """The prescription (validated), its dataset and initial weights, each hash-checked by the download."""
    from ogpu_node.compute.prescription import validate

    p = validate(chain.get_blob(prescription_hash, max_bytes=MAX_PRESCRIPTION_BYTES))
    if p.D is None:
        raise InvalidPrescription("prescription.D", "required")
    weights = None if p.M.initial_weights is None else chain.get_blob(p.M.initial_weights, max_bytes=MAX_DATASET_BYTES)
    return p, chain.get_blob(p.D.blob, max_bytes=MAX_DATASET_BYTES), weights


def build_context(task_id: int, docs: Documents, seed: bytes) -> TaskContext:
    """The training spec from the chain's assignment seed; while bidding (no seed yet) a spec for
    estimates only, with the initial weights checked against the model from their header alone (a
    task whose weights cannot load is not bid on)."""
    from ogpu_node.compute import check_initial_weights, initial_checkpoint, spec_from_prescription

    p, dataset, weights = docs
    if seed == bytes(32):
        spec = spec_from_prescription(p, dataset, 0)
        if weights is not None:
            check_initial_weights(spec, weights)
        return TaskContext(task_id, p, spec, None)
    spec = spec_from_prescription(p, dataset, training_seed(p, seed))
    return TaskContext(task_id, p, spec, None if weights is None else initial_checkpoint(spec, weights))


def job_of(ctx: TaskContext) -> Job:
    """What the bidding strategy needs of a task: its requirements and estimated cost."""
    from ogpu_node.compute import estimate

    p = ctx.prescription
    est = estimate(p, len(ctx.spec.dataset))
    assert p.I.steps is not None and p.I.segment_window_s is not None
    longest = max(b - a for a, b in (segment_bounds(p, k) for k in range(1, ctx.checkpoints + 1)))
    return Job(devices=p.I.hardware.devices, numeric_profile=p.I.numeric_profile, memory_mib=est.memory_mib,
               total_flops=est.total_flops, segment_flops=est.flops_per_step * longest,
               segment_window_s=p.I.segment_window_s, max_payment=p.I.max_payment)


def flagged_job(p: Prescription, flags: list[str]) -> Job:
    """A task whose documents the anomaly agents flagged: no estimate (its data does not fit the model),
    only the flags, so the decision core logs them and does not bid."""
    assert p.I.segment_window_s is not None
    return Job(devices=p.I.hardware.devices, numeric_profile=p.I.numeric_profile, memory_mib=0.0, total_flops=0.0,
               segment_flops=0.0, segment_window_s=p.I.segment_window_s, max_payment=p.I.max_payment,
               anomalies=tuple(flags))


class TaskDocuments:
    """Each task's documents, fetched once (for the bid), and its final context once the chain has
    fixed the assignment seed. Only the service's trio tasks touch it."""

    def __init__(self, chain: ChainClient, downloads: int = DOWNLOADS) -> None:
        self.chain = chain
        self.downloads = trio.CapacityLimiter(downloads)
        self._documents: dict[int, Documents] = {}
        self._contexts: dict[int, TaskContext] = {}
        self._ended: set[int] = set()

    def dataset_flags(self, task_id: int) -> tuple[Prescription, list[str]] | None:
        """The anomaly agents' flags on a fetched task's dataset (docs/tasks.md, "Anomaly agents")."""
        from ogpu_node.compute.anomaly import dataset_anomalies

        docs = self._documents.get(task_id)
        if docs is None:
            return None
        return docs[0], dataset_anomalies(docs[0], docs[1])

    async def context(self, task_id: int, prescription_hash: bytes | None = None) -> TaskContext:
        if (ctx := self._contexts.get(task_id)) is not None:
            return ctx
        record = await blocking(self.chain.task_record, task_id)
        phash, seed = bytes(record.prescription_hash), bytes(record.seed)
        if prescription_hash is not None and phash != prescription_hash:
            raise ClientError(f"task {task_id}: the chain's prescription hash changed")
        docs = self._documents.get(task_id)
        if docs is None:
            async with self.downloads:
                docs = await blocking(fetch_documents, self.chain, phash)
            if task_id not in self._ended:  # a task that ended meanwhile keeps nothing
                self._documents[task_id] = docs
        ctx = await blocking(build_context, task_id, docs, seed)
        if seed != bytes(32) and task_id not in self._ended:
            self._contexts[task_id] = ctx
        return ctx

    def forget(self, task_id: int) -> None:
        """The task ended: drop its documents (its dataset may be large)."""
        self._ended.add(task_id)
        self._documents.pop(task_id, None)
        self._contexts.pop(task_id, None)


__all__ = ["DOCUMENT_ERRORS", "MAX_DATASET_BYTES", "TaskContext", "TaskDocuments", "build_context", "fetch_documents",
           "job_of"]
