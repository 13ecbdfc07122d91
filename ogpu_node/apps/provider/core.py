"""The provider's decisions, sans-IO: chain events and observations in, actions out (as h11 does
for HTTP). `ProviderCore.receive(item) -> list[Action]` holds every rule of docs/tasks.md
"Provider" that depends only on what has been seen: which task to consider, the job limit, when
an auction was won or lost, when to start or stop executing, the order of commits, when to reveal
(once the reveal phase opens: the council has committed; once per checkpoint), which council seats to serve, and what an ended task lets go of. The service
(`app.Provider`) does the I/O and reports back; nothing here blocks, sleeps or touches the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ogpu_node.apps.provider import messages as m
from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.types.protocol import Phase, TaskKind

log = logging.getLogger("ogpu.provider")

REVEAL_PHASE = "reveal-phase"  # what opens checkpoint k's reveal
VERDICTS = ("CheckpointAccepted", "CheckpointRejected", "CheckpointMissed", "CheckpointInconclusive")
ENDINGS = ("TaskCancelled", "TaskSettled")

Seat = tuple[int, int, int]  # (task, k, round)


@dataclass
class Execution:
    """One task this provider executes: where its commits and reveals stand."""

    committed_before: int = 0  # committed before a restart: reloaded or retrained, never re-sent
    exact: bool | None = None  # known once the job has its prescription
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # trained, waiting to be committed
    committing: int | None = None  # the commit in flight: one at a time, in order
    committed: dict[int, bytes] = field(default_factory=dict)
    training_stopped: bool = False
    failed: bool = False  # its job ended with an error (documents, worker): it holds no job slot
    triggers: set[tuple[int, str]] = field(default_factory=set)  # (k, REVEAL_PHASE) seen
    revealing: set[int] = field(default_factory=set)  # reveals sent or in flight


@dataclass
class SeatVotes:
    """Which of our votes on a seat the chain's logs show (a late receipt still counts)."""

    committed: bool = False
    revealed: bool = False
    judged: bool = False


class ProviderCore:
    def __init__(self, me: str, strategy: BidStrategy, resources: Resources, max_jobs: int) -> None:
        self.me = me.lower()
        self.strategy = strategy
        self.resources = resources
        self.max_jobs = max_jobs  # executor jobs running or bid for, beside council work
        self.bids: dict[int, int] = {}  # task → our price, until the auction is decided
        self.executing: dict[int, Execution] = {}
        self.seats: dict[Seat, SeatVotes] = {}
        self.ended: set[int] = set()  # cancelled or settled: no more work for them
        self._chain: dict[str, Callable[[dict[str, Any]], list[m.Action]]] = {
            "TaskSubmitted": self._submitted, "TaskAssigned": self._assigned,
            "ExecutorReplaced": self._replaced, "CouncilDrawn": self._drawn, "RevealPhase": self._reveal_phase,
            "ResultCommitted": self._vote_seen, "ResultRevealed": self._vote_seen, "ResultsJudged": self._vote_seen,
            **{name: self._verdict for name in VERDICTS}, **{name: self._ended for name in ENDINGS},
        }

    # -- entry points --

    def receive(self, item: Event | m.Observation) -> list[m.Action]:
        """The actions ``item`` calls for; a malformed item is logged and skipped."""
        try:
            return self.handle(item)
        except Exception:  # one bad event must not stop a provider that owes commits and votes
            if isinstance(item, Event):
                log.exception("event %s at block %d", item.name, item.block)
            else:
                log.exception("observation %r", item)
            return []

    def handle(self, item: Event | m.Observation) -> list[m.Action]:
        if isinstance(item, Event):
            handler = self._chain.get(item.name)
            return [] if handler is None else handler(item.args | {"_name": item.name})
        return self._observe(item)

    def vote_on_chain(self, seat: Seat, step: str) -> bool:
        """Whether the chain's logs show our ``commit``, ``reveal`` or ``judge`` on ``seat``."""
        votes = self.seats.get(seat)
        return votes is not None and getattr(votes, {"commit": "committed", "reveal": "revealed", "judge": "judged"}[step])

    @property
    def busy(self) -> int:
        """Job slots taken: executions whose job has not failed, and bids not yet decided. A failed
        job still owes the reveals it committed, but no core: a task whose documents or data broke
        its job must not keep this provider from bidding until the chain replaces it."""
        return sum(not ex.failed for ex in self.executing.values()) + len(self.bids)

    # -- chain events --

    def _mine(self, address: str) -> bool:
        return address.lower() == self.me

    def _submitted(self, a: dict[str, Any]) -> list[m.Action]:
        task_id = a["taskId"]
        if a["kind"] != TaskKind.BATCH or self._mine(a["client"]) or task_id in self.ended:
            return []
        return [m.Consider(task_id, bytes(a["prescriptionHash"]))]

    def _assigned(self, a: dict[str, Any]) -> list[m.Action]:
        task_id, won = a["taskId"], self._mine(a["executor"])
        if self.bids.pop(task_id, None) is not None:
            self.strategy.record(won)
            log.info("task %d: %s the auction (win rate %.0f%%, margin now %.0f%%)", task_id,
                     "won" if won else "lost", 100 * (self.strategy.win_rate or 0), 100 * self.strategy.margin)
        return self._start(task_id, 0) if won else []

    def _replaced(self, a: dict[str, Any]) -> list[m.Action]:
        task_id = a["taskId"]
        out: list[m.Action] = []
        if self._mine(a["previous"]) and self.executing.pop(task_id, None) is not None:
            out.append(m.StopExecutor(task_id, "replaced"))
        if self._mine(a["executor"]):
            out += self._start(task_id, a["resumeFrom"])
        return out

    def _drawn(self, a: dict[str, Any]) -> list[m.Action]:
        task_id, k, round_ = a["taskId"], a["k"], a["round"]
        out: list[m.Action] = []
        if any(self._mine(member) for member in a["members"]) and task_id not in self.ended:
            seat = (task_id, k, round_)
            if seat not in self.seats:
                self.seats[seat] = SeatVotes()
                log.info("task %d: drawn for the council of checkpoint %d (round %d)", task_id, k, round_)
                out.append(m.ServeSeat(task_id, k, round_, a["stepIndex"]))
        return out

    def _reveal_phase(self, a: dict[str, Any]) -> list[m.Action]:
        return self._trigger(a["taskId"], a["k"], REVEAL_PHASE)

    def _vote_seen(self, a: dict[str, Any]) -> list[m.Action]:
        if self._mine(a["member"]):
            for (task_id, k, _round), votes in self.seats.items():  # one round of k sits at a time
                if (task_id, k) == (a["taskId"], a["k"]):
                    if a["_name"] == "ResultCommitted":
                        votes.committed = True
                    elif a["_name"] == "ResultRevealed":
                        votes.revealed = True
                    else:
                        votes.judged = True
        return []

    def _verdict(self, a: dict[str, Any]) -> list[m.Action]:
        detail = {key: v for key, v in a.items() if key not in ("taskId", "k", "_name")}
        log.info("task %d: checkpoint %d %s %s", a["taskId"], a["k"],
                 a["_name"].removeprefix("Checkpoint").lower(), detail)
        return []

    def _ended(self, a: dict[str, Any]) -> list[m.Action]:
        task_id = a["taskId"]
        self.ended.add(task_id)
        self.bids.pop(task_id, None)
        for seat in [s for s in self.seats if s[0] == task_id]:
            del self.seats[seat]
        out: list[m.Action] = []
        if self.executing.pop(task_id, None) is not None:
            out.append(m.StopExecutor(task_id, a["_name"].removeprefix("Task").lower()))
        return [*out, m.EndSeats(task_id), m.ForgetTask(task_id)]

    # -- observations --

    def _observe(self, item: m.Observation) -> list[m.Action]:
        task_id = item.task_id
        if isinstance(item, m.Assessed):
            return self._assessed(item)
        if isinstance(item, m.BidFailed):
            self.bids.pop(task_id, None)
            return []
        if isinstance(item, m.ExecutorOwed):
            return self._owed(item)
        if isinstance(item, m.SeatOwed):
            seat = (task_id, item.k, item.round)
            if task_id in self.ended or seat in self.seats:
                return []
            self.seats[seat] = SeatVotes(item.committed, item.revealed)
            return [m.ServeSeat(task_id, item.k, item.round, item.step_index, resuming=True)]
        if isinstance(item, m.SeatEnded):
            self.seats.pop((task_id, item.k, item.round), None)
            return []
        ex = self.executing.get(task_id)
        if ex is None:  # replaced or ended meanwhile: its job's reports no longer matter
            return []
        if isinstance(item, m.ExecutorStarted):
            ex.exact = item.exact
            return self._reveals_due(task_id, ex)
        if isinstance(item, m.CheckpointTrained):
            return self._trained(task_id, ex, item.k, item.digest)
        if isinstance(item, m.Committed):
            ex.committing = None
            ex.committed[item.k] = next((d for k, d in ex.pending if k == item.k), b"")
            ex.pending = [(k, d) for k, d in ex.pending if k != item.k]
            return [*self._reveals_due(task_id, ex), *self._next_commit(task_id, ex)]
        if isinstance(item, m.CommitFailed):
            ex.committing, ex.pending, ex.training_stopped = None, [], True
            return [m.StopTraining(task_id)]
        if isinstance(item, m.RevealFailed):
            ex.revealing.discard(item.k)  # a later trigger (a fresh council) tries again
        if isinstance(item, m.TrainingEnded) and item.error is not None:
            ex.failed = True
        if isinstance(item, (m.Revealed, m.RevealFailed, m.TrainingEnded)):
            return []
        raise TypeError(f"unknown observation {item!r}")

    def _assessed(self, item: m.Assessed) -> list[m.Action]:
        task_id = item.task_id
        if task_id in self.ended:
            return []
        if self.busy >= self.max_jobs:
            log.info("task %d: not bidding: busy (%d running or pending of %d)", task_id, self.busy, self.max_jobs)
            return []
        flags = self.strategy.anomalies(item.job, self.resources)
        for flag in flags:
            log.warning("task %d: anomaly: %s", task_id, flag)
        price, reason = self.strategy.decide(item.job, self.resources)
        if price is None or flags:
            log.info("task %d: not bidding: %s", task_id, reason if price is None else f"{len(flags)} anomaly flag(s)")
            return []
        self.bids[task_id] = price  # holds a job slot until the auction is decided
        return [m.PlaceBid(task_id, price, reason)]

    def _owed(self, item: m.ExecutorOwed) -> list[m.Action]:
        task_id, k = item.task_id, item.accepted + 1
        log.info("task %d: resuming as executor (%d accepted, %d committed)", task_id, item.accepted, item.committed)
        out = self._start(task_id, item.accepted, item.committed, resuming=True)
        ex = self.executing.get(task_id)
        if ex is not None and item.committed >= k:  # the council may already wait for our reveal
            if item.phase == Phase.REVEAL:
                ex.triggers.add((k, REVEAL_PHASE))
        return out

    # -- the executor's commits and reveals --

    def _start(self, task_id: int, resume_from: int, committed: int = 0, resuming: bool = False) -> list[m.Action]:
        if task_id in self.ended or task_id in self.executing:
            return []
        self.executing[task_id] = Execution(committed_before=committed)
        return [m.StartExecutor(task_id, resume_from, committed, resuming)]

    def _trained(self, task_id: int, ex: Execution, k: int, digest: bytes) -> list[m.Action]:
        if k <= ex.committed_before:  # committed before a restart: the chain holds it already
            ex.committed[k] = digest
            return self._reveals_due(task_id, ex)
        if ex.training_stopped:
            return []
        ex.pending.append((k, digest))
        return self._next_commit(task_id, ex)

    def _next_commit(self, task_id: int, ex: Execution) -> list[m.Action]:
        if ex.committing is not None or not ex.pending or ex.training_stopped:
            return []
        k, digest = ex.pending[0]
        ex.committing = k
        return [m.Commit(task_id, k, digest)]

    def _trigger(self, task_id: int, k: int, kind: str) -> list[m.Action]:
        ex = self.executing.get(task_id)
        if ex is None:
            return []
        ex.triggers.add((k, kind))
        return self._reveals_due(task_id, ex)

    def _reveals_due(self, task_id: int, ex: Execution) -> list[m.Action]:
        if ex.exact is None:
            return []
        out: list[m.Action] = []
        for k, digest in sorted(ex.committed.items()):
            if (k, REVEAL_PHASE) in ex.triggers and k not in ex.revealing:
                ex.revealing.add(k)  # once per checkpoint: a fresh council re-checks the same reveal
                out.append(m.Reveal(task_id, k, digest))
        return out


def my_votes(events: list[Event], task_id: int, k: int, me: str) -> tuple[bool, bool]:
    """Whether ``events`` (in chain order) show our commit and our reveal on checkpoint k's council
    since it was last drawn: what a restarted member sent before it stopped."""
    committed = revealed = False
    for event in events:
        a = event.args
        if a.get("taskId") != task_id or a.get("k") != k:
            continue
        if event.name == "CouncilDrawn":
            committed = revealed = False  # a fresh round
        elif event.name in ("ResultCommitted", "ResultRevealed") and str(a["member"]).lower() == me.lower():
            committed = committed or event.name == "ResultCommitted"
            revealed = revealed or event.name == "ResultRevealed"
    return committed, revealed


__all__ = ["REVEAL_PHASE", "Execution", "ProviderCore", "SeatVotes", "my_votes"]
