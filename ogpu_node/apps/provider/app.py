"""The provider app as a trio service: one staked provider serving batch tasks through one node (DESIGN.md §6).

`Provider.run` registers (measures its resources in its council worker, stakes, registers them,
takes the provider role), recovers what it owes from the chain and its datadir, then follows Task's
events block by block. Every event and every report of its own work goes through one memory
channel into the decision core (`core.ProviderCore`), and each action the core returns becomes a
task of the service's one nursery: a bid, an executor job (training in its own worker process, so
it never waits for a block), a commit, a reveal, a council seat. Blocking JSON-RPC calls and worker
jobs run in threads (`concurrency.blocking`); work that no longer matters is cancelled through its
scope, and worker processes are closed when their job or the service ends. Stream tasks are served
beside batch work by `streams.StreamService`, which the same event feed reaches (docs/streams.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider import executor
from ogpu_node.apps.provider import messages as m
from ogpu_node.apps.provider.chain import PROTOCOL_GAS, ChainClient, Event
from ogpu_node.apps.provider.concurrency import Scopes, blocking, close_shielded
from ogpu_node.apps.provider.context import DOCUMENT_ERRORS, TaskDocuments, flagged_job, job_of
from ogpu_node.apps.provider.core import ProviderCore, my_votes
from ogpu_node.apps.provider.council import CouncilSeat
from ogpu_node.apps.provider.executor import JobRecord, chain_now
from ogpu_node.apps.provider.retry import persist
from ogpu_node.apps.provider.store import ProviderFiles
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.apps.provider.stream_ws import ws_url_from_rpc
from ogpu_node.apps.provider.streams import StreamService
from ogpu_node.types.prescription import InvalidPrescription
from ogpu_node.types.protocol import DEFAULT_PROFILE, Phase, TaskKind, TaskState

log = logging.getLogger("ogpu.provider")
RECOVER_TASKS = 1_000  # how far back a restarted provider looks for work it owes
LOG_WINDOW = 10_000  # blocks per eth_getLogs call (the node caps a range)
INBOX = 1_024  # events and reports waiting for the decision core


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
    streams: bool = True  # subscribe to stream tasks and serve them (docs/streams.md)
    ws_url: str | None = None  # the node's WebSocket (default: the rpc url's host, port 8546)
    stream_fault: str | None = None  # stream_ws.STREAM_FAULTS: answer dishonestly (tests only)
    council_fault: str | None = None  # council.COUNCIL_FAULTS: vote without computing (tests only)


class Provider:
    def __init__(self, config: ProviderConfig) -> None:
        from ogpu_node.compute import Worker  # torch loads here, not when the CLI starts

        self.config = config
        self.chain = ChainClient(config.rpc_url, config.private_key)
        self.me = self.chain.address.lower()
        self.strategy = BidStrategy(config.cost_per_second, config.margin)
        self.files = ProviderFiles(config.datadir)
        self.documents = TaskDocuments(self.chain)
        self.max_jobs = max(1, (os.cpu_count() or 1) - 1)  # executor jobs at once, beside council work
        self.council_worker = Worker(DEFAULT_PROFILE)
        self.council_turns = trio.CapacityLimiter(1)  # seats re-run one after another in it
        self._worker_cls = Worker
        self._spare: Any = None  # a started executor worker: an assignment need not wait for torch
        self.resources: Resources | None = None
        self.core: ProviderCore | None = None
        self.jobs: dict[int, JobRecord] = {}  # executor jobs, for logs and benchmarks
        self.scopes = Scopes()
        self.last_block = -1
        self._inbox: trio.MemorySendChannel[Event | m.Observation] | None = None
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_asked = False
        self.streams = None if not config.streams else StreamService(
            self.chain, config.private_key, config.datadir, config.ws_url or ws_url_from_rpc(config.rpc_url),
            self.strategy, lambda profile: self._worker_cls(profile), fault=config.stream_fault)

    # -- the service --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (or `stop()`); registration errors are raised."""
        send, receive = trio.open_memory_channel[Event | m.Observation](INBOX)
        self._inbox, self._token = send, trio.lowlevel.current_trio_token()
        try:
            with trio.CancelScope() as self._scope:
                if self._stop_asked:
                    self._scope.cancel()
                self.core = ProviderCore(self.me, self.strategy, await self.register(), self.max_jobs)
                self.last_block = await blocking(self.chain.head)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._decide, receive)
                    if self.streams is not None:  # beside batch work, in its own workers
                        assert self.resources is not None
                        nursery.start_soon(self.streams.run, self.resources)
                    self._spawn(("spare",), "spare worker", self._prepare_spare)
                    await self._recover()
                    log.info("watching tasks from block %d", self.last_block + 1)
                    task_status.started()
                    await self._follow()
        finally:
            spare, self._spare = self._spare, None
            for worker in (self.council_worker, spare):
                if worker is not None:
                    await close_shielded(worker)

    def stop(self) -> None:
        """End `run` from any thread or a signal handler: its work is cancelled, its workers closed."""
        self._stop_asked = True
        if self._token is not None and self._scope is not None:
            self._token.run_sync_soon(self._scope.cancel)

    async def register(self) -> Resources:
        """Measure, stake up to the provider minimum, register resources, take the provider role."""
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        if self.config.memory_mib is not None:
            memory = min(memory, self.config.memory_mib)
        flops = await blocking(self.council_worker.measure_throughput, 1.0)
        self.resources = res = Resources(device="cpu", memory_mib=int(memory), flops_per_s=flops,
                                         profiles=(DEFAULT_PROFILE,))
        log.info("resources: %s, %d MiB, %.2f GFLOP/s training throughput (profile %s)", res.device,
                 res.memory_mib, res.flops_per_s / 1e9, DEFAULT_PROFILE)
        added = await blocking(self.chain.client.register_provider, res.device, res.memory_mib,
                               int(res.flops_per_s / 1e6), self.config.endpoint, self.config.stake,  # MFLOP/s
                               min_gas=PROTOCOL_GAS, profiles=res.profiles)
        if added:
            log.info("staked %d wei", added)
        log.info("registered as provider %s", self.chain.address)
        return res

    async def _follow(self) -> None:
        """Task's events up to the head, a bounded window at a time, each window's events once."""
        assert self._inbox is not None
        while True:
            try:
                head = await blocking(self.chain.head)
                while self.last_block < head:
                    last = min(head, self.last_block + LOG_WINDOW)
                    for event in await blocking(self.chain.task_events, self.last_block + 1, last):
                        await self._inbox.send(event)
                        if self.streams is not None:
                            await self.streams.feed(event)
                    self.last_block = last
            except ClientError as exc:
                log.warning("node: %s", exc)
            await trio.sleep(self.config.poll_s)

    async def _decide(self, receive: trio.MemoryReceiveChannel[Event | m.Observation]) -> None:
        assert self.core is not None
        async for item in receive:
            for action in self.core.receive(item):
                self._perform(action)

    async def _report(self, item: m.Observation) -> None:
        assert self._inbox is not None
        await self._inbox.send(item)

    def _spawn(self, key: Hashable, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the nursery, cancellable with everything open under ``key``."""
        async def guarded() -> None:
            with self.scopes.open(key):
                try:
                    await fn(*args)
                except (ClientError, InvalidPrescription, OSError) as exc:
                    log.warning("%s: %s", what, exc)
                except Exception:
                    log.exception("%s failed", what)

        assert self._nursery is not None
        self._nursery.start_soon(guarded)

    def _perform(self, action: m.Action) -> None:
        task_id = action.task_id
        name = f"task {task_id}"
        if isinstance(action, m.Consider):
            self._spawn(("task", task_id), name, self._consider, action)
        elif isinstance(action, m.PlaceBid):
            self._spawn(("task", task_id), name, self._bid, action)
        elif isinstance(action, m.StartExecutor):
            self.jobs[task_id] = JobRecord()
            self._spawn(("exec", task_id), name, self._execute, action)
        elif isinstance(action, m.StopTraining):
            self.scopes.cancel(("train", task_id))
        elif isinstance(action, m.StopExecutor):
            self.jobs.pop(task_id, None)
            self.scopes.cancel(("exec", task_id))
            log.info("task %d: executor job ends (%s)", task_id, action.why)
        elif isinstance(action, m.Commit):
            self._spawn(("exec", task_id), name, self._commit, action)
        elif isinstance(action, m.Reveal):
            self._spawn(("exec", task_id), name, self._reveal, action)
        elif isinstance(action, m.ServeSeat):
            self._spawn(("seat", task_id), name, self._serve, action)
        elif isinstance(action, m.EndSeats):
            self.scopes.cancel(("seat", task_id))
        elif isinstance(action, m.ForgetTask):
            self.documents.forget(task_id)
            self._spawn(("files", task_id), name, blocking, self.files.forget, task_id)
        else:
            raise TypeError(f"unknown action {action!r}")

    # -- the actions --

    async def _consider(self, action: m.Consider) -> None:
        try:
            ctx = await self.documents.context(action.task_id, action.prescription_hash)
            job = await blocking(job_of, ctx)
        except DOCUMENT_ERRORS as exc:  # someone else's document: one line, and on to the next task
            found = await blocking(self.documents.dataset_flags, action.task_id)
            if found is not None and found[1]:  # a dataset that does not fit: the anomaly agents say why
                await self._report(m.Assessed(action.task_id, flagged_job(*found)))
                return
            log.warning("task %d: not bidding: %s", action.task_id, exc)
            return
        await self._report(m.Assessed(action.task_id, job))

    async def _bid(self, action: m.PlaceBid) -> None:
        what = f"task {action.task_id}: placeBid"
        try:
            # A bid locks at least the task's collateral floor, whatever its price: check it fits first.
            collateral = await blocking(self.chain.collateral_for, action.task_id, action.price)
            stake = await blocking(self.chain.stake_of)
            if collateral > stake.staked - stake.locked:
                log.info("task %d: not bidding: its collateral of %d wei exceeds this provider's free stake of %d wei",
                         action.task_id, collateral, stake.staked - stake.locked)
                await self._report(m.BidFailed(action.task_id))
                return
            await blocking(self.chain.send, what, self.chain.bid.functions.placeBid(action.task_id, action.price))
        except ClientError as exc:
            log.warning("%s: %s", what, exc)
            await self._report(m.BidFailed(action.task_id))
            return
        log.info("task %d: bid %d wei (%s)", action.task_id, action.price, action.reason)

    async def _execute(self, action: m.StartExecutor) -> None:
        task_id, record = action.task_id, self.jobs.get(action.task_id) or JobRecord()
        try:
            ctx = await self.documents.context(task_id)
            start = None
            if action.resume_from:
                resumed = await blocking(self.chain.checkpoint, task_id, action.resume_from)
                start = await blocking(self.chain.get_blob, bytes(resumed.checkpoint_hash))
        except DOCUMENT_ERRORS as exc:  # the job ends here, and its slot is free for other tasks
            record.error = str(exc)
            log.error("task %d: executor stopped: %s", task_id, exc)
            await self._report(m.TrainingEnded(task_id, str(exc)))
            return
        worker = self._executor_worker(ctx.prescription.I.numeric_profile or DEFAULT_PROFILE)
        try:
            fault = self.config.fault
            log.info("task %d: executing from checkpoint %d%s", task_id, action.resume_from,
                     f" (fault injection: {fault})" if fault else "")
            await self._report(m.ExecutorStarted(task_id, ctx.exact))
            assert self._inbox is not None
            with self.scopes.open(("train", task_id)):
                await executor.train(self.chain, self.files, ctx, worker, self._inbox, record,
                                     resume_from=action.resume_from, committed=action.committed, start=start,
                                     fault=fault)
        finally:
            await close_shielded(worker)  # also ends a job in flight when the task was abandoned

    async def _commit(self, action: m.Commit) -> None:
        task_id, k = action.task_id, action.k
        record = self.jobs.get(task_id)
        try:
            await executor.commit(self.chain, task_id, k, action.digest)
        except ClientError as exc:
            if record is not None:
                record.error = str(exc)
            log.error("task %d: commit of checkpoint %d failed: %s", task_id, k, exc)
            await self._report(m.CommitFailed(task_id, k))
            return
        if record is not None:
            record.committed_at[k] = time.monotonic()
        log.info("task %d: committed checkpoint %d", task_id, k)
        await self._report(m.Committed(task_id, k))

    async def _reveal(self, action: m.Reveal) -> None:
        task_id, k = action.task_id, action.k
        try:
            await executor.reveal(self.chain, self.files, task_id, k, action.digest)
        except (ClientError, OSError) as exc:
            log.error("task %d: reveal of checkpoint %d failed: %s", task_id, k, exc)
            await self._report(m.RevealFailed(task_id, k))
            return
        log.info("task %d: revealed checkpoint %d (0x%s)", task_id, k, action.digest.hex())
        await self._report(m.Revealed(task_id, k))

    async def _serve(self, action: m.ServeSeat) -> None:
        task_id, k, round_ = action.task_id, action.k, action.round

        async def phase_end() -> int:
            return (await blocking(self.chain.checkpoint, task_id, k)).phase_ends

        try:
            ctx = await persist(f"task {task_id}: fetch its prescription and data",
                                lambda: self.documents.context(task_id), now=lambda: chain_now(self.chain),
                                deadline=phase_end)
            assert ctx is not None and self.core is not None
            core = self.core
            await CouncilSeat(self.chain, self.files, ctx, self.council_worker, self.council_turns, k, round_,
                              action.step_index, lambda step: core.vote_on_chain((task_id, k, round_), step),
                              lazy=self.config.council_fault == "lazy").run()
        except (*DOCUMENT_ERRORS, OSError) as exc:  # no vote without documents: the protocol counts a missed vote
            log.warning("task %d: council seat on checkpoint %d round %d: %s", task_id, k, round_, exc)
        except Exception:
            log.exception("task %d: council seat on checkpoint %d round %d failed", task_id, k, round_)
        await self._report(m.SeatEnded(task_id, k, round_))

    # -- workers --

    async def _prepare_spare(self) -> None:
        worker = self._worker_cls(DEFAULT_PROFILE)
        try:
            await blocking(worker.measure_throughput, 0.5)  # warm: a fresh process's first segment costs ~2 s more
        except BaseException as exc:  # cancelled, or failed: a task assigned meanwhile starts its own worker
            await close_shielded(worker)
            if not isinstance(exc, Exception):
                raise
            log.warning("spare training worker: %s", exc)
            return
        if self._spare is None:
            self._spare = worker
        else:
            await close_shielded(worker)

    def _executor_worker(self, profile: str) -> Any:
        spare = self._spare
        if spare is None or spare.profile != profile:  # still starting, or another profile: start its own
            return self._worker_cls(profile)
        self._spare = None
        self._spawn(("spare",), "spare worker", self._prepare_spare)
        return spare

    # -- restart --

    async def _recover(self) -> None:
        """What this provider owed when it stopped, from the chain's record of the last
        RECOVER_TASKS tasks: executor jobs of running tasks (committed checkpoints reloaded from the
        datadir, or retrained: same state and seed, same bytes) with the reveal due now, and seats on
        councils sitting now (votes committed before the stop are reloaded from the datadir)."""
        count = await blocking(self.chain.task_count)
        seats = []
        for task_id in range(max(1, count - RECOVER_TASKS + 1), count + 1):
            task = await blocking(self.chain.task_record, task_id)
            if task.kind != TaskKind.BATCH or task.state not in (TaskState.RUNNING, TaskState.DISPUTED):
                continue
            progress = await blocking(self.chain.progress, task_id)
            if str(task.executor).lower() == self.me and task.state == TaskState.RUNNING:
                k = progress.accepted + 1
                phase = (await blocking(self.chain.checkpoint, task_id, k)).phase if progress.committed >= k else 0
                await self._report(m.ExecutorOwed(task_id, progress.accepted, progress.committed, Phase(phase)))
            checkpoints = (await blocking(self.chain.terms, task_id)).checkpoints
            k = checkpoints if task.state == TaskState.DISPUTED else progress.accepted + 1
            if k > checkpoints:
                continue
            ck = await blocking(self.chain.checkpoint, task_id, k)
            if Phase(ck.phase).sitting and self.me in (str(member).lower() for member in ck.council):
                seats.append((task_id, k, ck.round, ck.step_index))
        if seats:  # which of our votes the chain shows already (a commit sent just before the stop)
            events = await blocking(self.chain.task_events, max(0, self.last_block - LOG_WINDOW + 1), self.last_block)
            for task_id, k, round_, step_index in seats:
                log.info("task %d: resuming a council seat on checkpoint %d (round %d)", task_id, k, round_)
                committed, revealed = my_votes(events, task_id, k, self.me)
                await self._report(m.SeatOwed(task_id, k, round_, step_index, committed, revealed))


__all__ = ["Provider", "ProviderConfig"]
