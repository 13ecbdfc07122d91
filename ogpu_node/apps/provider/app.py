"""The provider app: one staked provider serving batch tasks through one node (DESIGN.md §6).

On start it measures its resources (device, memory, training throughput in its numeric-profile
worker), stakes if needed, registers them and takes the provider role. Then it follows Task's events
block by block: it considers each new batch task (fetches the prescription and D, checks feasibility
and profitability, bids), trains the tasks it wins (`ExecutorJob`, in a worker process, so the loop
keeps watching and voting), and serves on the councils it is drawn for (`CouncilDuty`, in a second
worker). Every decision is logged with the task id.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider.chain import PROTOCOL_GAS, ChainClient, Event
from ogpu_node.apps.provider.jobs import CouncilDuty, ExecutorJob, TaskContext, persist
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources
from ogpu_node.contracts.checkpoints import PHASE_COUNCIL_COMMIT, PHASE_REVEAL, STATE_DISPUTED, STATE_RUNNING
from ogpu_node.types.prescription import InvalidPrescription, segment_bounds, training_seed

log = logging.getLogger("ogpu.provider")
KIND_BATCH = 0
PROFILE = "cpu-avx2-1t"  # the numeric profile a CPU provider trains and verifies under
MAX_DATASET_BYTES = 1 << 30
RECOVER_TASKS = 1_000  # how far back a restarted provider looks for work it owes
LOG_WINDOW = 10_000  # blocks per eth_getLogs call (the node caps a range)


@dataclass
class ProviderConfig:
    rpc_url: str
    private_key: bytes
    datadir: Path
    stake: int | None = None  # wei to stake if below the provider minimum (default: the minimum)
    memory_mib: int | None = None  # cap on the registered memory (default: all of this machine's)
    cost_per_second: int = 10**15  # wei per second of compute: the operator's cost
    margin: float = 0.2
    fault: Any = None  # compute.Fault: train dishonestly (tests and demonstrations only)
    poll_s: float = 0.5
    endpoint: str = ""


class Provider:
    def __init__(self, config: ProviderConfig) -> None:
        from ogpu_node.compute import Worker  # torch loads here, not when the CLI starts

        self.config = config
        self.chain = ChainClient(config.rpc_url, config.private_key)
        self.me = self.chain.address.lower()
        self.strategy = BidStrategy(config.cost_per_second, config.margin)
        self.council_worker = Worker(PROFILE)
        self._worker_cls = Worker
        self._spare: Worker | None = None  # a started executor worker: assignment need not wait for torch
        self.resources: Resources | None = None
        self.contexts: dict[int, TaskContext] = {}
        self.fetched: dict[int, tuple[Any, bytes, bytes | None]] = {}  # prescription, data, weights
        self.bids: dict[int, int] = {}  # task id -> our price
        self.jobs: dict[int, ExecutorJob] = {}
        self._downloads = threading.BoundedSemaphore(2)
        self.seats: set[tuple[int, int, int]] = set()  # (task, k, round) being served
        self.ended: set[int] = set()  # cancelled or settled: start no work for them
        self.max_jobs = max(1, (os.cpu_count() or 1) - 1)  # executor jobs at once, beside council work
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self.last_block = -1

    # -- start-up --

    def measure(self) -> Resources:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        if self.config.memory_mib is not None:
            memory = min(memory, self.config.memory_mib)
        flops = self.council_worker.measure_throughput(1.0)
        return Resources(device="cpu", memory_mib=int(memory), flops_per_s=flops, profiles=(PROFILE,))

    def register(self) -> None:
        """Measure, stake up to the provider minimum, register resources, take the provider role."""
        self.resources = res = self.measure()
        log.info("resources: %s, %d MiB, %.2f GFLOP/s training throughput (profile %s)", res.device,
                 res.memory_mib, res.flops_per_s / 1e9, PROFILE)
        added = self.chain.client.register_provider(res.device, res.memory_mib, int(res.flops_per_s / 1e6),  # MFLOP/s
                                                    self.config.endpoint, self.config.stake, min_gas=PROTOCOL_GAS)
        if added:
            log.info("staked %d wei", added)
        log.info("registered as provider %s", self.chain.address)
        self._prepare_spare()

    # -- main loop --

    def run(self) -> None:
        self.register()
        self.last_block = self.chain.head()
        self.recover()
        log.info("watching tasks from block %d", self.last_block + 1)
        while not self.stopped.is_set():
            try:
                self.follow(self.chain.head())
            except ClientError as exc:
                log.warning("node: %s", exc)
            self.stopped.wait(self.config.poll_s)
        self.close()

    def recover(self) -> None:
        """Pick up the work owed when this provider stopped, from the chain's record of the last
        RECOVER_TASKS tasks: executor jobs of running tasks (committed checkpoints reloaded from the
        datadir, or retrained: same state and seed, same bytes), the reveal due now, and seats on
        councils sitting now (votes committed before the stop are reloaded from the datadir)."""
        fns = self.chain.task.functions
        count = self.chain.call("taskCount", fns.taskCount())
        for task_id in range(max(1, count - RECOVER_TASKS + 1), count + 1):
            _client, kind, state, _ph, _esc, _dep, executor, *_ = self.chain.call("getTask", fns.getTask(task_id))
            if kind != KIND_BATCH or state not in (STATE_RUNNING, STATE_DISPUTED):
                continue
            accepted, committed, *_ = self.chain.call("getProgress", fns.getProgress(task_id))
            if executor.lower() == self.me and state == STATE_RUNNING:
                log.info("task %d: resuming as executor (%d accepted, %d committed)", task_id, accepted, committed)
                self._spawn(f"execute-{task_id}", self.execute, task_id, accepted, time.monotonic(), committed)
            checkpoints = self.chain.call("getTerms", fns.getTerms(task_id))[3]
            k = checkpoints if state == STATE_DISPUTED else accepted + 1
            if k > checkpoints:
                continue
            phase, round_, _c, _h, _ends, council, step_index = self.chain.call("getCheckpoint", fns.getCheckpoint(task_id, k))
            if phase in (PHASE_COUNCIL_COMMIT, PHASE_REVEAL) and self.me in (m.lower() for m in council):
                log.info("task %d: resuming a council seat on checkpoint %d (round %d)", task_id, k, round_)
                self._spawn(f"council-{task_id}", self.serve, task_id, k, round_, step_index)

    def follow(self, head: int) -> None:
        """Handle Task's events up to ``head``, a bounded window at a time; each window's events once."""
        while self.last_block < head and not self.stopped.is_set():
            last = min(head, self.last_block + LOG_WINDOW)
            for event in self.chain.task_events(self.last_block + 1, last):
                try:
                    self.handle(event)
                except Exception:  # one bad event must not stop a provider that owes commits and votes
                    log.exception("event %s at block %d", event.name, event.block)
            self.last_block = last

    def close(self) -> None:
        self.stopped.set()
        for job in list(self.jobs.values()):
            job.stop()
        self.council_worker.close()
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()

    def _prepare_spare(self) -> None:
        def start() -> None:
            worker = self._worker_cls(PROFILE)
            try:
                worker.measure_throughput(0.5)  # warm: a fresh process's first segment costs ~2 s more
            except Exception as exc:  # a task assigned meanwhile starts its own worker
                worker.close()
                if not self.stopped.is_set():
                    log.warning("spare training worker: %s", exc)
                return
            with self._lock:
                if self._spare is None and not self.stopped.is_set():
                    self._spare, worker = worker, None
            if worker is not None:
                worker.close()

        threading.Thread(target=start, name="spare-worker", daemon=True).start()

    def _executor_worker(self, profile: str) -> Any:
        with self._lock:
            spare = self._spare if self._spare is not None and self._spare.profile == profile else None
            if spare is not None:
                self._spare = None
        if spare is None:  # still starting, or another profile: this task waits for its own
            return self._worker_cls(profile)
        self._prepare_spare()
        return spare

    def handle(self, ev: Event) -> None:
        a = ev.args
        task_id = a.get("taskId")
        name = ev.name
        if name == "TaskSubmitted":
            if a["kind"] == KIND_BATCH and a["client"].lower() != self.me:
                self._spawn(f"consider-{task_id}", self.consider, task_id, bytes(a["prescriptionHash"]))
        elif name == "TaskAssigned":
            executor = a["executor"].lower()
            if self.bids.pop(task_id, None) is not None:
                self.strategy.record(executor == self.me)
                log.info("task %d: %s the auction (win rate %.0f%%, margin now %.0f%%)", task_id,
                         "won" if executor == self.me else "lost", 100 * (self.strategy.win_rate or 0),
                         100 * self.strategy.margin)
            if executor == self.me:
                self._spawn(f"execute-{task_id}", self.execute, task_id, 0, time.monotonic())
        elif name == "ExecutorReplaced":
            if a["previous"].lower() == self.me:
                self._stop_job(task_id, "replaced")
            if a["executor"].lower() == self.me:
                self._spawn(f"execute-{task_id}", self.execute, task_id, a["resumeFrom"], time.monotonic())
        elif name == "CouncilDrawn":
            job = self.jobs.get(task_id)
            if job is not None and not job.ctx.exact:
                job.reveal(a["k"])  # allclose: the executor publishes first
            if self.me in (m.lower() for m in a["members"]):
                log.info("task %d: drawn for the council of checkpoint %d (round %d)", task_id, a["k"], a["round"])
                self._spawn(f"council-{task_id}", self.serve, task_id, a["k"], a["round"], a["stepIndex"])
        elif name == "RevealPhase":
            job = self.jobs.get(task_id)
            if job is not None and job.ctx.exact:
                job.reveal(a["k"])
        elif name in ("CheckpointAccepted", "CheckpointRejected", "CheckpointMissed", "CheckpointInconclusive"):
            detail = {k: v for k, v in a.items() if k not in ("taskId", "k")}
            log.info("task %d: checkpoint %d %s %s", task_id, a["k"], name.removeprefix("Checkpoint").lower(), detail)
        elif name in ("TaskCancelled", "TaskSettled"):
            with self._lock:
                self.ended.add(task_id)
                self.contexts.pop(task_id, None)  # its dataset may be large
                self.fetched.pop(task_id, None)
            self.bids.pop(task_id, None)
            self._stop_job(task_id, name.removeprefix("Task").lower())
            self._forget_files(task_id)

    def _forget_files(self, task_id: int) -> None:
        """A task that ended needs none of our files: its checkpoints live on as blobs."""
        shutil.rmtree(self.config.datadir / "tasks" / str(task_id), ignore_errors=True)
        for vote in (self.config.datadir / "votes").glob(f"{task_id}-*.json"):
            vote.unlink(missing_ok=True)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        def guarded() -> None:
            try:
                target(*args)
            except (ClientError, InvalidPrescription, OSError) as exc:
                log.warning("task %d: %s", args[0], exc)
            except Exception:
                log.exception("task %d: %s failed", args[0], name)

        threading.Thread(target=guarded, name=name, daemon=True).start()

    def _stop_job(self, task_id: int, why: str) -> None:
        with self._lock:
            job = self.jobs.pop(task_id, None)
        if job is not None:
            log.info("task %d: executor job ends (%s)", task_id, why)
            threading.Thread(target=job.stop, daemon=True).start()

    # -- tasks --

    def context(self, task_id: int, prescription_hash: bytes | None = None) -> TaskContext:
        """The task's prescription, data and training spec. The documents are fetched once (for the
        bid); the spec is final, and cached, once the chain has fixed the assignment seed."""
        from ogpu_node.compute import initial_checkpoint, spec_from_prescription
        from ogpu_node.compute.prescription import validate

        with self._lock:
            if task_id in self.contexts:
                return self.contexts[task_id]
            fetched = self.fetched.get(task_id)
        task = self.chain.call("getTask", self.chain.task.functions.getTask(task_id))
        phash, seed = bytes(task[3]), bytes(task[8])
        if prescription_hash is not None and phash != prescription_hash:
            raise ClientError("the chain's prescription hash changed")
        if fetched is None:
            p = validate(self.chain.get_blob(phash, max_bytes=1 << 20))
            if p.D is None:
                raise InvalidPrescription("prescription.D", "required")
            weights = None if p.M.initial_weights is None else self.chain.get_blob(
                p.M.initial_weights, max_bytes=MAX_DATASET_BYTES)
            fetched = (p, self.chain.get_blob(p.D.blob, max_bytes=MAX_DATASET_BYTES), weights)
            with self._lock:
                self.fetched[task_id] = fetched
        p, dataset, weights = fetched
        if seed == bytes(32):  # still bidding: a spec for estimates only
            return TaskContext(task_id, p, spec_from_prescription(p, dataset, 0), None)
        spec = spec_from_prescription(p, dataset, training_seed(p, seed))
        ctx = TaskContext(task_id, p, spec, None if weights is None else initial_checkpoint(spec, weights))
        with self._lock:
            self.contexts[task_id] = ctx
        return ctx

    def consider(self, task_id: int, prescription_hash: bytes) -> None:
        from ogpu_node.compute import estimate

        with self._downloads:  # a burst of submissions must not fetch every dataset at once
            ctx = self.context(task_id, prescription_hash)
        assert ctx is not None and self.resources is not None
        p = ctx.prescription
        est = estimate(p, len(ctx.spec.dataset))
        assert p.I.steps is not None and p.I.checkpoints is not None and p.I.segment_window_s is not None
        longest = max(b - a for a, b in (segment_bounds(p, k) for k in range(1, p.I.checkpoints + 1)))
        job = Job(devices=p.I.hardware.devices, numeric_profile=p.I.numeric_profile, memory_mib=est.memory_mib,
                  total_flops=est.total_flops, segment_flops=est.flops_per_step * longest,
                  segment_window_s=p.I.segment_window_s, max_payment=p.I.max_payment)
        busy = len(self.jobs) + len(self.bids)
        if busy >= self.max_jobs:
            log.info("task %d: not bidding: busy (%d running or pending of %d)", task_id, busy, self.max_jobs)
            return
        price, reason = self.strategy.decide(job, self.resources)
        if price is None:
            log.info("task %d: not bidding: %s", task_id, reason)
            return
        self.chain.send(f"task {task_id}: placeBid", self.chain.bid.functions.placeBid(task_id, price))
        self.bids[task_id] = price
        log.info("task %d: bid %d wei (%s)", task_id, price, reason)

    def execute(self, task_id: int, resume_from: int, assigned_at: float, committed: int = 0) -> None:
        ctx = self.context(task_id)
        start = None
        if resume_from:
            start = self.chain.get_blob(bytes(self.chain.call(
                "getCheckpoint", self.chain.task.functions.getCheckpoint(task_id, resume_from))[3]))
        profile = ctx.prescription.I.numeric_profile or PROFILE
        job = ExecutorJob(self.chain, ctx, self._executor_worker(profile), self.config.datadir / "tasks" / str(task_id),
                          resume_from=resume_from, start=start, fault=self.config.fault, assigned_at=assigned_at,
                          committed=committed)
        with self._lock:
            if task_id in self.ended or self.stopped.is_set():  # it ended while we fetched its data
                job.worker.close()
                return
            self.jobs[task_id] = job
        log.info("task %d: executing from checkpoint %d%s", task_id, resume_from,
                 f" (fault injection: {self.config.fault})" if self.config.fault else "")
        job.start()
        k = resume_from + 1
        if committed >= k:  # after a restart: the council may already wait for our reveal
            phase = self.chain.call("getCheckpoint", self.chain.task.functions.getCheckpoint(task_id, k))[0]
            if phase == (PHASE_REVEAL if ctx.exact else PHASE_COUNCIL_COMMIT):
                job.reveal(k)

    def serve(self, task_id: int, k: int, round_: int, step_index: int) -> None:
        ctx = persist(self.chain, f"task {task_id}: fetch its prescription and data", lambda: self.context(task_id),
                      deadline=lambda: self.chain.call("getCheckpoint", self.chain.task.functions.getCheckpoint(task_id, k))[4])
        seat = (task_id, k, round_)
        with self._lock:
            if seat in self.seats:
                return
            self.seats.add(seat)
        try:
            # One council worker: seats run one after another (on a 2-core machine a second would
            # only slow the executor's training); a duty abandons itself when its round or task is over.
            CouncilDuty(self.chain, ctx, self.council_worker, k, round_, step_index, self.config.datadir / "votes").run()
        finally:
            with self._lock:
                self.seats.discard(seat)


__all__ = ["PROFILE", "Provider", "ProviderConfig"]
