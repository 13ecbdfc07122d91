"""What `task status` and `task result --wait` show: a task's fields, bids, checkpoint verdicts,
executors and payments as rich tables, the anomaly agents' flags, and its training loss as a text
chart (docs/tasks.md).

Every field is a `Name:  value` line (key column, value column), so scripts parse the plain output
with `^Name:\\s+(.*)$`; tables and the chart sit in the value column under their field.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import click
from eth_utils import to_checksum_address
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ogpu_node.apps.client import LossPoint, TaskHistory, TaskStatus, Verdict
from ogpu_node.cli.common import console
from ogpu_node.types.protocol import CancelReason, Outcome

__all__ = ["fields", "history_rows", "loss_chart", "status_view", "wait_display", "write_loss_plot"]

Row = tuple[str, RenderableType]


def ether(wei: int) -> str:
    return f"{wei} wei ({wei / 10**18:g} oGPU)"


def timestamp(ts: int) -> str:
    if ts == 0:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") + f" ({ts})"


def fields(rows: list[Row]) -> Table:
    """`Name:  value` rows: the key column, two spaces, the value (text, a table or a chart)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", min_width=13, no_wrap=True)
    grid.add_column()
    for key, value in rows:
        grid.add_row(key + ":", value)
    return grid


def _table(*headers: str) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, header_style="dim")
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def status_view(s: TaskStatus, history: TaskHistory | None, points: list[LossPoint],
                anomalies: Sequence[str] = ()) -> RenderableType:
    """The whole of `task status`; ``anomalies`` (`task_anomalies`) as an `Anomalies` field, only when
    there are any: their count, then one flag a line."""
    rows: list[Row] = [
        ("Task", str(s.task_id)),
        ("State", s.state),
        ("Client", to_checksum_address(s.client)),
        ("Prescription", f"0x{s.prescription_hash.hex()}"),
        ("Escrow", ether(s.escrow)),
        ("Deposit", ether(s.deposit)),
        ("Executor", to_checksum_address(s.executor) if s.executor else "-"),
        ("Price", ether(s.price)),
        ("Bid deadline", timestamp(s.bid_deadline)),
        ("Assigned at", timestamp(s.assigned_at)),
        ("Bids", _bids(s)),
        ("Progress", f"{s.accepted}/{s.checkpoints} checkpoints accepted, {s.committed} committed"),
        ("Paid", ether(s.paid)),
        ("Confirm by", timestamp(s.confirm_deadline)),
    ]
    if s.checkpoint is not None:
        c = s.checkpoint
        council = ", ".join(map(to_checksum_address, c.council)) or "-"
        rows.append((f"Checkpoint {c.k}", Text(f"phase {c.phase}, round {c.round}, phase ends "
                                               f"{timestamp(c.phase_ends)}\ncouncil: {council}")))
    if history is not None:
        rows += history_rows(history)
    if anomalies:
        rows.append(("Anomalies", Group(str(len(anomalies)), *(Text(flag) for flag in anomalies))))
    if points:
        rows.append(("Loss", Group("mean of the recent training losses in each checkpoint", loss_chart(points))))
    return fields(rows)


def _bids(s: TaskStatus) -> RenderableType:
    if not s.bids:
        return "0"
    table = _table("provider", "price")
    for provider, price in s.bids:
        table.add_row(to_checksum_address(provider), ether(price))
    return Group(str(len(s.bids)), table)


def history_rows(h: TaskHistory) -> list[Row]:
    """`task status`'s checkpoint, executor, payment and end rows."""
    checkpoints, pending = _table("k", "verdicts", "checkpoint hash"), []
    checkpoints.columns[0].justify = "right"
    checkpoints.columns[2].min_width = 66  # a whole hash: verdicts wrap first on a narrow terminal
    for c in h.checkpoints:
        if not c.verdicts and c.revealed is None:
            pending.append(c.k)
            continue
        shown = c.shown_hash
        checkpoints.add_row(str(c.k), "; ".join(map(_verdict, c.verdicts)) or "revealed",
                            "-" if shown is None else f"0x{shown.hex()}")
    parts: list[RenderableType] = [checkpoints] if checkpoints.row_count else []
    if pending:
        parts.append(f"pending: {_ks(pending)}")
    executors = _table("executor", "price", "assignment")
    for e in h.executors:
        note = ("assigned" if e.previous is None else
                f"replaced {to_checksum_address(e.previous)}, resuming after checkpoint {e.resume_from}")
        executors.add_row(to_checksum_address(e.executor), ether(e.price), note)
    payments = (f"{ether(h.paid)}: executor {h.executor_paid} wei, council {h.council_paid} wei"
                + (f", lateness discounts {h.discounts} wei" if h.discounts else ""))
    rows: list[Row] = [("Checkpoints", Group(*parts)), ("Executors", executors if h.executors else "-"),
                       ("Payments", payments)]
    if h.cancel_reason is not None:
        rows.append(("Ended", f"cancelled ({_text(CancelReason, h.cancel_reason)}), refunded {ether(h.refund or 0)}"))
    elif h.outcome is not None:
        rows.append(("Ended", f"settled ({_text(Outcome, h.outcome)}), refunded {ether(h.refund or 0)}"))
    return rows


def _verdict(v: Verdict) -> str:
    if v.kind == "accepted":
        return (f"accepted (executor {v.executor_paid} wei, council {v.council_paid} wei"
                + (f", discount {v.discount} wei" if v.discount else "") + ")")
    if v.kind == "inconclusive":
        return f"inconclusive (round {v.round})"
    return f"{v.kind} ({to_checksum_address(v.executor or '0x' + '0' * 40)} slashed {v.penalty} wei)"


def _text(enum: type[CancelReason] | type[Outcome], value: int) -> str:
    try:
        return enum(value).text
    except ValueError:  # a value this client does not know yet
        return str(value)


def _ks(ks: list[int]) -> str:
    return ", ".join(map(str, ks[:10])) + (", …" if len(ks) > 10 else "")


def loss_chart(points: list[LossPoint], width: int = 60, height: int = 8) -> Text:
    """A text chart of the mean training loss per checkpoint: `*` accepted (green), `o` revealed but not
    yet accepted (yellow); checkpoints without loss data are listed under it."""
    known = [p for p in points if p.loss is not None]
    missing = [p.k for p in points if p.loss is None]
    if not known:
        return Text("  (no loss data yet)" if not missing else f"  (no loss data for checkpoints {_ks(missing)})")
    if len(known) > width:  # keep evenly spaced checkpoints, always the first and the last
        known = [known[round(i * (len(known) - 1) / (width - 1))] for i in range(width)]
    gap = max(1, min(4, width // len(known)))
    lo, hi = min(p.loss for p in known), max(p.loss for p in known)  # type: ignore[type-var]
    labels = [f"{hi:.4g}", f"{lo:.4g}"]
    pad = max(map(len, labels))
    grid: list[list[str]] = [[" "] * (gap * len(known)) for _ in range(height)]
    for i, p in enumerate(known):
        row = 0 if hi == lo else round((hi - p.loss) / (hi - lo) * (height - 1))  # type: ignore[operator]
        grid[row][i * gap] = "*" if p.accepted else "o"
    chart = Text()
    for r, cells in enumerate(grid):
        label = labels[0] if r == 0 else labels[1] if r == height - 1 else ""
        chart.append(f"  {label:>{pad}} |", style="dim")
        for cell in "".join(cells).rstrip():
            chart.append(cell, style={"*": "green", "o": "yellow"}.get(cell, ""))
        chart.append("\n")
    span = gap * (len(known) - 1)
    first, last = str(known[0].k), str(known[-1].k)
    ticks = first if len(known) == 1 else first + " " * max(1, span - len(first)) + last
    chart.append(f"  {'':>{pad}} +{''.join('+' if i % gap == 0 else '-' for i in range(span + 1))}\n", style="dim")
    chart.append(f"  {'':>{pad}}  {ticks}  (checkpoint; * accepted, o revealed)")
    if missing:
        chart.append(f"\n  (no loss data for checkpoints {_ks(missing)})")
    return chart


def write_loss_plot(points: list[LossPoint], path: Path, task_id: int) -> None:
    """A PNG of the loss curve (matplotlib, if installed)."""
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    known = [p for p in points if p.loss is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p.k for p in known], [p.loss for p in known], marker="o")
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("mean recent training loss")
    ax.set_title(f"task {task_id}")
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


@contextmanager
def wait_display(task_id: int, every: float = 30.0) -> Iterator[Callable[[TaskStatus], None]]:
    """A callback for `Client.wait_for_result`: a line on stderr whenever the task moves on (and every
    ``every`` seconds regardless); on a terminal, a spinner with the current line below them."""
    err = console(err=True)
    last: dict[str, Any] = {"line": None, "at": 0.0}
    with err.status(f"task {task_id}: waiting") if err.is_terminal else nullcontext() as spinner:
        def show(s: TaskStatus) -> None:
            line = (f"task {task_id}: {s.state}, {s.accepted}/{s.checkpoints} checkpoints accepted, "
                    f"{s.committed} committed")
            if s.checkpoint is not None:
                line += f"; checkpoint {s.checkpoint.k}: {s.checkpoint.phase}, round {s.checkpoint.round}"
            if spinner is not None:
                spinner.update(line)
            if line != last["line"] or time.monotonic() - last["at"] >= every:
                err.print(line)
                last.update(line=line, at=time.monotonic())

        yield show
