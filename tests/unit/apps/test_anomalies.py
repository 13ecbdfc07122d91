"""Anomaly agents in the apps (docs/tasks.md "Anomaly agents"): the loss-curve rule against a re-run, the
under-priced prescription, a provider that logs each flag with its task and does not bid, and `task
status` showing the flags. The tensor checks themselves: tests/unit/compute/test_anomaly.py."""

from __future__ import annotations

import logging
import math

import pytest

from ogpu_node.apps.anomalies import as_losses, loss_divergence, loss_tolerance, underpriced
from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.core import ProviderCore
from ogpu_node.apps.provider.messages import Assessed, Consider, PlaceBid
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources
from ogpu_node.types.prescription import Equivalence
from ogpu_node.types.protocol import DEFAULT_PROFILE, TaskKind

ME, CLIENT = "0x" + "1a" * 20, "0x" + "cc" * 20
RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=(DEFAULT_PROFILE,))
CURVE = [2.0, 1.5, 1.2, 1.0, 0.9]


# -- the loss curve against a council member's re-run --

def test_an_identical_curve_is_not_flagged_under_exact():
    assert loss_divergence(CURVE, list(CURVE), *loss_tolerance(Equivalence("exact"))) is None


def test_exact_flags_any_difference_and_names_the_step():
    rerun = [*CURVE[:-1], math.nextafter(0.9, 1.0)]
    assert loss_divergence(CURVE, rerun, 0.0, 0.0, end_step=20) == (
        "loss curve diverges from the council's re-run at step 20: 0.9 vs 0.9 (tolerance any difference)")


def test_allclose_tolerates_within_atol_plus_rtol_of_the_rerun():
    rtol, atol = loss_tolerance(Equivalence("allclose", rtol=1e-2, atol=1e-3))
    assert (rtol, atol) == (1e-2, 1e-3)
    inside = [x + 0.9 * (atol + rtol * x) for x in CURVE]
    assert loss_divergence(inside, CURVE, rtol, atol) is None
    outside = [*CURVE[:2], 1.2 + 1.1 * (atol + rtol * 1.2), *CURVE[3:]]
    flag = loss_divergence(outside, CURVE, rtol, atol, end_step=10)
    assert flag is not None and flag.startswith("loss curve diverges from the council's re-run at step 8: ")
    assert flag.endswith("(tolerance atol 0.001 + rtol 0.01·|re-run|)")


def test_a_diverging_curve_is_flagged_at_its_first_diverging_step():
    diverging = [2.0, 1.5, 3.0, 9.0, 40.0]  # the executor's loss climbs where the re-run's falls
    flag = loss_divergence(diverging, CURVE, 1e-3, 1e-5)
    assert flag is not None and "at loss 3 of the last 5: 3 vs 1.2" in flag


def test_curves_are_compared_from_their_ends_over_the_shorter_one():
    segment = [5.0, 4.0, *CURVE]  # the re-run's whole segment; the checkpoint kept only the last losses
    assert loss_divergence(CURVE, segment, 0.0, 0.0) is None
    assert loss_divergence([], segment, 0.0, 0.0) is None


def test_a_nan_loss_matches_only_a_nan():
    assert loss_divergence([1.0, math.nan], [1.0, math.nan], 0.0, 0.0) is None
    assert loss_divergence([1.0, math.nan], [1.0, 0.5], 1.0, 1.0) is not None


def test_recent_losses_metadata_reads_null_as_nan_and_refuses_non_numbers():
    losses = as_losses([1.5, None, 2])
    assert losses is not None and losses[0] == 1.5 and math.isnan(losses[1]) and losses[2] == 2.0
    assert as_losses("1.5") is None and as_losses([True]) is None and as_losses([10**400]) is None


def test_underpriced_only_below_cost():
    assert underpriced(99, 100) == "under-priced: max payment 99 wei is below this provider's cost estimate of 100 wei"
    assert underpriced(100, 100) is None


# -- the provider: each flag logged with the task id, and no bid --

def make_core() -> ProviderCore:
    return ProviderCore(ME, BidStrategy(cost_per_second=10**15, margin=0.2), RES, max_jobs=3)


def job(**changes) -> Job:
    base = dict(devices=("cpu",), numeric_profile=DEFAULT_PROFILE, memory_mib=512.0, total_flops=3e9,
                segment_flops=1e9, segment_window_s=60, max_payment=10**18)  # cost 3e15 wei here
    return Job(**{**base, **changes})


def submitted(task_id: int) -> Event:
    return Event("TaskSubmitted", {"taskId": task_id, "kind": TaskKind.BATCH, "client": CLIENT,
                                   "prescriptionHash": b"\x09" * 32}, 1, 0)


def test_an_honest_task_gets_a_bid_and_no_anomaly_line(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert core.receive(submitted(1)) == [Consider(1, b"\x09" * 32)]
    actions = core.receive(Assessed(1, job()))
    assert [type(a) for a in actions] == [PlaceBid] and "anomaly" not in caplog.text


def test_an_underpriced_task_is_flagged_in_the_log_and_gets_no_bid(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    core.receive(submitted(2))
    assert core.receive(Assessed(2, job(max_payment=10**15))) == []
    assert ("task 2: anomaly: under-priced: max payment 1000000000000000 wei is below this provider's cost "
            "estimate of 3000000000000000 wei") in caplog.text
    assert core.bids == {} and core.busy == 0


@pytest.mark.parametrize("flag", [
    "dataset 0x" + "01" * 32 + ": samples of shape (3,), the model mlp needs 4 values",
])
def test_a_task_whose_documents_are_flagged_gets_no_bid_at_any_price(flag, caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    core.receive(submitted(3))
    assert core.receive(Assessed(3, job(anomalies=(flag,)))) == []
    assert f"task 3: anomaly: {flag}" in caplog.text
    assert "task 3: not bidding: 1 anomaly flag(s)" in caplog.text
    assert core.bids == {}
    assert [type(a) for a in core.receive(Assessed(4, job()))] == [PlaceBid]  # the next honest task is bid on
