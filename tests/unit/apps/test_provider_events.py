"""The provider's decision core, event by event: which chain event or report of its own work calls
for which action (no node, no training, nothing patched: plain objects in, plain actions out)."""

from __future__ import annotations

import logging

import pytest

from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.core import ProviderCore, my_votes
from ogpu_node.apps.provider.messages import (
    Assessed,
    BidFailed,
    CheckpointTrained,
    Commit,
    CommitFailed,
    Committed,
    Consider,
    EndSeats,
    ExecutorOwed,
    ExecutorStarted,
    ForgetTask,
    PlaceBid,
    Reveal,
    RevealFailed,
    SeatEnded,
    SeatOwed,
    ServeSeat,
    StartExecutor,
    StopExecutor,
    StopTraining,
    TrainingEnded,
)
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources
from ogpu_node.types.protocol import DEFAULT_PROFILE, Phase, TaskKind

ME = "0x" + "1A" * 20  # checksummed addresses compare by their lower case
OTHER = "0x" + "ab" * 20
RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=(DEFAULT_PROFILE,))
D1, D2, D3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def make_core(max_jobs: int = 3) -> ProviderCore:
    return ProviderCore(ME, BidStrategy(cost_per_second=10**15, margin=0.2), RES, max_jobs)


def event(name: str, block: int = 1, **args) -> Event:
    return Event(name, args, block, 0)


def job(**changes) -> Job:
    base = dict(devices=("cpu",), numeric_profile=DEFAULT_PROFILE, memory_mib=512.0, total_flops=3e9,
                segment_flops=1e9, segment_window_s=60, max_payment=10**18)
    return Job(**{**base, **changes})


def assigned(task_id: int, executor: str = ME.lower()) -> Event:
    return event("TaskAssigned", taskId=task_id, executor=executor, price=100, seed=b"\x00" * 32)


def drawn(task_id: int, k: int, round_: int = 0, members=(OTHER,), step_index: int = 1) -> Event:
    return event("CouncilDrawn", taskId=task_id, k=k, round=round_, members=list(members), commitDeadline=0,
                 stepIndex=step_index)


def reveal_phase(task_id: int, k: int, round_: int = 0) -> Event:
    return event("RevealPhase", taskId=task_id, k=k, round=round_, revealDeadline=0)


def executing(core: ProviderCore, task_id: int, exact: bool) -> None:
    assert core.receive(assigned(task_id)) == [StartExecutor(task_id)]
    assert core.receive(ExecutorStarted(task_id, exact)) == []


# -- bidding --

def test_a_batch_task_of_another_client_is_considered():
    core = make_core()
    actions = [
        *core.receive(event("TaskSubmitted", taskId=1, client=OTHER, kind=TaskKind.BATCH, prescriptionHash=D1)),
        *core.receive(event("TaskSubmitted", taskId=2, client=ME, kind=TaskKind.BATCH, prescriptionHash=D2)),
        *core.receive(event("TaskSubmitted", taskId=3, client=OTHER, kind=TaskKind.STREAM, prescriptionHash=D3)),
    ]
    assert actions == [Consider(1, D1)]


def test_an_auction_won_starts_the_executor_and_moves_the_margin():
    core = make_core()
    assert core.receive(Assessed(5, job())) == [PlaceBid(5, int(3 * 10**15 * 1.2), "margin 20%, estimated 3.0s of compute")]
    assert core.receive(Assessed(6, job()))[0].task_id == 6
    margin = core.strategy.margin
    assert core.receive(assigned(5)) == [StartExecutor(5)]
    assert core.strategy.margin > margin and 5 not in core.bids
    assert core.receive(assigned(6, executor=OTHER)) == []  # lost: nothing to run
    assert core.strategy.win_rate == 0.5 and core.bids == {}


def test_no_bid_beyond_the_job_limit_running_plus_pending(caplog):
    core = make_core(max_jobs=2)
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert len(core.receive(Assessed(1, job()))) == 1
    assert core.receive(assigned(1)) == [StartExecutor(1)]  # now running: still holds its slot
    assert len(core.receive(Assessed(2, job()))) == 1
    assert core.receive(Assessed(3, job())) == []
    assert "task 3: not bidding: busy (2 running or pending of 2)" in caplog.text
    assert core.receive(BidFailed(2)) == []  # the bid never landed: its slot is free again
    assert [a.task_id for a in core.receive(Assessed(3, job()))] == [3]


def test_an_infeasible_or_unprofitable_task_gets_no_bid(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert core.receive(Assessed(1, job(devices=("cuda",)))) == []
    assert core.receive(Assessed(2, job(max_payment=1))) == []
    assert "task 1: not bidding: needs a device in cuda" in caplog.text
    assert "task 2: not bidding: unprofitable" in caplog.text
    assert core.bids == {}


# -- the executor: commits in order, reveals in the order of its equivalence --

def test_commits_go_out_in_order_one_at_a_time():
    core = make_core()
    executing(core, 4, exact=True)
    assert core.receive(CheckpointTrained(4, 1, D1)) == [Commit(4, 1, D1)]
    assert core.receive(CheckpointTrained(4, 2, D2)) == []  # training runs ahead; commit 1 is in flight
    assert core.receive(CheckpointTrained(4, 3, D3)) == []
    assert core.receive(Committed(4, 1)) == [Commit(4, 2, D2)]
    assert core.receive(Committed(4, 2)) == [Commit(4, 3, D3)]
    assert core.receive(Committed(4, 3)) == []
    assert core.receive(TrainingEnded(4)) == []


def test_exact_reveals_once_the_council_has_committed_once_per_checkpoint():
    core = make_core()
    executing(core, 8, exact=True)
    core.receive(CheckpointTrained(8, 1, D1))
    assert core.receive(Committed(8, 1)) == []
    assert core.receive(drawn(8, 1)) == []  # exact: the council commits first
    assert core.receive(reveal_phase(8, 1)) == [Reveal(8, 1, D1)]
    assert core.receive(reveal_phase(8, 1, round_=1)) == []  # a fresh council re-checks the same reveal
    core.receive(CheckpointTrained(8, 2, D2))  # commit 2 in flight
    assert core.receive(reveal_phase(8, 2)) == []  # asked before the commit landed: revealed once it does
    assert core.receive(Committed(8, 2)) == [Reveal(8, 2, D2)]


def test_allclose_also_reveals_only_once_the_council_has_committed():
    core = make_core()
    executing(core, 9, exact=False)
    core.receive(CheckpointTrained(9, 1, D1))
    core.receive(Committed(9, 1))
    assert core.receive(drawn(9, 1)) == []  # members bind their own results first
    assert core.receive(reveal_phase(9, 1)) == [Reveal(9, 1, D1)]
    assert core.receive(drawn(9, 1, round_=1)) == []


def test_the_equivalence_is_known_before_reveals_are_ordered():
    core = make_core()
    assert core.receive(assigned(3)) == [StartExecutor(3)]
    core.receive(CheckpointTrained(3, 1, D1))
    core.receive(Committed(3, 1))
    assert core.receive(reveal_phase(3, 1)) == []  # the job has not read its prescription yet
    assert core.receive(ExecutorStarted(3, exact=False)) == [Reveal(3, 1, D1)]


def test_a_failed_reveal_is_tried_again_by_a_fresh_council():
    core = make_core()
    executing(core, 2, exact=False)
    core.receive(CheckpointTrained(2, 1, D1))
    core.receive(Committed(2, 1))
    assert core.receive(reveal_phase(2, 1)) == [Reveal(2, 1, D1)]
    assert core.receive(RevealFailed(2, 1)) == []
    assert core.receive(reveal_phase(2, 1, round_=1)) == [Reveal(2, 1, D1)]


def test_a_failed_commit_stops_training_but_owed_reveals_go_on():
    core = make_core()
    executing(core, 6, exact=True)
    core.receive(CheckpointTrained(6, 1, D1))
    core.receive(CheckpointTrained(6, 2, D2))
    assert core.receive(Committed(6, 1)) == [Commit(6, 2, D2)]
    assert core.receive(CommitFailed(6, 2)) == [StopTraining(6)]
    assert core.receive(CheckpointTrained(6, 3, D3)) == []  # later checkpoints cannot follow it
    assert core.receive(reveal_phase(6, 1)) == [Reveal(6, 1, D1)]
    assert core.receive(reveal_phase(6, 2)) == []


def test_a_replaced_executor_stops_and_its_replacement_resumes():
    core = make_core()
    executing(core, 5, exact=True)
    replaced = dict(taskId=5, price=90, resumeFrom=2)
    assert core.receive(event("ExecutorReplaced", previous=ME, executor=OTHER, **replaced)) == [StopExecutor(5, "replaced")]
    assert core.receive(CheckpointTrained(5, 3, D3)) == []  # the old job's last report: ignored
    assert core.receive(event("ExecutorReplaced", previous=OTHER, executor=ME, **replaced)) == [StartExecutor(5, 2)]


# -- councils --

def test_a_council_seat_is_served_once_and_our_votes_are_read_from_the_logs():
    core = make_core()
    seat_event = drawn(7, 2, round_=1, members=(OTHER, ME), step_index=99)
    assert core.receive(seat_event) == [ServeSeat(7, 2, 1, 99)]
    assert core.receive(seat_event) == []
    assert not core.vote_on_chain((7, 2, 1), "commit")
    core.receive(event("ResultCommitted", taskId=7, k=2, member=OTHER))
    assert not core.vote_on_chain((7, 2, 1), "commit")
    core.receive(event("ResultCommitted", taskId=7, k=2, member=ME))
    assert core.vote_on_chain((7, 2, 1), "commit") and not core.vote_on_chain((7, 2, 1), "reveal")
    core.receive(event("ResultRevealed", taskId=7, k=2, member=ME, verdict=True))
    assert core.vote_on_chain((7, 2, 1), "reveal")
    assert core.receive(SeatEnded(7, 2, 1)) == []
    assert not core.vote_on_chain((7, 2, 1), "commit")


def test_an_ended_task_stops_its_job_and_seats_and_forgets_it():
    core = make_core()
    executing(core, 4, exact=True)
    core.receive(drawn(4, 1, members=(ME,)))
    actions = core.receive(event("TaskCancelled", taskId=4, reason=4, refund=1))
    assert actions == [StopExecutor(4, "cancelled"), EndSeats(4), ForgetTask(4)]
    assert 4 in core.ended and core.executing == {} and core.seats == {}
    assert core.receive(Assessed(4, job())) == []  # documents fetched before it ended: no bid
    assert core.receive(assigned(4)) == []
    assert core.receive(event("TaskSettled", taskId=11, outcome=1, refund=0, paid=5)) == [EndSeats(11), ForgetTask(11)]


def test_verdicts_are_logged_with_the_task(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert core.receive(event("CheckpointRejected", taskId=3, k=1, executor=OTHER, penalty=7)) == []
    assert f"task 3: checkpoint 1 rejected {{'executor': '{OTHER}', 'penalty': 7}}" in caplog.text


# -- restart --

@pytest.mark.parametrize("exact", [True, False])
def test_restart_reloads_committed_checkpoints_and_reveals_what_the_council_waits_for(exact, caplog):
    phase = Phase.REVEAL
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert core.receive(ExecutorOwed(3, accepted=0, committed=1, phase=phase)) == [StartExecutor(3, 0, 1, resuming=True)]
    assert "task 3: resuming as executor (0 accepted, 1 committed)" in caplog.text
    assert core.receive(ExecutorStarted(3, exact)) == []
    assert core.receive(CheckpointTrained(3, 1, D1)) == [Reveal(3, 1, D1)]  # reloaded: not committed again
    assert core.receive(CheckpointTrained(3, 2, D2)) == [Commit(3, 2, D2)]


def test_restart_before_the_council_commits_waits_for_its_turn():
    core = make_core()
    core.receive(ExecutorOwed(3, accepted=1, committed=2, phase=Phase.COMMITTED))
    core.receive(ExecutorStarted(3, exact=True))
    assert core.receive(CheckpointTrained(3, 2, D2)) == []
    assert core.receive(reveal_phase(3, 2)) == [Reveal(3, 2, D2)]


def test_restart_resumes_a_council_seat_with_the_votes_the_chain_shows():
    core = make_core()
    assert core.receive(SeatOwed(2, 1, 0, 42, committed=True)) == [ServeSeat(2, 1, 0, 42, resuming=True)]
    assert core.vote_on_chain((2, 1, 0), "commit") and not core.vote_on_chain((2, 1, 0), "reveal")
    assert core.receive(drawn(2, 1, members=(ME,))) == []  # the same seat, seen again in the logs


def test_my_votes_since_the_last_draw():
    events = [drawn(1, 1), event("ResultCommitted", taskId=1, k=1, member=ME),
              event("ResultCommitted", taskId=1, k=2, member=ME), event("ResultRevealed", taskId=2, k=1, member=ME)]
    assert my_votes(events, 1, 1, ME) == (True, False)
    assert my_votes([*events, drawn(1, 1, round_=1)], 1, 1, ME) == (False, False)  # a fresh round
    assert my_votes(events, 2, 1, ME.lower()) == (False, True)


# -- robustness --

def test_a_bad_event_is_logged_and_the_loop_goes_on(caplog):
    core = make_core()
    assert core.receive(event("TaskSubmitted", block=3, taskId=1)) == []
    assert core.receive(event("TaskSubmitted", block=4, taskId=2, client=OTHER, kind=0, prescriptionHash=D2)) == [
        Consider(2, D2)]
    assert "event TaskSubmitted at block 3" in caplog.text
    assert core.receive(event("FundsBurned", taskId=2, amount=1)) == []  # not ours to act on


def test_a_member_reads_this_rounds_reveals_for_its_judgements():
    from ogpu_node.apps.provider.council import revealed_results

    def revealed(member: str, tag: bytes, k: int = 1) -> Event:
        return event("ResultRevealed", taskId=2, k=k, member=member, verdict=True, resultHash=tag * 32,
                     stepHash=tag[::-1] * 32)

    a, b = "0x" + "aa" * 20, "0x" + "BB" * 20
    events = [drawn(2, 1, round_=0), revealed(a, b"\x01"), drawn(2, 1, round_=1), revealed(a, b"\x02"),
              revealed(b, b"\x03"), revealed(b, b"\x04", k=2)]
    assert revealed_results(events, 2, 1, 1) == {a: (b"\x02" * 32, b"\x02" * 32), b.lower(): (b"\x03" * 32, b"\x03" * 32)}
    core = make_core()
    core.receive(SeatOwed(2, 1, 1, 42, committed=True, revealed=True))
    assert not core.vote_on_chain((2, 1, 1), "judge")
    core.receive(event("ResultsJudged", taskId=2, k=1, member=ME, allclose=[True, True, True]))
    assert core.vote_on_chain((2, 1, 1), "judge")
