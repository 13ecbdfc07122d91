"""Whether to bid on a batch task, and at what price (pure: no I/O, unit-tested).

Feasibility: the estimated memory fits the provider's, the device and numeric profile are ones it
can run, and a segment's estimated time (FLOPs ÷ measured throughput) fits the segment window with
a safety factor (the window also bounds a council member's re-run, and a loaded machine is slower).
Price: the compute seconds of the whole task times the operator's cost per second, plus a margin;
no bid above the task's max payment. The margin adapts to the recent win rate: winning more often
than the target means the price is low (raise it), less often means it is high (lower it).
Anomalies (docs/tasks.md "Anomaly agents"): what the task's documents showed (`Job.anomalies`) and a
max payment below this provider's own cost estimate; a flagged task gets no bid.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ogpu_node.apps.anomalies import underpriced

SAFETY_FACTOR = 4.0  # a segment must take at most 1/4 of its window


@dataclass(frozen=True)
class Resources:
    device: str  # cpu | cuda | ...
    memory_mib: int
    flops_per_s: float  # measured training throughput
    profiles: tuple[str, ...]  # numeric profiles this machine honours


@dataclass(frozen=True)
class Job:
    """What the strategy needs to know of a task (from its prescription and the estimate)."""

    devices: tuple[str, ...]
    numeric_profile: str | None
    memory_mib: float  # estimated
    total_flops: float
    segment_flops: float  # the longest segment
    segment_window_s: int
    max_payment: int
    anomalies: tuple[str, ...] = ()  # flags on its documents (e.g. a dataset that does not fit the model)


def infeasible(job: Job, res: Resources) -> str | None:
    """Why this provider cannot run the job, or None."""
    if res.device not in job.devices:
        return f"needs a device in {', '.join(job.devices)}, this provider has {res.device}"
    if job.numeric_profile is not None and job.numeric_profile not in res.profiles:
        return f"numeric profile {job.numeric_profile} is not available here"
    if job.memory_mib > res.memory_mib:
        return f"needs about {job.memory_mib:.0f} MiB, this provider has {res.memory_mib} MiB"
    segment_s = job.segment_flops / res.flops_per_s
    if segment_s * SAFETY_FACTOR > job.segment_window_s:
        return (f"a segment takes about {segment_s:.1f}s here, too long for its {job.segment_window_s}s window "
                f"(safety factor {SAFETY_FACTOR:g})")
    return None


class BidStrategy:
    """Cost-plus pricing with a margin that follows the recent win rate."""

    def __init__(self, cost_per_second: int, margin: float = 0.2, *, min_margin: float = 0.0,
                 max_margin: float = 4.0, target_win_rate: float = 0.5, window: int = 10, step: float = 0.05) -> None:
        if cost_per_second <= 0:
            raise ValueError("cost per second must be positive")
        if not min_margin <= margin <= max_margin:
            raise ValueError(f"margin {margin} is outside [{min_margin}, {max_margin}]")
        self.cost_per_second = cost_per_second
        self.margin = margin
        self.min_margin, self.max_margin = min_margin, max_margin
        self.target_win_rate = target_win_rate
        self.step = step
        self.outcomes: deque[bool] = deque(maxlen=window)

    def cost(self, job: Job, res: Resources) -> int:
        """What running ``job`` costs this provider in wei: its compute seconds here times the cost per
        second, before any margin."""
        return int(job.total_flops / res.flops_per_s * self.cost_per_second)

    def price(self, job: Job, res: Resources) -> int:
        """The bid in wei for ``job`` (at least 1 wei)."""
        seconds = job.total_flops / res.flops_per_s
        return max(1, int(seconds * self.cost_per_second * (1.0 + self.margin)))

    def anomalies(self, job: Job, res: Resources) -> list[str]:
        """The flags that keep this provider from bidding on ``job`` whatever its price: the documents'
        and an under-priced prescription."""
        flag = underpriced(job.max_payment, self.cost(job, res))
        return [*job.anomalies, *([] if flag is None else [flag])]

    def decide(self, job: Job, res: Resources) -> tuple[int | None, str]:
        """(price, reason): price None means do not bid, and the reason says why."""
        reason = infeasible(job, res)
        if reason is not None:
            return None, reason
        price = self.price(job, res)
        if price > job.max_payment:
            return None, f"unprofitable: our price {price} wei exceeds the max payment {job.max_payment} wei"
        return price, f"margin {self.margin:.0%}, estimated {job.total_flops / res.flops_per_s:.1f}s of compute"

    def record(self, won: bool) -> None:
        """After an auction we bid in: move the margin toward the target win rate."""
        self.outcomes.append(won)
        rate = sum(self.outcomes) / len(self.outcomes)
        if rate != self.target_win_rate:
            delta = self.step if rate > self.target_win_rate else -self.step
            self.margin = min(self.max_margin, max(self.min_margin, self.margin + delta))

    @property
    def win_rate(self) -> float | None:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None
