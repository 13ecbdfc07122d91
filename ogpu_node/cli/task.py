"""``ogpu-node task submit|status|result|confirm|dispute``: the client app over JSON-RPC (docs/tasks.md)."""

from __future__ import annotations

import copy
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from eth_utils import to_checksum_address

from ogpu_node.apps.client import (
    Client,
    ClientError,
    LossPoint,
    TaskHistory,
    TaskStatus,
    file_blob_hash,
)
from ogpu_node.cli.common import key_options, private_key_from_options, rpc_url_option
from ogpu_node.types.prescription import InvalidPrescription
from ogpu_node.types.protocol import CancelReason, Outcome, TaskKind

__all__ = ["task"]

F = TypeVar("F", bound=Callable[..., Any])


def _ether(wei: int) -> str:
    return f"{wei} wei ({wei / 10**18:g} oGPU)"


def _time(ts: int) -> str:
    if ts == 0:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") + f" ({ts})"


@click.group("task")
def task() -> None:
    """Submit and follow batch tasks (the client app)."""


@task.command("submit")
@click.argument("prescription", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Dataset D (safetensors tensors or a text corpus), uploaded as a blob.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Initial weights of M (safetensors), uploaded as a blob.")
@click.option("--deposit", type=click.IntRange(min=0), default=None,
              help="Safety deposit in wei (default: the chain's minimum).")
@rpc_url_option
@key_options
def submit(prescription: Path, data_file: Path, model_file: Path | None, deposit: int | None, rpc_url: str,
           keystore: Path | None, from_address: str | None, password_file: Path | None,
           private_key: str | None) -> None:
    """Upload the data (and initial weights), then submit PRESCRIPTION.json; print the task id."""
    from ogpu_node.compute.prescription import validate  # torch: load it only for this command

    try:
        doc = json.loads(prescription.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.ClickException(f"cannot read {prescription}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{prescription} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise click.ClickException("prescription: expected a JSON object")
    doc = copy.deepcopy(doc)
    try:
        if not isinstance(doc.get("D"), dict):
            raise InvalidPrescription("prescription.D", "required for a batch task given --data")
        doc["D"]["blob"] = "0x" + file_blob_hash(data_file).hex()
        if model_file is not None:
            if not isinstance(doc.get("M"), dict):
                raise InvalidPrescription("prescription.M", "required")
            doc["M"]["initial_weights"] = "0x" + file_blob_hash(model_file).hex()
    except OSError as exc:
        raise click.ClickException(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    except InvalidPrescription as exc:
        raise click.ClickException(str(exc)) from None
    try:
        p = validate(doc)  # before any network access or key prompt
    except InvalidPrescription as exc:
        raise click.ClickException(str(exc)) from None
    key = private_key_from_options(keystore, password_file, from_address, private_key)
    client = Client(rpc_url, key)
    try:
        client.check_against_chain(p)
        data_hash, data_size = client.upload_blob(data_file)
        click.echo(f"Uploaded {data_file.name}: 0x{data_hash.hex()} ({data_size} bytes)", err=True)
        if model_file is not None:
            model_hash, model_size = client.upload_blob(model_file)
            click.echo(f"Uploaded {model_file.name}: 0x{model_hash.hex()} ({model_size} bytes)", err=True)
        task_id, paid_deposit = client.submit_task(p, deposit)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Escrow {_ether(p.I.max_payment)} + deposit {_ether(paid_deposit)}", err=True)
    click.echo(f"Task ID: {task_id}")


@task.command("status")
@click.argument("task_id", type=click.IntRange(min=1))
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the loss curve as a PNG (needs matplotlib).")
@rpc_url_option
def status(task_id: int, plot: Path | None, rpc_url: str) -> None:
    """Print a task's state, money, bids, progress, checkpoint verdicts and training loss."""
    client = Client(rpc_url)
    history, points = None, []
    try:
        s = client.status(task_id)
        if s.kind == TaskKind.BATCH:
            history = client.checkpoint_history(task_id)
            points = client.loss_curve(history)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    lines = [
        f"Task:          {s.task_id}",
        f"State:         {s.state}",
        f"Client:        {to_checksum_address(s.client)}",
        f"Prescription:  0x{s.prescription_hash.hex()}",
        f"Escrow:        {_ether(s.escrow)}",
        f"Deposit:       {_ether(s.deposit)}",
        f"Executor:      {to_checksum_address(s.executor) if s.executor else '-'}",
        f"Price:         {_ether(s.price)}",
        f"Bid deadline:  {_time(s.bid_deadline)}",
        f"Assigned at:   {_time(s.assigned_at)}",
        f"Bids:          {len(s.bids)}",
    ]
    lines += [f"  {to_checksum_address(provider)}  {_ether(price)}" for provider, price in s.bids]
    lines += [
        f"Progress:      {s.accepted}/{s.checkpoints} checkpoints accepted, {s.committed} committed",
        f"Paid:          {_ether(s.paid)}",
        f"Confirm by:    {_time(s.confirm_deadline)}",
    ]
    if s.checkpoint is not None:
        c = s.checkpoint
        lines.append(f"Checkpoint {c.k}:  phase {c.phase}, round {c.round}, phase ends {_time(c.phase_ends)}")
        lines.append(f"  council:     {', '.join(map(to_checksum_address, c.council)) or '-'}")
    if history is not None:
        lines += history_lines(history)
    if points:
        lines.append("Loss (mean of the recent training losses in each checkpoint):")
        lines += loss_chart(points)
    click.echo("\n".join(lines))
    if plot is not None:
        write_loss_plot(points, plot, task_id)
        click.echo(f"Loss plot: {plot}", err=True)


@task.command("result")
@click.argument("task_id", type=click.IntRange(min=1))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the trained weights (safetensors).")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also keep the whole final checkpoint (weights, optimizer state, metadata) here.")
@click.option("--wait", is_flag=True, help="Wait until the final checkpoint is accepted, showing progress.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="With --wait: give up after this many seconds (default: no limit).")
@rpc_url_option
def result(task_id: int, out: Path, checkpoint_file: Path | None, wait: bool, timeout: float | None,
           rpc_url: str) -> None:
    """Download the accepted final checkpoint, check its hash against the chain, and write its weights."""
    for path in (out, checkpoint_file):
        if path is not None and not path.parent.is_dir():
            raise click.ClickException(f"no such directory: {path.parent}")
    client = Client(rpc_url)
    try:
        if wait:
            client.wait_for_result(task_id, timeout, progress=_progress_printer(task_id))
        ckpt_hash = client.result(task_id, out, checkpoint_file)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Checked the final checkpoint against its on-chain hash 0x{ckpt_hash.hex()}")
    if checkpoint_file is not None:
        click.echo(f"Checkpoint: {checkpoint_file}")
    click.echo(f"Weights:    {out}")


def _progress_printer(task_id: int, every: float = 30.0) -> Callable[[TaskStatus], None]:
    """Print a progress line to stderr when it changes (and every ``every`` seconds regardless)."""
    last: dict[str, Any] = {"line": None, "at": 0.0}

    def show(s: TaskStatus) -> None:
        line = f"task {task_id}: {s.state}, {s.accepted}/{s.checkpoints} checkpoints accepted, {s.committed} committed"
        if s.checkpoint is not None:
            line += f"; checkpoint {s.checkpoint.k}: {s.checkpoint.phase}, round {s.checkpoint.round}"
        if line != last["line"] or time.monotonic() - last["at"] >= every:
            click.echo(line, err=True)
            last.update(line=line, at=time.monotonic())

    return show


def _short(h: bytes | None) -> str:
    return "-" if h is None else f"0x{h.hex()}"


def history_lines(h: TaskHistory) -> list[str]:
    """`task status`'s checkpoint, executor and payment lines."""
    lines, pending = ["Checkpoints:"], []
    for c in h.checkpoints:
        if not c.verdicts and c.revealed is None:
            pending.append(c.k)
            continue
        verdicts = []
        for v in c.verdicts:
            if v.kind == "accepted":
                verdicts.append(f"accepted (executor {v.executor_paid} wei, council {v.council_paid} wei"
                                + (f", discount {v.discount} wei" if v.discount else "") + ")")
            elif v.kind == "inconclusive":
                verdicts.append(f"inconclusive (round {v.round})")
            else:
                verdicts.append(f"{v.kind} ({to_checksum_address(v.executor or '0x' + '0' * 40)} slashed "
                                f"{v.penalty} wei)")
        accepted = c.accepted
        shown = accepted.checkpoint_hash if accepted and accepted.checkpoint_hash else c.revealed
        lines.append(f"  {c.k:>3}  {'; '.join(verdicts) or 'revealed'}  H={_short(shown)}")
    if pending:
        lines.append(f"  pending: {_ks(pending)}")
    lines.append("Executors:")
    for e in h.executors:
        if e.previous is None:
            lines.append(f"  {to_checksum_address(e.executor)}  {_ether(e.price)}  (assigned)")
        else:
            lines.append(f"  {to_checksum_address(e.executor)}  {_ether(e.price)}  (replaced "
                         f"{to_checksum_address(e.previous)}, resuming after checkpoint {e.resume_from})")
    if not h.executors:
        lines.append("  -")
    lines.append(f"Payments:      {_ether(h.paid)}: executor {h.executor_paid} wei, council {h.council_paid} wei"
                 + (f", lateness discounts {h.discounts} wei" if h.discounts else ""))
    if h.cancel_reason is not None:
        reason = _text(CancelReason, h.cancel_reason)
        lines.append(f"Ended:         cancelled ({reason}), refunded {_ether(h.refund or 0)}")
    elif h.outcome is not None:
        outcome = _text(Outcome, h.outcome)
        lines.append(f"Ended:         settled ({outcome}), refunded {_ether(h.refund or 0)}")
    return lines


def loss_chart(points: list[LossPoint], width: int = 60, height: int = 8) -> list[str]:
    """A text chart of the mean training loss per checkpoint: `*` accepted, `o` revealed but not yet
    accepted; checkpoints without loss data are listed under it."""
    known = [p for p in points if p.loss is not None]
    missing = [p.k for p in points if p.loss is None]
    if not known:
        return ["  (no loss data yet)"] if not missing else [f"  (no loss data for checkpoints {_ks(missing)})"]
    if len(known) > width:  # keep evenly spaced checkpoints, always the first and the last
        known = [known[round(i * (len(known) - 1) / (width - 1))] for i in range(width)]
    gap = max(1, min(4, width // len(known)))
    lo, hi = min(p.loss for p in known), max(p.loss for p in known)  # type: ignore[type-var]
    labels = [f"{hi:.4g}", f"{lo:.4g}"]
    pad = max(map(len, labels))
    grid = [[" "] * (gap * len(known)) for _ in range(height)]
    for i, p in enumerate(known):
        row = 0 if hi == lo else round((hi - p.loss) / (hi - lo) * (height - 1))  # type: ignore[operator]
        grid[row][i * gap] = "*" if p.accepted else "o"
    lines = []
    for r, cells in enumerate(grid):
        label = labels[0] if r == 0 else labels[1] if r == height - 1 else ""
        lines.append(f"  {label:>{pad}} |{''.join(cells).rstrip()}")
    span = gap * (len(known) - 1)
    lines.append(f"  {'':>{pad}} +{''.join('+' if i % gap == 0 else '-' for i in range(span + 1))}")
    first, last = str(known[0].k), str(known[-1].k)
    ticks = first if len(known) == 1 else first + " " * max(1, span - len(first)) + last
    lines.append(f"  {'':>{pad}}  {ticks}  (checkpoint; * accepted, o revealed)")
    if missing:
        lines.append(f"  (no loss data for checkpoints {_ks(missing)})")
    return lines


def _text(enum: type[CancelReason] | type[Outcome], value: int) -> str:
    try:
        return enum(value).text
    except ValueError:  # a value this client does not know yet
        return str(value)


def _ks(ks: list[int]) -> str:
    return ", ".join(map(str, ks[:10])) + (", …" if len(ks) > 10 else "")


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


def _settle_command(name: str, doc: str) -> click.Command:
    @key_options
    @rpc_url_option
    @click.argument("task_id", type=click.IntRange(min=1))
    def command(task_id: int, rpc_url: str, keystore: Path | None, from_address: str | None,
                password_file: Path | None, private_key: str | None) -> None:
        key = private_key_from_options(keystore, password_file, from_address, private_key)
        try:
            receipt = getattr(Client(rpc_url, key), name)(task_id)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
        done = {"confirm": "Confirmed", "dispute": "Disputed"}[name]
        click.echo(f"{done} task {task_id} in tx 0x{bytes(receipt['transactionHash']).hex()}")

    command.__doc__ = doc
    return task.command(name)(command)


_settle_command("confirm", "Accept the final checkpoint of TASK_ID (settles and pays).")
_settle_command("dispute", "Dispute TASK_ID's final checkpoint within the confirmation window.")
