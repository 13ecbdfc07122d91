"""Anomaly agents' comparison rules (whitepaper §4), pure Python, shared by the client and the provider
apps: a loss curve that diverges from a council member's re-run, and a prescription that pays less
than it costs. Each returns a one-line flag, or None; docs/tasks.md "Anomaly agents". The tensor
checks (NaN/Inf, norm growth, dataset shapes) are in `ogpu_node/compute/anomaly.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ogpu_node.types.prescription import Equivalence

__all__ = ["as_losses", "loss_divergence", "loss_tolerance", "metadata_divergence", "rerun_anomalies", "underpriced"]


def loss_tolerance(e: Equivalence) -> tuple[float, float]:
    """(rtol, atol) a loss curve must keep to under ``e``: allclose's own, exact's (0, 0): any
    difference."""
    if e.kind == "allclose":
        return float(e.rtol or 0.0), float(e.atol or 0.0)
    return 0.0, 0.0


def as_losses(values: object) -> list[float] | None:
    """A checkpoint's `recent_losses` metadata as floats (null, a diverged step, as NaN); None when it is
    not a list of numbers (someone else's header: nothing to compare)."""
    if not isinstance(values, list):
        return None
    out = []
    for x in values:
        if x is None:
            out.append(math.nan)
        elif isinstance(x, bool) or not isinstance(x, int | float):
            return None
        else:
            try:
                out.append(float(x))
            except OverflowError:
                return None
    return out


def _differ(a: float, b: float, rtol: float, atol: float) -> bool:
    """|a − b| > atol + rtol·|b|, b the re-run's. A non-finite loss (stored as null in a checkpoint, so
    NaN here) matches only a non-finite one: both runs diverged at that step, which the checkpoint's
    own NaN check flags."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) != math.isfinite(b)
    return abs(a - b) > atol + rtol * abs(b)


def loss_divergence(executor_losses: Sequence[float], rerun_losses: Sequence[float], rtol: float, atol: float,
                    end_step: int | None = None) -> str | None:
    """Whether the executor's losses diverge from a re-run's of the same segment, as one line.

    Both lists end at the same state (``end_step``, when given, names it): they are compared from
    their ends over the shorter one's length (a checkpoint keeps its last 16 losses). A step diverges
    when |executor − re-run| > atol + rtol·|re-run| (exact: rtol = atol = 0, any difference);
    the first diverging step, counted from the start, is named."""
    n = min(len(executor_losses), len(rerun_losses))
    ours, theirs = list(executor_losses)[len(executor_losses) - n:], list(rerun_losses)[len(rerun_losses) - n:]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if _differ(a, b, rtol, atol):
            where = f"step {end_step - (n - 1 - i)}" if end_step is not None else f"loss {i + 1} of the last {n}"
            bound = "any difference" if rtol == atol == 0 else f"atol {atol:g} + rtol {rtol:g}·|re-run|"
            return f"loss curve diverges from the council's re-run at {where}: {a:.6g} vs {b:.6g} (tolerance {bound})"
    return None


def metadata_divergence(executor_meta: dict[str, Any], rerun_meta: dict[str, Any], rtol: float,
                        atol: float) -> str | None:
    """`loss_divergence` of two checkpoints' metadata (`recent_losses`), when both are of the same step
    and hold lists of numbers; None otherwise (nothing comparable)."""
    step = executor_meta.get("step")
    ours, theirs = as_losses(executor_meta.get("recent_losses")), as_losses(rerun_meta.get("recent_losses"))
    if ours is None or theirs is None or not isinstance(step, int) or rerun_meta.get("step") != step:
        return None
    return loss_divergence(ours, theirs, rtol, atol, end_step=step)


def rerun_anomalies(previous: bytes | None, executor: bytes, rerun: bytes, e: Equivalence,
                    label: str = "checkpoint") -> list[str]:
    """What a council member flags on the executor's checkpoint ``executor`` once it has re-run the
    segment itself (``rerun``, its own result checkpoint): NaN/Inf or norm growth since ``previous``
    (ckpt_{k-1}, or the step-0 state for k = 1; None skips the norm check), and the executor's
    `recent_losses` against its own under ``e``'s tolerance. Flags named by ``label``."""
    from ogpu_node.compute.anomaly import checkpoint_anomalies
    from ogpu_node.compute.tensorfile import TensorFileError, ogpu_metadata

    flags = checkpoint_anomalies(previous, executor, label)
    try:
        flag = metadata_divergence(ogpu_metadata(executor), ogpu_metadata(rerun), *loss_tolerance(e))
    except TensorFileError:
        return flags  # an unreadable executor checkpoint is flagged above
    return flags if flag is None else [*flags, f"{label}: {flag}"]


def underpriced(max_payment: int, cost: int) -> str | None:
    """The flag of a prescription whose max payment is below this provider's cost estimate (its compute
    seconds times its cost per second, before any margin), or None."""
    if max_payment < cost:
        return f"under-priced: max payment {max_payment} wei is below this provider's cost estimate of {cost} wei"
    return None
