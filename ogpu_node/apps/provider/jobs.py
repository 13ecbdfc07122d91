"""A provider's two kinds of work on a batch task (DESIGN.md §6):

- `ExecutorJob`: trains the task from the chain's seed, segment after segment, in a worker process,
  committing each checkpoint as it reaches it and revealing (publishing the blob) when the protocol
  asks: under `exact` once the council has committed, under `allclose` once the council is drawn.
- `CouncilDuty`: one seat on checkpoint k's council: re-run segment k from the executor's revealed
  ckpt_{k-1}, then commit and reveal. Under `exact` the commitment binds the result hash and the
  state hash at the drawn step; under `allclose` the verdict after comparing with the published blob.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ogpu_node.apps.client import ClientError
from ogpu_node.contracts.checkpoints import (
    PHASE_COUNCIL_COMMIT,
    PHASE_REVEAL,
    checkpoint_commitment,
    exact_result_commitment,
    verdict_commitment,
)
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, drawn_step, segment_bounds

if TYPE_CHECKING:
    from ogpu_node.apps.provider.chain import ChainClient
    from ogpu_node.compute import Fault, SegmentRun, TrainSpec, Worker

log = logging.getLogger("ogpu.provider")
_GRACE_S = 5.0  # beyond an on-chain deadline before a wait gives up (blocks may lag the clock)


@dataclass(frozen=True)
class TaskContext:
    """What both roles need of a task: its prescription, data, seed and training spec."""

    task_id: int
    prescription: Prescription
    spec: TrainSpec
    initial: bytes | None  # the step-0 checkpoint when M has initial weights

    @property
    def exact(self) -> bool:
        return self.prescription.e.kind == "exact"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ExecutorJob(threading.Thread):
    def __init__(self, chain: ChainClient, ctx: TaskContext, worker: Worker, workdir: Path, *,
                 resume_from: int = 0, start: bytes | None = None, fault: Fault | None = None) -> None:
        super().__init__(name=f"executor-{ctx.task_id}", daemon=True)
        self.chain, self.ctx, self.worker, self.workdir = chain, ctx, worker, workdir
        self.resume_from, self.start_state, self.fault = resume_from, start, fault
        self.stopped = threading.Event()
        self._ready = threading.Condition()
        self._hashes: dict[int, bytes] = {}
        self._revealed: set[int] = set()
        self._pending: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self.segments: list[SegmentRun] = []  # timings of each trained segment (checkpoint bytes dropped)
        self.started_at = time.monotonic()
        self.committed_at: dict[int, float] = {}
        self.error: str | None = None

    def _path(self, k: int) -> Path:
        return self.workdir / f"ckpt-{k}.safetensors"

    def run(self) -> None:
        # Commits go out from a second thread so training never waits for a block.
        committer = threading.Thread(target=self._commit_loop, name=f"commit-{self.ctx.task_id}", daemon=True)
        committer.start()
        try:
            self._train()
        finally:
            self._pending.put(None)
            committer.join()

    def _train(self) -> None:
        p, task_id = self.ctx.prescription, self.ctx.task_id
        assert p.I.checkpoints is not None
        state = self.start_state if self.resume_from else self.ctx.initial
        try:
            for k in range(self.resume_from + 1, p.I.checkpoints + 1):
                if self.stopped.is_set():
                    return
                first, last = segment_bounds(p, k)
                run = self.worker.train(self.ctx.spec, state, last - first, fault=self.fault)
                state = run.checkpoint
                digest = merkle_root(state)
                _write_atomic(self._path(k), state)
                self.segments.append(run._replace(checkpoint=b""))
                mean = sum(run.losses) / len(run.losses) if run.losses else float("nan")
                log.info("task %d: trained checkpoint %d/%d (steps %d-%d, loss %.4f, %.1fs)%s", task_id, k,
                         p.I.checkpoints, first, last, mean, run.wall_s, f" with fault {self.fault.kind}" if self.fault else "")
                self._pending.put((k, digest))
        except Exception as exc:  # the job ends; the chain will count the missed checkpoint
            self.error = str(exc)
            log.error("task %d: executor stopped: %s", task_id, exc)

    def _commit_loop(self) -> None:
        task_id = self.ctx.task_id
        me = bytes.fromhex(self.chain.address[2:])
        while (item := self._pending.get()) is not None:
            k, digest = item
            if self.stopped.is_set():
                continue
            try:
                self.chain.send(f"task {task_id}: commitCheckpoint {k}", self.chain.task.functions.commitCheckpoint(
                    task_id, k, checkpoint_commitment(task_id, k, me, digest)))
            except ClientError as exc:
                self.error = str(exc)
                log.error("task %d: commit of checkpoint %d failed: %s", task_id, k, exc)
                self.stop()
                continue
            with self._ready:
                self._hashes[k] = digest
                self.committed_at[k] = time.monotonic()
                self._ready.notify_all()
            log.info("task %d: committed checkpoint %d", task_id, k)

    def reveal(self, k: int) -> None:
        """Publish ckpt_k and reveal its hash (called by the event loop; runs in its own thread)."""
        threading.Thread(target=self._reveal, args=(k,), name=f"reveal-{self.ctx.task_id}-{k}", daemon=True).start()

    def _reveal(self, k: int) -> None:
        task_id = self.ctx.task_id
        with self._ready:
            if k in self._revealed:
                return  # a fresh council after an inconclusive round re-checks the same reveal
            self._revealed.add(k)
            if not self._ready.wait_for(lambda: k in self._hashes or self.stopped.is_set(), timeout=600):
                log.error("task %d: checkpoint %d was never trained; cannot reveal", task_id, k)
                return
            if self.stopped.is_set():
                return
            digest = self._hashes[k]
        try:
            self.chain.put_blob(f"checkpoint {k} of task {task_id}", self._path(k).read_bytes())
            self.chain.send(f"task {task_id}: revealCheckpoint {k}",
                            self.chain.task.functions.revealCheckpoint(task_id, k, digest))
            log.info("task %d: revealed checkpoint %d (0x%s)", task_id, k, digest.hex())
        except (ClientError, OSError) as exc:
            log.error("task %d: reveal of checkpoint %d failed: %s", task_id, k, exc)

    def stop(self) -> None:
        self.stopped.set()
        with self._ready:
            self._ready.notify_all()


class CouncilDuty:
    def __init__(self, chain: ChainClient, ctx: TaskContext, worker: Worker, k: int, round_: int,
                 step_index: int, revealed_hash: Callable[[], bytes | None]) -> None:
        self.chain, self.ctx, self.worker = chain, ctx, worker
        self.k, self.round, self.step_index = k, round_, step_index
        self.revealed_hash = revealed_hash
        self.outcome: str | None = None

    def _checkpoint(self) -> tuple[int, int, bytes, bytes, int, list[str], int]:
        fn = self.chain.task.functions.getCheckpoint(self.ctx.task_id, self.k)
        return tuple(self.chain.call("getCheckpoint", fn))  # type: ignore[return-value]

    def _wait_phase(self, phase: int, need_reveal: bool) -> bytes | None:
        """Wait until checkpoint k is in ``phase`` (and revealed, if asked); the revealed hash."""
        def ready() -> tuple[bytes | None] | None:
            current, rnd, _c, _h, ends, _m, _s = self._checkpoint()
            if rnd != self.round or current > PHASE_REVEAL or (current < phase and time.time() > ends + 60):
                raise ClientError(f"council round {self.round} of checkpoint {self.k} is over")
            if current != phase:
                return None
            digest = self.revealed_hash()
            return (digest,) if digest is not None or not need_reveal else None

        return self.chain.wait_until(f"phase {phase} of checkpoint {self.k}", ready, timeout=3600)[0]

    def run(self) -> None:
        task_id, k, p = self.ctx.task_id, self.k, self.ctx.prescription
        me = bytes.fromhex(self.chain.address[2:])
        try:
            start = self.ctx.initial
            if k > 1:
                previous = self._checkpoint_hash(k - 1)
                start = self.chain.get_blob(previous)
            first, last = segment_bounds(p, k)
            step = drawn_step(p, k, self.step_index)
            run = self.worker.train(self.ctx.spec, start, last - first, hash_steps=[step])
            mine, step_hash = merkle_root(run.checkpoint), run.state_hashes[step]
            log.info("task %d: council re-ran checkpoint %d round %d in %.1fs (cpu %.1fs): 0x%s", task_id, k,
                     self.round, run.wall_s, run.cpu_s, mine.hex())
            salt = os.urandom(32)
            fns = self.chain.task.functions
            if self.ctx.exact:
                commitment = exact_result_commitment(task_id, k, me, mine, step_hash, salt)
                self.chain.send(f"task {task_id}: commitResult {k}", fns.commitResult(task_id, k, commitment))
                theirs = self._wait_phase(PHASE_REVEAL, need_reveal=True)
                assert theirs is not None
                fetched = self._fetch(theirs) is not None
                verdict = mine == theirs
            else:
                theirs = self._wait_phase(PHASE_COUNCIL_COMMIT, need_reveal=True)
                assert theirs is not None
                published = self._fetch(theirs)
                fetched = published is not None
                verdict = fetched and self._allclose(run.checkpoint, published)  # type: ignore[arg-type]
                step_hash = bytes(32)
                commitment = verdict_commitment(task_id, k, me, verdict, mine, salt)
                self.chain.send(f"task {task_id}: commitResult {k}", fns.commitResult(task_id, k, commitment))
                self._wait_phase(PHASE_REVEAL, need_reveal=False)
            self.chain.send(f"task {task_id}: revealResult {k}",
                            fns.revealResult(task_id, k, verdict, mine, step_hash, salt, fetched))
            self.outcome = "yes" if verdict else "no"
            log.info("task %d: council voted %s on checkpoint %d round %d", task_id, self.outcome, k, self.round)
        except Exception as exc:
            self.outcome = f"failed: {exc}"
            log.error("task %d: council duty on checkpoint %d round %d failed: %s", task_id, k, self.round, exc)

    def _checkpoint_hash(self, k: int) -> bytes:
        digest = bytes(self.chain.call("getCheckpoint", self.chain.task.functions.getCheckpoint(self.ctx.task_id, k))[3])
        if digest == bytes(32):
            raise ClientError(f"checkpoint {k} of task {self.ctx.task_id} was never revealed")
        return digest

    def _fetch(self, digest: bytes) -> bytes | None:
        try:
            return self.chain.get_blob(digest)
        except ClientError as exc:
            log.warning("task %d: cannot fetch the executor's checkpoint %d: %s", self.ctx.task_id, self.k, exc)
            return None

    def _allclose(self, mine: bytes, theirs: bytes) -> bool:
        from ogpu_node.compute import InvalidCheckpoint, equivalence

        e = self.ctx.prescription.e
        assert e.rtol is not None and e.atol is not None
        try:
            return equivalence.allclose(mine, theirs, e.rtol, e.atol)
        except InvalidCheckpoint:
            return False
