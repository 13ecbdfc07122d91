"""``ogpu-node task submit|status|confirm|dispute``: the client app over JSON-RPC (docs/tasks.md)."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from eth_utils import to_checksum_address

from ogpu_node.apps.client import Client, ClientError, file_blob_hash
from ogpu_node.cli.common import password_file_option, read_password_file
from ogpu_node.crypto.keystore import KeystoreError, load_private_key, parse_private_key
from ogpu_node.types.prescription import InvalidPrescription

__all__ = ["task"]

F = TypeVar("F", bound=Callable[..., Any])


def _rpc_url_option(f: F) -> F:
    return click.option("--rpc-url", required=True, envvar="OGPU_RPC_URL",
                        help="The node's JSON-RPC endpoint, e.g. http://127.0.0.1:8545.")(f)


def _key_options(f: F) -> F:
    f = click.option("--private-key", default=None, envvar="OGPU_PRIVATE_KEY",
                     help="Hex private key (development only; prefer --keystore).")(f)
    f = password_file_option(f)
    f = click.option("--from", "from_address", default=None,
                     help="Account to use when the keystore holds several.")(f)
    f = click.option("--keystore", type=click.Path(path_type=Path), default=None,
                     help="Keystore directory or key file.")(f)
    return f


def _private_key(keystore: Path | None, password_file: Path | None, from_address: str | None,
                 private_key: str | None) -> bytes:
    if (keystore is None) == (private_key is None):
        raise click.ClickException("give exactly one of --keystore (with --password-file) or --private-key")
    try:
        if private_key is not None:
            return parse_private_key(private_key)
        address = None
        if from_address is not None:
            try:
                address = bytes.fromhex(from_address.removeprefix("0x").removeprefix("0X"))
            except ValueError:
                raise click.ClickException(f"--from: not an address: {from_address}") from None
        if password_file is not None:
            password = read_password_file(password_file)
        else:
            password = click.prompt("Password", hide_input=True, err=True)
        assert keystore is not None
        return load_private_key(keystore, address, password)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None


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
@_rpc_url_option
@_key_options
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
    key = _private_key(keystore, password_file, from_address, private_key)
    client = Client(rpc_url, key)
    try:
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
@_rpc_url_option
def status(task_id: int, rpc_url: str) -> None:
    """Print a task's state, money, bids and progress."""
    try:
        s = Client(rpc_url).status(task_id)
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
    click.echo("\n".join(lines))


def _settle_command(name: str, doc: str) -> click.Command:
    @_key_options
    @_rpc_url_option
    @click.argument("task_id", type=click.IntRange(min=1))
    def command(task_id: int, rpc_url: str, keystore: Path | None, from_address: str | None,
                password_file: Path | None, private_key: str | None) -> None:
        key = _private_key(keystore, password_file, from_address, private_key)
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
