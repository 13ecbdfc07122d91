"""A provider's two kinds of work on a batch task (DESIGN.md §6):

- `ExecutorJob`: trains the task from the chain's seed, segment after segment, in a worker process,
  committing each checkpoint as it reaches it and revealing (publishing the blob) when the protocol
  asks: under `exact` once the council has committed, under `allclose` once the council is drawn.
- `CouncilDuty`: one seat on checkpoint k's council: re-run segment k from the executor's revealed
  ckpt_{k-1}, then commit and reveal. Under `exact` the commitment binds the result hash and the
  state hash at the drawn step; under `allclose` the verdict after comparing with the published blob.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ogpu_node.apps.client import ClientError
from ogpu_node.contracts.checkpoints import (
    PHASE_COUNCIL_COMMIT,
    PHASE_REVEAL,
    STATE_CANCELLED,
    STATE_SETTLED,
    checkpoint_commitment,
    exact_result_commitment,
    verdict_commitment,
)
from ogpu_node.files import atomic_write
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, drawn_step, segment_bounds

if TYPE_CHECKING:
    from ogpu_node.apps.provider.chain import ChainClient
    from ogpu_node.compute import Fault, SegmentRun, TrainSpec, Worker

log = logging.getLogger("ogpu.provider")
_MAX_RETRY_DELAY_S = 5.0


class Abandoned(Exception):
    """The work no longer matters: the task ended, the round moved on, or the job was stopped."""


def persist(chain: ChainClient, what: str, attempt: Callable[[], Any], deadline: Callable[[], int],
            done: Callable[[], bool] = lambda: False) -> Any:
    """Run ``attempt`` until it succeeds, ``done()`` says the chain already shows its effect, or the
    chain's clock passes ``deadline()``: a dropped connection or a receipt that came late must not
    cost an honest provider its stake. Reverts saying the step was already taken count as done."""
    delay = 1.0
    while True:
        try:
            return attempt()
        except ClientError as exc:
            if "already" in str(exc) or _quietly(done, False):
                return None
            if _quietly(lambda: chain.timestamp() >= deadline(), False):
                raise
            log.warning("%s failed, retrying in %.0fs: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(2 * delay, _MAX_RETRY_DELAY_S)


def _quietly(fn: Callable[[], Any], default: Any) -> Any:
    """``fn()``, or ``default`` while the node cannot answer (the caller retries anyway)."""
    try:
        return fn()
    except ClientError:
        return default


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


class ExecutorJob(threading.Thread):
    """Train every remaining segment of one task and commit each checkpoint; reveal on request.

    ``stop_training`` ends the training (a failed commit: later checkpoints cannot be committed in
    order); ``abandoned`` ends everything (replaced, cancelled, settled). Reveals owed for committed
    checkpoints go on after a training stop."""

    def __init__(self, chain: ChainClient, ctx: TaskContext, worker: Worker, workdir: Path, *,
                 resume_from: int = 0, start: bytes | None = None, fault: Fault | None = None,
                 assigned_at: float | None = None, committed: int = 0) -> None:
        super().__init__(name=f"executor-{ctx.task_id}", daemon=True)
        self.chain, self.ctx, self.worker, self.workdir = chain, ctx, worker, workdir
        self.resume_from, self.start_state, self.fault = resume_from, start, fault
        self.committed = committed  # checkpoints this executor committed before a restart
        self.stop_training = threading.Event()
        self.abandoned = threading.Event()
        self._ready = threading.Condition()
        self._hashes: dict[int, bytes] = {}
        self._revealing: set[int] = set()
        self._pending: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self.segments: list[SegmentRun] = []  # timings of each trained segment (checkpoint bytes dropped)
        self.started_at = time.monotonic() if assigned_at is None else assigned_at  # for benchmarks
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
            self.worker.close()  # also ends a process respawned by a train() racing a stop

    def _train(self) -> None:
        p, task_id = self.ctx.prescription, self.ctx.task_id
        assert p.I.checkpoints is not None
        state = self.start_state if self.resume_from else self.ctx.initial
        try:
            for k in range(self.resume_from + 1, p.I.checkpoints + 1):
                if self.stop_training.is_set() or self.abandoned.is_set():
                    return
                if k <= self.committed and (kept := self._kept(k)) is not None:
                    state = kept  # committed before a restart, and its file matches the commitment
                    with self._ready:
                        self._hashes[k] = merkle_root(state)
                        self._ready.notify_all()
                    continue
                first, last = segment_bounds(p, k)
                run = self.worker.train(self.ctx.spec, state, last - first, fault=self.fault)
                state = run.checkpoint
                digest = merkle_root(state)
                atomic_write(self._path(k), state)
                self.segments.append(run._replace(checkpoint=b""))
                mean = sum(run.losses) / len(run.losses) if run.losses else float("nan")
                log.info("task %d: trained checkpoint %d/%d (steps %d-%d, loss %.4f, %.1fs)%s", task_id, k,
                         p.I.checkpoints, first, last, mean, run.wall_s, f" with fault {self.fault.kind}" if self.fault else "")
                self._pending.put((k, digest))
        except Exception as exc:  # the job ends; the chain will count the missed checkpoint
            if not self.abandoned.is_set():
                self.error = str(exc)
                log.error("task %d: executor stopped: %s", task_id, exc)

    def _kept(self, k: int) -> bytes | None:
        """ckpt_k from this provider's files if it opens the on-chain commitment of k (else None:
        retrain it; training from the same state and seed gives the same bytes)."""
        try:
            data = self._path(k).read_bytes()
        except OSError:
            return None
        commitment = self.chain.call("getCheckpoint", self.chain.task.functions.getCheckpoint(self.ctx.task_id, k))[2]
        me = bytes.fromhex(self.chain.address[2:])
        return data if checkpoint_commitment(self.ctx.task_id, k, me, merkle_root(data)) == bytes(commitment) else None

    def _commit_deadline(self, k: int) -> int:
        """Checkpoint k's last moment: due (runStart + (k − runBase)·window) plus one window of grace."""
        progress = self.chain.call("getProgress", self.chain.task.functions.getProgress(self.ctx.task_id))
        window = self.ctx.prescription.I.segment_window_s
        assert window is not None
        return progress[3] + (k - progress[4]) * window + window

    def _commit_loop(self) -> None:
        task_id = self.ctx.task_id
        me = bytes.fromhex(self.chain.address[2:])
        fns = self.chain.task.functions
        while (item := self._pending.get()) is not None:
            k, digest = item
            if self.abandoned.is_set() or self.stop_training.is_set():
                continue
            if k <= self.committed:  # retrained after a restart: committed already
                with self._ready:
                    self._hashes[k] = digest
                    self._ready.notify_all()
                continue
            try:
                persist(self.chain, f"task {task_id}: commitCheckpoint {k}",
                        lambda k=k, digest=digest: self.chain.send(
                            f"task {task_id}: commitCheckpoint {k}",
                            fns.commitCheckpoint(task_id, k, checkpoint_commitment(task_id, k, me, digest))),
                        deadline=lambda k=k: self._commit_deadline(k),
                        done=lambda k=k: self.chain.call("getProgress", fns.getProgress(task_id))[1] >= k)
            except ClientError as exc:
                self.error = str(exc)
                log.error("task %d: commit of checkpoint %d failed: %s", task_id, k, exc)
                self.stop_training.set()
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
        fns = self.chain.task.functions
        with self._ready:
            if k in self._revealing:
                return  # a fresh council after an inconclusive round re-checks the same reveal
            self._revealing.add(k)
            ready = self._ready.wait_for(lambda: k in self._hashes or self.abandoned.is_set(), timeout=3600)
            if not ready or self.abandoned.is_set():
                if not self.abandoned.is_set():
                    log.error("task %d: checkpoint %d was never committed; cannot reveal", task_id, k)
                self._revealing.discard(k)
                return
            digest = self._hashes[k]

        def phase_end() -> int:
            return self.chain.call("getCheckpoint", fns.getCheckpoint(task_id, k))[4]

        try:
            blob = self._path(k).read_bytes()
            persist(self.chain, f"task {task_id}: publish checkpoint {k}",
                    lambda: self.chain.put_blob(f"checkpoint {k} of task {task_id}", blob), deadline=phase_end)
            persist(self.chain, f"task {task_id}: revealCheckpoint {k}",
                    lambda: self.chain.send(f"task {task_id}: revealCheckpoint {k}",
                                            fns.revealCheckpoint(task_id, k, digest)),
                    deadline=phase_end,
                    done=lambda: bytes(self.chain.call("getCheckpoint", fns.getCheckpoint(task_id, k))[3]) == digest)
            log.info("task %d: revealed checkpoint %d (0x%s)", task_id, k, digest.hex())
        except (ClientError, OSError) as exc:
            log.error("task %d: reveal of checkpoint %d failed: %s", task_id, k, exc)
            with self._ready:
                self._revealing.discard(k)

    def stop(self) -> None:
        """Abandon the task: stop training, owe no more reveals, end the worker (aborts a segment)."""
        self.abandoned.set()
        with self._ready:
            self._ready.notify_all()
        self.worker.close()


class CouncilDuty:
    """One seat: re-run segment k, commit, reveal. Gives up (Abandoned) when the round moves on or
    the task ends; retries transient failures until the phase's deadline."""

    def __init__(self, chain: ChainClient, ctx: TaskContext, worker: Worker, k: int, round_: int,
                 step_index: int, votes: Path) -> None:
        self.chain, self.ctx, self.worker = chain, ctx, worker
        self.k, self.round, self.step_index = k, round_, step_index
        # The vote is written before it is committed, so a restarted provider reveals what it committed.
        self.vote_path = votes / f"{ctx.task_id}-{k}-{round_}.json"
        self.outcome: str | None = None

    def _checkpoint(self) -> tuple[int, int, bytes, bytes, int, list[str], int]:
        fn = self.chain.task.functions.getCheckpoint(self.ctx.task_id, self.k)
        return tuple(self.chain.call("getCheckpoint", fn))  # type: ignore[return-value]

    def _phase_end(self) -> int:
        return self._checkpoint()[4]

    def _still_current(self) -> tuple[int, int, bytes, bytes, int, list[str], int]:
        """This round's checkpoint record; Abandoned once the round or the task is over."""
        record = self._checkpoint()
        if record[1] != self.round or record[0] > PHASE_REVEAL:
            raise Abandoned(f"round {self.round} of checkpoint {self.k} is over")
        state = self.chain.call("getTask", self.chain.task.functions.getTask(self.ctx.task_id))[2]
        if state in (STATE_CANCELLED, STATE_SETTLED):
            raise Abandoned(f"task {self.ctx.task_id} has ended")
        return record

    def revealed_hash(self) -> bytes | None:
        """The executor's revealed H(ckpt_k), read from the chain and accepted only if it opens the
        current commitment (a replaced executor's stale reveal does not)."""
        _phase, _rnd, commitment, digest, *_ = self._checkpoint()
        executor = self.chain.call("getTask", self.chain.task.functions.getTask(self.ctx.task_id))[6]
        if digest == bytes(32):
            return None
        opens = checkpoint_commitment(self.ctx.task_id, self.k, bytes.fromhex(executor[2:]), digest) == commitment
        return digest if opens else None

    def _wait_phase(self, phase: int, need_reveal: bool) -> bytes | None:
        """Wait until checkpoint k is in ``phase`` (and revealed, if asked); the revealed hash."""
        def ready() -> tuple[bytes | None] | None:
            try:
                current = self._still_current()[0]
                if current != phase:
                    return None
                digest = self.revealed_hash()
            except ClientError:
                return None  # the node did not answer: ask again
            return (digest,) if digest is not None or not need_reveal else None

        return self.chain.wait_until(f"phase {phase} of checkpoint {self.k}", ready, timeout=24 * 3600)[0]

    def run(self) -> None:
        task_id, k = self.ctx.task_id, self.k
        me = bytes.fromhex(self.chain.address[2:])
        fns = self.chain.task.functions
        try:
            saved = self._load_vote()
            result: bytes | None = None
            if saved is None:
                result, step_hash = self._recompute()
                mine, salt = merkle_root(result), os.urandom(32)
            else:
                mine, step_hash, salt = saved
                log.info("task %d: council resumes its vote on checkpoint %d round %d", task_id, k, self.round)
            if self.ctx.exact:
                self._save_vote(mine, step_hash, salt)
                commitment = exact_result_commitment(task_id, k, me, mine, step_hash, salt)
                self._send(f"commitResult {k}", fns.commitResult(task_id, k, commitment))
                theirs = self._wait_phase(PHASE_REVEAL, need_reveal=True)
                assert theirs is not None
                fetched = self._fetch(theirs) is not None
                verdict = mine == theirs
            else:
                theirs = self._wait_phase(PHASE_COUNCIL_COMMIT, need_reveal=True)
                assert theirs is not None
                published = self._fetch(theirs)
                fetched = published is not None
                if result is None:  # resumed: the re-run itself was not kept
                    result, _ = self._recompute()
                verdict = published is not None and self._allclose(result, published)
                step_hash = bytes(32)
                self._save_vote(mine, step_hash, salt)
                commitment = verdict_commitment(task_id, k, me, verdict, mine, salt)
                self._send(f"commitResult {k}", fns.commitResult(task_id, k, commitment))
                self._wait_phase(PHASE_REVEAL, need_reveal=False)
            self._send(f"revealResult {k}", fns.revealResult(task_id, k, verdict, mine, step_hash, salt, fetched))
            self.outcome = "yes" if verdict else "no"
            log.info("task %d: council voted %s on checkpoint %d round %d", task_id, self.outcome, k, self.round)
        except Abandoned as exc:
            self.outcome = f"abandoned: {exc}"
            log.info("task %d: council duty on checkpoint %d round %d ends: %s", task_id, k, self.round, exc)
        except Exception as exc:
            self.outcome = f"failed: {exc}"
            log.error("task %d: council duty on checkpoint %d round %d failed: %s", task_id, k, self.round, exc)

    def _recompute(self) -> tuple[bytes, bytes]:
        """Re-run segment k from the executor's revealed ckpt_{k-1}: (result, state hash at the drawn step)."""
        task_id, k, p = self.ctx.task_id, self.k, self.ctx.prescription
        start = self.ctx.initial
        if k > 1:
            previous = bytes(self.chain.call("getCheckpoint", self.chain.task.functions.getCheckpoint(task_id, k - 1))[3])
            start = persist(self.chain, f"task {task_id}: fetch checkpoint {k - 1}",
                            lambda: self.chain.get_blob(previous), deadline=self._phase_end)
        self._still_current()
        first, last = segment_bounds(p, k)
        step = drawn_step(p, k, self.step_index)
        run = self.worker.train(self.ctx.spec, start, last - first, hash_steps=[step])
        log.info("task %d: council re-ran checkpoint %d round %d in %.1fs (cpu %.1fs): 0x%s", task_id, k,
                 self.round, run.wall_s, run.cpu_s, merkle_root(run.checkpoint).hex())
        return run.checkpoint, run.state_hashes[step]

    def _save_vote(self, mine: bytes, step_hash: bytes, salt: bytes) -> None:
        doc = {"result": mine.hex(), "step": step_hash.hex(), "salt": salt.hex()}
        atomic_write(self.vote_path, json.dumps(doc).encode())

    def _load_vote(self) -> tuple[bytes, bytes, bytes] | None:
        try:
            doc = json.loads(self.vote_path.read_bytes())
            return bytes.fromhex(doc["result"]), bytes.fromhex(doc["step"]), bytes.fromhex(doc["salt"])
        except (OSError, ValueError, KeyError):
            return None

    def _send(self, what: str, call: Any) -> None:
        persist(self.chain, f"task {self.ctx.task_id}: {what}",
                lambda: self.chain.send(f"task {self.ctx.task_id}: {what}", call), deadline=self._phase_end)

    def _fetch(self, digest: bytes) -> bytes | None:
        """The executor's published checkpoint, retried until a few seconds before the phase ends."""
        try:
            return persist(self.chain, f"task {self.ctx.task_id}: fetch checkpoint {self.k}",
                           lambda: self.chain.get_blob(digest), deadline=lambda: self._phase_end() - 5)
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
