"""The executor's work on a task (docs/tasks.md, "Executing"), as the service carries it out:

- `train`: every remaining segment in the job's own worker process, one after another without
  waiting for the chain, each checkpoint written to the datadir and reported (`CheckpointTrained`)
  so that the decision core orders its commit;
- `commit` and `reveal`: one protocol step each, retried until its on-chain deadline, done when the
  chain shows it (`progress.committed ≥ k`; `checkpoint(k).checkpoint_hash` = ours).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ogpu_node.apps.provider.chain import ChainClient
from ogpu_node.apps.provider.concurrency import blocking
from ogpu_node.apps.provider.context import TaskContext
from ogpu_node.apps.provider.messages import CheckpointTrained, TrainingEnded
from ogpu_node.apps.provider.retry import persist
from ogpu_node.apps.provider.store import ProviderFiles
from ogpu_node.contracts.commitments import checkpoint_commitment
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import segment_bounds

if TYPE_CHECKING:
    from ogpu_node.compute import Fault, SegmentRun, Worker

log = logging.getLogger("ogpu.provider")


@dataclass
class JobRecord:
    """One executor job's timeline, for logs and benchmarks."""

    started_at: float = field(default_factory=time.monotonic)  # when the assignment was seen
    segments: list[SegmentRun] = field(default_factory=list)  # timings (checkpoint bytes dropped)
    committed_at: dict[int, float] = field(default_factory=dict)
    error: str | None = None


def kept_checkpoint(chain: ChainClient, files: ProviderFiles, task_id: int, k: int) -> bytes | None:
    """ckpt_k from the datadir if it opens k's on-chain commitment (else None: retrain it; the same
    state and seed give the same bytes)."""
    data = files.load_checkpoint(task_id, k)
    if data is None:
        return None
    commitment = bytes(chain.checkpoint(task_id, k).commitment)
    mine = checkpoint_commitment(task_id, k, account_bytes(chain), merkle_root(data))
    return data if mine == commitment else None


async def train(chain: ChainClient, files: ProviderFiles, ctx: TaskContext, worker: Worker,
                report: trio.MemorySendChannel[Any], record: JobRecord, *, resume_from: int, committed: int,
                start: bytes | None, fault: Fault | None) -> None:
    """Train segments resume_from + 1 … K; a failure ends the training (the chain counts the missed
    checkpoint) and is reported as `TrainingEnded(error)`."""
    task_id, p = ctx.task_id, ctx.prescription
    state = start if resume_from else ctx.initial
    error = None
    try:
        for k in range(resume_from + 1, ctx.checkpoints + 1):
            if k <= committed and (kept := await blocking(kept_checkpoint, chain, files, task_id, k)) is not None:
                state = kept  # committed before a restart, and its file matches the commitment
                await report.send(CheckpointTrained(task_id, k, await blocking(merkle_root, kept)))
                continue
            first, last = segment_bounds(p, k)
            run = await blocking(worker.train, ctx.spec, state, last - first, fault=fault)
            state = run.checkpoint
            digest = await blocking(merkle_root, state)
            await blocking(files.save_checkpoint, task_id, k, state)
            record.segments.append(run._replace(checkpoint=b""))
            mean = sum(run.losses) / len(run.losses) if run.losses else float("nan")
            log.info("task %d: trained checkpoint %d/%d (steps %d-%d, loss %.4f, %.1fs)%s", task_id, k,
                     ctx.checkpoints, first, last, mean, run.wall_s, f" with fault {fault.kind}" if fault else "")
            await report.send(CheckpointTrained(task_id, k, digest))
    except Exception as exc:  # noqa: BLE001 — any failure ends this job only, with its reason
        error = record.error = str(exc)
        log.error("task %d: executor stopped: %s", task_id, exc)
    await report.send(TrainingEnded(task_id, error))


def account_bytes(chain: ChainClient) -> bytes:
    """This provider's address as the 20 bytes commitments bind."""
    return bytes.fromhex(chain.address.removeprefix("0x"))


async def chain_now(chain: ChainClient) -> int:
    return await blocking(chain.timestamp)


async def commit(chain: ChainClient, task_id: int, k: int, digest: bytes) -> None:
    """commitCheckpoint(k, keccak(taskId, k, executor, H(ckpt_k))) until checkpoint k's last moment:
    its due time (runStart + (k − runBase)·window) plus one window of grace."""
    commitment = checkpoint_commitment(task_id, k, account_bytes(chain), digest)
    what = f"task {task_id}: commitCheckpoint {k}"

    async def deadline() -> int:
        progress = await blocking(chain.progress, task_id)
        window = (await blocking(chain.terms, task_id)).segment_window
        return progress.run_start + (k - progress.run_base) * window + window

    async def done() -> bool:
        return (await blocking(chain.progress, task_id)).committed >= k

    await persist(what, lambda: blocking(chain.send, what, chain.task.functions.commitCheckpoint(task_id, k, commitment)),
                  now=lambda: chain_now(chain), deadline=deadline, done=done)


async def reveal(chain: ChainClient, files: ProviderFiles, task_id: int, k: int, digest: bytes) -> None:
    """Publish ckpt_k (PUT /blobs) and revealCheckpoint(k, H(ckpt_k)), each until k's phase ends."""
    blob = await blocking(files.load_checkpoint, task_id, k)
    if blob is None:
        raise OSError(f"checkpoint {k} of task {task_id} is not in {files.checkpoint_path(task_id, k)}")

    async def phase_end() -> int:
        return (await blocking(chain.checkpoint, task_id, k)).phase_ends

    async def done() -> bool:
        return bytes((await blocking(chain.checkpoint, task_id, k)).checkpoint_hash) == digest

    now = lambda: chain_now(chain)  # noqa: E731
    await persist(f"task {task_id}: publish checkpoint {k}",
                  lambda: blocking(chain.put_blob, f"checkpoint {k} of task {task_id}", blob), now=now, deadline=phase_end)
    what = f"task {task_id}: revealCheckpoint {k}"
    await persist(what, lambda: blocking(chain.send, what, chain.task.functions.revealCheckpoint(task_id, k, digest)),
                  now=now, deadline=phase_end, done=done)


__all__ = ["JobRecord", "account_bytes", "chain_now", "commit", "kept_checkpoint", "reveal", "train"]
