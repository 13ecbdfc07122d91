"""One council seat (docs/tasks.md, "Council duty"): re-run segment k from ckpt_{k-1} in the
council worker, then commit H(result) and H(state at the drawn step) before the executor reveals.
Under `exact` the member waits for the executor's reveal to attest that it could fetch the blob and
reveals; under `allclose` it compares its result with the executor's, publishes its own result and
state, reveals its verdict, then judges the other members' published results (docs/protocol.md,
"Lazy members under allclose"). The vote (and under allclose what it committed to) is written to the
datadir before it is committed, so a restarted provider reveals what it committed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider.chain import ChainClient, Event
from ogpu_node.apps.provider.concurrency import blocking
from ogpu_node.apps.provider.context import TaskContext
from ogpu_node.apps.provider.executor import account_bytes, chain_now
from ogpu_node.apps.provider.retry import persist
from ogpu_node.apps.provider.store import ProviderFiles, Vote
from ogpu_node.contracts.commitments import checkpoint_commitment, exact_result_commitment
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import drawn_step, segment_bounds
from ogpu_node.types.protocol import Phase, TaskState
from ogpu_node.types.records import CheckpointRecord, TaskRecord

if TYPE_CHECKING:
    from ogpu_node.compute import Worker

log = logging.getLogger("ogpu.provider")
POLL_S = 0.3
WAIT_LIMIT_S = 24 * 3600
LOOKBACK_BLOCKS = 10_000  # how far back a member reads the others' reveals (made within the reveal window just past)
COUNCIL_FAULTS = ("lazy",)  # testing only: vote without computing


class Abandoned(Exception):
    """The seat no longer matters: its round is over or the task ended."""


def revealed_hash(task_id: int, k: int, checkpoint: CheckpointRecord, task: TaskRecord) -> bytes | None:
    """The executor's revealed H(ckpt_k), accepted only if it opens the current commitment (a
    replaced executor's stale reveal does not)."""
    digest = bytes(checkpoint.checkpoint_hash)
    if digest == bytes(32):
        return None
    executor = bytes.fromhex(str(task.executor).removeprefix("0x"))
    return digest if checkpoint_commitment(task_id, k, executor, digest) == bytes(checkpoint.commitment) else None


def revealed_results(events: list[Event], task_id: int, k: int, round_: int) -> dict[str, tuple[bytes, bytes]]:
    """member (lower-case hex) → (H(result), H(state)) its ResultRevealed published in this round,
    from ``events`` in chain order (the round starts at its CouncilDrawn)."""
    out: dict[str, tuple[bytes, bytes]] = {}
    for event in events:
        a = event.args
        if a.get("taskId") != task_id or a.get("k") != k:
            continue
        if event.name == "CouncilDrawn":
            out = {} if a.get("round") == round_ else out
        elif event.name == "ResultRevealed":
            out[str(a["member"]).lower()] = (bytes(a["resultHash"]), bytes(a["stepHash"]))
    return out


def allclose_verdict(ctx: TaskContext, mine: bytes, theirs: bytes) -> bool:
    from ogpu_node.compute import InvalidCheckpoint, equivalence

    e = ctx.prescription.e
    assert e.rtol is not None and e.atol is not None
    try:
        return equivalence.allclose(mine, theirs, e.rtol, e.atol)
    except InvalidCheckpoint:
        return False


class CouncilSeat:
    """Seat (task, k, round); ``on_chain(step)`` says whether the chain's logs show our ``commit`` or
    ``reveal`` already (a receipt that came late)."""

    def __init__(self, chain: ChainClient, files: ProviderFiles, ctx: TaskContext, worker: Worker,
                 limiter: trio.CapacityLimiter, k: int, round_: int, step_index: int,
                 on_chain: Callable[[str], bool], lazy: bool = False) -> None:
        self.chain, self.files, self.ctx, self.worker, self.limiter = chain, files, ctx, worker, limiter
        self.task_id, self.k, self.round, self.step_index = ctx.task_id, k, round_, step_index
        self.on_chain = on_chain
        self.lazy = lazy  # testing only: commit and judge without computing (councils must catch it)
        self.outcome: str | None = None
        self.start: bytes | None = None  # ckpt_{k-1} the re-run started from (None: fresh weights)
        self.result: bytes | None = None  # our re-run's result, when computed in this process

    async def run(self) -> str:
        task_id, k = self.task_id, self.k
        try:
            await self._vote()
        except Abandoned as exc:
            self.outcome = f"abandoned: {exc}"
            log.info("task %d: council duty on checkpoint %d round %d ends: %s", task_id, k, self.round, exc)
        except Exception as exc:  # noqa: BLE001 — this seat fails alone, with its reason
            self.outcome = f"failed: {exc}"
            log.error("task %d: council duty on checkpoint %d round %d failed: %s", task_id, k, self.round, exc)
        return self.outcome or ""

    async def _vote(self) -> None:
        task_id, k, fns, me = self.task_id, self.k, self.chain.task.functions, account_bytes(self.chain)
        saved = await blocking(self.files.load_vote, task_id, k, self.round)
        own: tuple[bytes, bytes] | None = None  # allclose: the result and state committed to
        if saved is not None:
            vote = saved
            log.info("task %d: council resumes its vote on checkpoint %d round %d", task_id, k, self.round)
            if not self.ctx.exact and not self.lazy:
                own = await blocking(self.files.load_committed, task_id, k, self.round)
        elif self.lazy:
            vote = Vote(os.urandom(32), os.urandom(32), os.urandom(32))
            log.warning("task %d: council votes on checkpoint %d without computing (--council-fault lazy)", task_id, k)
        else:
            result, step_hash, state = await self._recompute(keep_state=not self.ctx.exact)
            vote = Vote(merkle_root(result), step_hash, os.urandom(32))
            if state is not None:
                own = (result, state)
                await blocking(self.files.save_committed, task_id, k, self.round, result, state)
        await blocking(self.files.save_vote, task_id, k, self.round, vote)
        commitment = exact_result_commitment(task_id, k, me, vote.result, vote.step, vote.salt)
        await self._send("commit", f"commitResult {k}", fns.commitResult(task_id, k, commitment))
        theirs = await self._wait_phase(Phase.REVEAL, need_reveal=True)
        assert theirs is not None
        published = await self._fetch(theirs)
        fetched = published is not None
        ours = own[0] if own is not None else self.result
        if published is not None and ours is not None:
            await self._flag(published, ours)
        if self.ctx.exact:
            verdict = vote.result == theirs
        elif self.lazy:
            verdict = True
        else:
            verdict = published is not None and own is not None and await blocking(
                allclose_verdict, self.ctx, own[0], published)
            if own is not None:
                await self._publish(own)
        await self._send("reveal", f"revealResult {k}",
                         fns.revealResult(task_id, k, verdict, vote.result, vote.step, vote.salt, fetched))
        self.outcome = "yes" if verdict else "no"
        log.info("task %d: council voted %s on checkpoint %d round %d", task_id, self.outcome, k, self.round)
        if not self.ctx.exact:
            await self._judge(own)

    async def _flag(self, published: bytes, ours: bytes) -> None:
        """The anomaly agent (docs/tasks.md, "Anomaly agents"): warn of what the executor's checkpoint
        shows before any verdict — NaN/Inf, norm growth, a loss curve off our re-run's."""
        from ogpu_node.apps.anomalies import rerun_anomalies

        label = f"checkpoint {self.k}"
        for flag in await blocking(rerun_anomalies, self.start, published, ours, self.ctx.prescription.e, label):
            log.warning("task %d: anomaly: %s", self.task_id, flag)

    async def _publish(self, own: tuple[bytes, bytes]) -> None:
        """Put our result and state where the other members can fetch them (after the commit window:
        before it, a lazy member could copy them)."""
        for what, data in zip(("result", "state"), own, strict=True):
            label = f"task {self.task_id}: publish council {what} {self.k}"
            await persist(label, lambda data=data, label=label: blocking(self.chain.put_blob, label, data),
                          now=lambda: chain_now(self.chain), deadline=self._phase_end)

    async def _judge(self, own: tuple[bytes, bytes] | None) -> None:
        """allclose: say of each other member whether its published result and state are allclose to
        ours; a member that did not reveal has nothing to judge."""
        task_id, k = self.task_id, self.k
        try:
            await self._wait_phase(Phase.JUDGE, need_reveal=False)
        except Abandoned:
            return  # tallied without judging: fewer than two members revealed
        council = [str(a).lower() for a in (await blocking(self.chain.checkpoint, task_id, k)).council]
        head = await blocking(self.chain.head)
        events = await blocking(self.chain.task_events, max(0, head - LOOKBACK_BLOCKS + 1), head)
        revealed = revealed_results(events, task_id, k, self.round)
        me = self.chain.address.lower()
        verdicts = []
        for member in council:
            pair = revealed.get(member)
            if member == me or pair is None or self.lazy or own is None:
                verdicts.append(True)
            else:
                verdicts.append(await self._close_to_ours(own, pair))
        await self._send("judge", f"judgeResults {k}", self.chain.task.functions.judgeResults(task_id, k, verdicts))
        marked = [member for member, close in zip(council, verdicts, strict=True) if not close]
        log.info("task %d: council judged checkpoint %d round %d: %s", task_id, k, self.round,
                 "all allclose" if not marked else "not allclose: " + ", ".join(marked))

    async def _close_to_ours(self, own: tuple[bytes, bytes], hashes: tuple[bytes, bytes]) -> bool:
        for mine, digest in zip(own, hashes, strict=True):
            theirs = await self._fetch(digest)
            if theirs is None or not await blocking(allclose_verdict, self.ctx, mine, theirs):
                return False
        return True

    async def _current(self) -> tuple[CheckpointRecord, TaskRecord]:
        """This round's checkpoint record and the task; Abandoned once the round or the task is over."""
        checkpoint = await blocking(self.chain.checkpoint, self.task_id, self.k)
        if checkpoint.round != self.round or not Phase(checkpoint.phase).sitting:
            raise Abandoned(f"round {self.round} of checkpoint {self.k} is over")
        task = await blocking(self.chain.task_record, self.task_id)
        if task.state in (TaskState.CANCELLED, TaskState.SETTLED):
            raise Abandoned(f"task {self.task_id} has ended")
        return checkpoint, task

    async def _phase_end(self) -> int:
        return (await blocking(self.chain.checkpoint, self.task_id, self.k)).phase_ends

    async def _wait_phase(self, phase: Phase, need_reveal: bool) -> bytes | None:
        """Wait until checkpoint k is in ``phase`` (and revealed, if asked); the revealed hash."""
        with trio.move_on_after(WAIT_LIMIT_S):
            while True:
                try:
                    checkpoint, task = await self._current()
                    if checkpoint.phase == phase:
                        digest = revealed_hash(self.task_id, self.k, checkpoint, task)
                        if digest is not None or not need_reveal:
                            return digest
                except ClientError:
                    pass  # the node did not answer: ask again
                await trio.sleep(POLL_S)
        raise ClientError(f"timed out after {WAIT_LIMIT_S}s waiting for phase {phase.label} of checkpoint {self.k}")

    async def _recompute(self, keep_state: bool) -> tuple[bytes, bytes, bytes | None]:
        """Re-run segment k from the executor's revealed ckpt_{k-1}: (result, state hash at the drawn
        step, that state if kept)."""
        task_id, k, p = self.task_id, self.k, self.ctx.prescription
        start = self.ctx.initial
        if k > 1:
            previous = bytes((await blocking(self.chain.checkpoint, task_id, k - 1)).checkpoint_hash)
            start = await persist(f"task {task_id}: fetch checkpoint {k - 1}",
                                  lambda: blocking(self.chain.get_blob, previous),
                                  now=lambda: chain_now(self.chain), deadline=self._phase_end)
        await self._current()
        self.start = start
        first, last = segment_bounds(p, k)
        step = drawn_step(p, k, self.step_index)
        # One council worker: seats re-run one after another (on a 2-core machine a second would
        # only slow the executor's training).
        run = await blocking(self.worker.train, self.ctx.spec, start, last - first, hash_steps=[step],
                             keep_states=keep_state, limiter=self.limiter)
        log.info("task %d: council re-ran checkpoint %d round %d in %.1fs (cpu %.1fs): 0x%s", task_id, k,
                 self.round, run.wall_s, run.cpu_s, merkle_root(run.checkpoint).hex())
        self.result = run.checkpoint
        return run.checkpoint, run.state_hashes[step], run.states.get(step)

    async def _send(self, step: str, what: str, call: object) -> None:
        label = f"task {self.task_id}: {what}"

        async def done() -> bool:
            return self.on_chain(step)

        await persist(label, lambda: blocking(self.chain.send, label, call), now=lambda: chain_now(self.chain),
                      deadline=self._phase_end, done=done)

    async def _fetch(self, digest: bytes) -> bytes | None:
        """A published checkpoint (the executor's, or a member's), retried until a few seconds before
        the phase ends."""
        async def deadline() -> int:
            return await self._phase_end() - 5

        try:
            return await persist(f"task {self.task_id}: fetch checkpoint {self.k}",
                                 lambda: blocking(self.chain.get_blob, digest), now=lambda: chain_now(self.chain),
                                 deadline=deadline)
        except ClientError as exc:
            log.warning("task %d: cannot fetch checkpoint 0x%s of round %d: %s", self.task_id, digest.hex(), self.round,
                        exc)
            return None


__all__ = ["COUNCIL_FAULTS", "Abandoned", "CouncilSeat", "allclose_verdict", "revealed_hash", "revealed_results"]
