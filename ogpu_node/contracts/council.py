"""Councils of a batch task's checkpoints (DESIGN.md §6, steps 2-4), as step functions over a TaskContext.

The next block's system call draws c providers by free stake from the RANDAO mix; members commit to
their own result and the state at the drawn step before the executor reveals, then reveal; under
`allclose` they then judge each other's published results (docs/protocol.md, "Lazy members under
allclose"). The tally counts votes (under `exact`, only those with the majority's state hash at the
drawn step; under `allclose`, only members not found lazy) and accepts, rejects or calls a fresh
council.
"""

from __future__ import annotations

from collections import Counter

from eth_abi import encode
from eth_hash.auto import keccak

from ogpu_node.contracts import settlement
from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.commitments import exact_result_commitment
from ogpu_node.contracts.context import TaskContext, release_council, schedule_draw, subject
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.layout import CheckpointEntry, VoteEntry
from ogpu_node.types.protocol import (
    BPS,
    CancelReason,
    DeadlineKind,
    Equivalence,
    Outcome,
    Penalty,
    Phase,
    Role,
    TaskState,
)

# -- members' transactions --


def require_member(ctx: TaskContext, task_id: int, k: int) -> int:
    """The current round of checkpoint k, if the caller sits on its council."""
    round_ = ctx.checkpoint(task_id, k).round
    if ctx.host.caller not in ctx.council(task_id, k, round_):
        raise Revert("Task: caller is not on this checkpoint's council")
    return round_


def member_in_window(
    ctx: TaskContext, task_id: int, k: int, phase: Phase, closed: str
) -> tuple[int, CheckpointEntry, VoteEntry]:
    """The caller's seat on checkpoint k's sitting council while `phase` is open: (round, the
    checkpoint, the caller's vote); else a revert (`closed` when the window is not open)."""
    ctx.existing(task_id)
    round_ = require_member(ctx, task_id, k)
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase != phase or ctx.host.timestamp >= checkpoint.phase_ends:
        raise Revert(closed)
    return round_, checkpoint, ctx.vote(task_id, k, round_, ctx.host.caller)


def commit_result(ctx: TaskContext, task_id: int, k: int, commitment: bytes) -> None:
    """A member commits to its own result and state at the drawn step, before the executor reveals."""
    round_, checkpoint, vote = member_in_window(
        ctx, task_id, k, Phase.COUNCIL_COMMIT, "Task: the council's commit window is closed")
    if vote.commitment != bytes(32):
        raise Revert("Task: result already committed")
    vote.commitment = commitment
    count = checkpoint.commits + 1
    checkpoint.commits = count
    ctx.emit("ResultCommitted", taskId=task_id, k=k, member=ctx.host.caller)
    if count == len(ctx.council(task_id, k, round_)):
        open_window(ctx, task_id, k, round_, Phase.REVEAL)  # all in: the window closes early


def reveal_result(
    ctx: TaskContext, task_id: int, k: int, verdict: bool, result_hash: bytes, step_hash: bytes, salt: bytes,
    fetched: bool,
) -> None:
    """A member opens its commitment; under `exact` its verdict is whether its result matches the
    executor's revealed checkpoint hash, under `allclose` its own comparison of the two."""
    _, checkpoint, vote = member_in_window(ctx, task_id, k, Phase.REVEAL, "Task: the reveal window is closed")
    member = ctx.host.caller
    if not checkpoint.revealed:
        raise Revert("Task: the executor has not revealed this checkpoint yet")
    committed = vote.commitment
    if committed == bytes(32):
        raise Revert("Task: no result committed")
    if vote.revealed:
        raise Revert("Task: result already revealed")
    if exact_result_commitment(task_id, k, member, result_hash, step_hash, salt) != committed:
        raise Revert("Task: reveal does not match the commitment")
    if ctx.terms(task_id).equivalence == Equivalence.EXACT:
        verdict = result_hash == checkpoint.checkpoint_hash
    vote.revealed = True
    vote.verdict = verdict
    vote.step_hash = step_hash
    vote.fetched = fetched
    reveals = checkpoint.reveals + 1
    checkpoint.reveals = reveals
    ctx.emit(
        "ResultRevealed", taskId=task_id, k=k, member=member, verdict=verdict, resultHash=result_hash,
        stepHash=step_hash,
    )
    if reveals == checkpoint.commits:
        tally_if_complete(ctx, task_id, k)


def judge_results(ctx: TaskContext, task_id: int, k: int, verdicts: list[bool]) -> None:
    """allclose: a member that revealed says, for each council member in council order, whether that
    member's published result and state are allclose to its own (its own entry is ignored)."""
    round_, checkpoint, vote = member_in_window(ctx, task_id, k, Phase.JUDGE, "Task: the judging window is closed")
    member = ctx.host.caller
    if not vote.revealed:
        raise Revert("Task: no result revealed")
    if vote.judged:
        raise Revert("Task: results already judged")
    council = list(ctx.council(task_id, k, round_))
    if len(verdicts) != len(council):
        raise Revert(f"Task: expected {len(council)} verdicts, one per council member")
    for other, close in zip(council, verdicts, strict=True):
        if other != member and not close:
            marked = ctx.vote(task_id, k, round_, other)
            if marked.revealed:  # one that never revealed has nothing to judge: it missed its vote
                marked.marks += 1
    vote.judged = True
    judgements = checkpoint.judgements + 1
    checkpoint.judgements = judgements
    ctx.emit("ResultsJudged", taskId=task_id, k=k, member=member, allclose=verdicts)
    if judgements == checkpoint.reveals:
        tally(ctx, task_id, k, round_)


# -- time-triggered steps --


def draw_council(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Deadline: draw checkpoint k's council for `round_` and lock each member's seat stake."""
    host = ctx.host
    if ctx.task(task_id).state not in (TaskState.RUNNING, TaskState.DISPUTED):
        return
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase != Phase.COMMITTED or checkpoint.round != round_:
        return
    terms = ctx.terms(task_id)
    size = terms.council_size
    seed = keccak(host.mix_hash + encode(["uint256", "uint16", "uint8"], [task_id, k, round_]))
    members = sample(ctx, task_id, size, seed)
    if len(members) < size:
        settlement.cancel(ctx, task_id, CancelReason.TOO_FEW_CANDIDATES)
        return
    council = ctx.council(task_id, k, round_)
    history = ctx.history(task_id)
    for member in members:
        ctx.stake.lock(host, member, ctx.params.council_seat_stake)
        council.add(member)
        history.add(member)
    ends = host.timestamp + terms.segment_window
    step_index = int.from_bytes(keccak(seed + b"step")[:8], "big")
    checkpoint.phase = Phase.COUNCIL_COMMIT
    checkpoint.phase_ends = ends
    checkpoint.step_index = step_index
    checkpoint.commits = 0
    checkpoint.reveals = 0
    checkpoint.judgements = 0
    ctx.schedule(ends, DeadlineKind.CLOSE_COMMITS, subject(task_id, k, round_))
    ctx.emit(
        "CouncilDrawn", taskId=task_id, k=k, round=round_, members=members, commitDeadline=ends,
        stepIndex=step_index,
    )


def sample(ctx: TaskContext, task_id: int, size: int, seed: bytes) -> list[bytes]:
    """`size` distinct qualifying providers, drawn with probability proportional to free stake."""
    host, stake = ctx.host, ctx.stake
    task, terms = ctx.task(task_id), ctx.terms(task_id)
    client = task.client
    executor = task.executor
    min_memory = terms.min_memory_mib
    mask = terms.device_mask
    profile = terms.numeric_profile
    seat = ctx.params.council_seat_stake
    candidates: list[tuple[bytes, int]] = []
    for provider in stake.providers(host):
        if provider in (client, executor):
            continue
        resources = stake.resourcesOf(host, provider)
        if resources.memory_mib < min_memory or (mask and not mask >> resources.device_kind & 1):
            continue
        if not stake.stakeOf(host, provider).roles & Role.PROVIDER:
            continue
        if not stake.honours(host, provider, profile):
            continue
        free = stake.free_stake(host, provider)
        if free >= seat:
            candidates.append((provider, free))
    chosen: list[bytes] = []
    for i in range(min(size, len(candidates))):
        total = sum(weight for _, weight in candidates)
        point = int.from_bytes(keccak(seed + i.to_bytes(32, "big")), "big") % total
        for index, (provider, weight) in enumerate(candidates):
            if point < weight:
                chosen.append(provider)
                del candidates[index]
                break
            point -= weight
    return chosen


def close_commits(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Deadline: the commit window of `round_` ended."""
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase == Phase.COUNCIL_COMMIT and checkpoint.round == round_:
        open_window(ctx, task_id, k, round_, Phase.REVEAL)


# The windows of `revealWindow` seconds: the deadline that closes each, its event and deadline field.
WINDOWS = {
    Phase.REVEAL: (DeadlineKind.CLOSE_REVEALS, "RevealPhase", "revealDeadline"),
    Phase.JUDGE: (DeadlineKind.CLOSE_JUDGING, "JudgingPhase", "judgeDeadline"),
}


def open_window(ctx: TaskContext, task_id: int, k: int, round_: int, phase: Phase) -> None:
    kind, event, field = WINDOWS[phase]
    ends = ctx.host.timestamp + ctx.params.reveal_window
    checkpoint = ctx.checkpoint(task_id, k)
    checkpoint.phase = phase
    checkpoint.phase_ends = ends
    ctx.schedule(ends, kind, subject(task_id, k, round_))
    ctx.emit(event, taskId=task_id, k=k, round=round_, **{field: ends})



def close_reveals(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Deadline: the reveal window of `round_` ended (unless the executor's late reveal extended it)."""
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase != Phase.REVEAL or checkpoint.round != round_:
        return
    ends = checkpoint.phase_ends
    if ctx.host.timestamp < ends:  # the executor's late reveal extended the window
        ctx.schedule(ends, DeadlineKind.CLOSE_REVEALS, subject(task_id, k, round_))
        return
    reveals_done(ctx, task_id, k, round_)


def reveals_done(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Under `allclose`, with the executor's and at least two members' results revealed, members judge
    each other; otherwise the tally runs now."""
    checkpoint = ctx.checkpoint(task_id, k)
    if ctx.terms(task_id).equivalence == Equivalence.EXACT or not checkpoint.revealed or checkpoint.reveals < 2:
        tally(ctx, task_id, k, round_)
        return
    open_window(ctx, task_id, k, round_, Phase.JUDGE)


def close_judging(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Deadline: the judging window of `round_` ended."""
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase == Phase.JUDGE and checkpoint.round == round_:
        tally(ctx, task_id, k, round_)


# -- the tally --


def tally_if_complete(ctx: TaskContext, task_id: int, k: int) -> None:
    """Tally as soon as the executor and every member have revealed."""
    checkpoint = ctx.checkpoint(task_id, k)
    if checkpoint.phase != Phase.REVEAL or not checkpoint.revealed:
        return
    round_ = checkpoint.round
    size = len(ctx.council(task_id, k, round_))
    if checkpoint.reveals == size:
        reveals_done(ctx, task_id, k, round_)


def tally(ctx: TaskContext, task_id: int, k: int, round_: int) -> None:
    """Count the round's votes: ≥ 2/3 of the council yes (and attesting a fetch) accepts, ≥ 2/3 no
    rejects, anything else calls a fresh council, up to `max_inconclusive_rounds`. Members who did
    not reveal (or, after an allclose reveal, judge) what they could have are penalised, and so are
    members the others found lazy."""
    council = list(ctx.council(task_id, k, round_))
    size = len(council)
    checkpoint, task = ctx.checkpoint(task_id, k), ctx.task(task_id)
    votes = {member: ctx.vote(task_id, k, round_, member) for member in council}
    judging = checkpoint.phase == Phase.JUDGE
    if checkpoint.revealed:
        absent = [m for m in council if not votes[m].revealed or (judging and not votes[m].judged)]
    else:
        # Without the executor's reveal nobody could reveal; only a missing commit is the member's fault.
        absent = [m for m in council if votes[m].commitment == bytes(32)]
    counted = [m for m in council if votes[m].revealed and m not in absent]
    lazy: list[bytes] = []
    if judging:
        # Marked not allclose by two thirds of the other members: it did not compute what it committed.
        lazy = [m for m in council if votes[m].marks and 3 * votes[m].marks >= 2 * (size - 1)]
        counted = [m for m in counted if m not in lazy]
    release_council(ctx, task_id, k)
    client = task.client
    for member in absent:
        ctx.slashing.penalize(ctx.host, member, task_id, Penalty.MISSED_VOTE, ctx.params.missed_vote_penalty, client)
    for member in lazy:
        punish_lazy(ctx, task_id, k, round_, member, workers=counted)
    if not checkpoint.revealed:
        checkpoint.phase = Phase.NONE
        committed = [m for m in council if votes[m].commitment != bytes(32)]
        settlement.executor_failed(ctx, task_id, k, Penalty.MISSED_CHECKPOINT, beneficiaries=committed)
        return
    if ctx.terms(task_id).equivalence == Equivalence.EXACT and counted:
        # A vote counts only with the majority's state hash at the drawn step: copying a
        # published checkpoint hash without computing does not pass.
        steps = Counter(votes[m].step_hash for m in counted)
        (top, top_count), *rest = steps.most_common()
        if rest and rest[0][1] == top_count:
            counted = []
        else:
            counted = [m for m in counted if votes[m].step_hash == top]
    yes = [m for m in counted if votes[m].verdict]
    no = [m for m in counted if not votes[m].verdict]
    attested = [m for m in counted if votes[m].fetched]
    disputed = task.state == TaskState.DISPUTED
    if 3 * len(yes) >= 2 * size and 3 * len(attested) >= 2 * size:
        if disputed:
            settlement.settle_dispute(ctx, task_id, executor_lost=False, majority=yes)
        else:
            settlement.accept(ctx, task_id, k, yes)
    elif 3 * len(no) >= 2 * size:
        if disputed:
            settlement.settle_dispute(ctx, task_id, executor_lost=True, majority=no)
        else:
            checkpoint.phase = Phase.NONE
            settlement.executor_failed(ctx, task_id, k, Penalty.REJECTED, beneficiaries=no)
    else:
        ctx.emit("CheckpointInconclusive", taskId=task_id, k=k, round=round_)
        inconclusive = checkpoint.inconclusive + 1
        checkpoint.inconclusive = inconclusive
        if inconclusive >= ctx.params.max_inconclusive_rounds:
            if disputed:  # no fault proven either way: settle as confirmed
                settlement.settle(ctx, task_id, Outcome.CONFIRMED)
            else:
                settlement.cancel(ctx, task_id, CancelReason.INCONCLUSIVE)
            return
        checkpoint.round = round_ + 1
        checkpoint.phase = Phase.COMMITTED
        schedule_draw(ctx, task_id, k)


def punish_lazy(ctx: TaskContext, task_id: int, k: int, round_: int, member: bytes, workers: list[bytes]) -> None:
    """A lazy member loses its seat stake to the members that did the work (to the client if none)."""
    host = ctx.host
    if not workers:
        penalty = ctx.slashing.penalize(
            host, member, task_id, Penalty.LAZY_MEMBER, ctx.params.council_seat_stake, ctx.task(task_id).client)
    else:
        penalty = ctx.slashing.penalize(
            host, member, task_id, Penalty.LAZY_MEMBER, ctx.params.council_seat_stake, TASK, reward_bps=BPS)
        each = penalty // len(workers)
        for worker in workers:
            ctx.pay(worker, each)
        ctx.burn(task_id, penalty - each * len(workers))
    ctx.emit("MemberFoundLazy", taskId=task_id, k=k, round=round_, member=member, penalty=penalty)
