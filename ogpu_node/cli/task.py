"""``ogpu-node task submit|status|result|confirm|dispute``: the client app over JSON-RPC (docs/tasks.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ogpu_node.apps.client import Client, ClientError, file_blob_hash
from ogpu_node.apps.client.history import task_anomalies
from ogpu_node.cli.common import (
    key_options,
    private_key_from_options,
    read_prescription,
    rpc_url_option,
    show,
    transfer_progress,
)
from ogpu_node.cli.task_view import ether, status_view, wait_display, write_loss_plot
from ogpu_node.types.prescription import InvalidPrescription
from ogpu_node.types.protocol import TaskKind

__all__ = ["task"]


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

    doc = read_prescription(prescription)
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
        for path in (data_file, model_file):
            if path is not None:
                _upload(client, path)
        task_id, paid_deposit = client.submit_task(p, deposit)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Escrow {ether(p.I.max_payment)} + deposit {ether(paid_deposit)}", err=True)
    click.echo(f"Task ID: {task_id}")


def _upload(client: Client, path: Path) -> None:
    """Upload one file as a blob, with a progress bar on a terminal."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    with transfer_progress(f"Uploading {path.name}", size) as advance:
        blob_hash, size = client.upload_blob(path, progress=advance)
    click.echo(f"Uploaded {path.name}: 0x{blob_hash.hex()} ({size} bytes)", err=True)


@task.command("status")
@click.argument("task_id", type=click.IntRange(min=1))
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the loss curve as a PNG (needs matplotlib).")
@rpc_url_option
def status(task_id: int, plot: Path | None, rpc_url: str) -> None:
    """Print a task's state, money, bids, progress, checkpoint verdicts, anomalies and training loss."""
    client = Client(rpc_url)
    history, points, anomalies = None, [], []
    try:
        s = client.status(task_id)
        if s.kind == TaskKind.BATCH:
            history = client.checkpoint_history(task_id)
            points = client.loss_curve(history)
            anomalies = task_anomalies(client.blobs, s.prescription_hash, history)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    show(status_view(s, history, points, anomalies))
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
            with wait_display(task_id) as progress:
                client.wait_for_result(task_id, timeout, progress=progress)
        with transfer_progress(f"checkpoint of task {task_id}", None) as advance:
            ckpt_hash = client.result(task_id, out, checkpoint_file, progress=advance)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Checked the final checkpoint against its on-chain hash 0x{ckpt_hash.hex()}")
    if checkpoint_file is not None:
        click.echo(f"Checkpoint: {checkpoint_file}")
    click.echo(f"Weights:    {out}")


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
