"""Benchmarks: each prints a figure of ours beside a baseline measured in the same run, as a ratio.

Nothing here asserts a time: a ratio below its target is reported, never failed. Sizes come from
environment variables or command-line options so `make bench` stays short on a small machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One figure: ours and the baseline in the same unit (higher is better), and the target ratio."""

    name: str
    unit: str
    ours: float
    baseline: float
    baseline_name: str
    target: float | None  # ours / baseline should be at least this; None: a cost with no target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def line(self) -> str:
        if self.target is None:
            return (
                f"{self.name}: ours {self.ours:,.1f} {self.unit}, {self.baseline_name} {self.baseline:,.1f} "
                f"{self.unit}, ratio {self.ratio:.2f} (no target)"
            )
        verdict = "meets target" if self.meets_target else "below target"
        return (
            f"{self.name}: ours {self.ours:,.1f} {self.unit}, {self.baseline_name} {self.baseline:,.1f} {self.unit}, "
            f"ours/{self.baseline_name} = {self.ratio:.2f} (target >= {self.target:.2f}, {verdict})"
        )


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)
