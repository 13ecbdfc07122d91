"""The provider's bidding decisions: feasibility, cost-plus price, margin following the win rate, and the
anomaly flags that keep it from bidding."""

from __future__ import annotations

import pytest

from ogpu_node.apps.provider.strategy import SAFETY_FACTOR, BidStrategy, Job, Resources, infeasible

RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=("cpu-avx2-1t",))


def job(**changes) -> Job:
    base = dict(devices=("cpu",), numeric_profile="cpu-avx2-1t", memory_mib=512.0, total_flops=3e9,
                segment_flops=1e9, segment_window_s=60, max_payment=10**18)
    base.update(changes)
    return Job(**base)


@pytest.mark.parametrize("changes, reason", [
    ({"devices": ("cuda",)}, "needs a device in cuda"),
    ({"numeric_profile": "gpu-fp32"}, "numeric profile gpu-fp32 is not available"),
    ({"memory_mib": 5000.0}, "needs about 5000 MiB"),
    ({"segment_flops": 1e9 * 60 / SAFETY_FACTOR * 1.01}, "too long for its 60s window"),
])
def test_infeasible_names_the_reason(changes, reason):
    assert reason in infeasible(job(**changes), RES)


def test_feasible_at_the_limits():
    assert infeasible(job(memory_mib=4096.0, segment_flops=1e9 * 60 / SAFETY_FACTOR, numeric_profile=None), RES) is None


def test_price_is_compute_seconds_times_cost_plus_margin():
    s = BidStrategy(cost_per_second=10**15, margin=0.5)
    price, reason = s.decide(job(), RES)
    assert price == int(3 * 10**15 * 1.5)  # 3e9 FLOPs at 1e9 FLOP/s = 3 s
    assert "margin 50%" in reason


def test_no_bid_above_max_payment():
    price, reason = BidStrategy(cost_per_second=10**18).decide(job(max_payment=10**18), RES)
    assert price is None and reason.startswith("unprofitable")


def test_cost_is_compute_seconds_times_cost_per_second_without_margin():
    assert BidStrategy(cost_per_second=10**15, margin=0.5).cost(job(), RES) == 3 * 10**15


def test_a_max_payment_below_our_cost_is_flagged_but_one_between_cost_and_price_is_not():
    s = BidStrategy(cost_per_second=10**15, margin=0.5)  # cost 3e15 wei, price 4.5e15 wei
    assert s.anomalies(job(max_payment=3 * 10**15 - 1), RES) == [
        "under-priced: max payment 2999999999999999 wei is below this provider's cost estimate of 3000000000000000 wei"]
    assert s.anomalies(job(max_payment=3 * 10**15), RES) == []
    assert s.decide(job(max_payment=3 * 10**15), RES)[0] is None  # unprofitable at our margin, not anomalous


def test_the_documents_flags_come_first():
    flags = BidStrategy(cost_per_second=10**18).anomalies(job(max_payment=1, anomalies=("dataset 0x01: bad",)), RES)
    assert flags[0] == "dataset 0x01: bad" and flags[1].startswith("under-priced: max payment 1 wei")


def test_margin_rises_when_winning_and_falls_when_losing_within_bounds():
    s = BidStrategy(cost_per_second=1, margin=0.2, max_margin=0.4, target_win_rate=0.5, step=0.05)
    s.record(True)
    assert s.margin == pytest.approx(0.25)
    for _ in range(10):
        s.record(True)
    assert s.margin == 0.4 and s.win_rate == 1.0
    for _ in range(5):
        s.record(False)  # 5 wins, 5 losses in the window: on target, unchanged
    assert s.margin == 0.4 and s.win_rate == 0.5
    for _ in range(20):
        s.record(False)
    assert s.margin == 0.0 and s.win_rate == 0.0
    s.record(True)  # the window still holds nine losses: keep lowering (floored)
    assert s.margin == 0.0


def test_a_zero_margin_can_rise_again():
    s = BidStrategy(cost_per_second=1, margin=0.0, min_margin=0.0)
    s.record(True)
    assert s.margin == pytest.approx(0.05)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="cost per second"):
        BidStrategy(cost_per_second=0)
    with pytest.raises(ValueError, match="margin"):
        BidStrategy(cost_per_second=1, margin=5.0)
