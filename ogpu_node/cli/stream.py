"""``ogpu-node stream submit|request|status|retract|update-terms``: stream tasks from the client's side
(docs/streams.md): open a stream serving trained weights, ask it, pay the members that answered."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from ogpu_node.apps.client import Client, ClientError, StreamClient, StreamRefused, file_blob_hash
from ogpu_node.apps.client.streams import Answer, served_weights
from ogpu_node.cli.common import (
    datadir_option,
    key_options,
    private_key_from_options,
    read_prescription,
    resolve_datadir,
    rpc_url_option,
    transfer_progress,
)
from ogpu_node.cli.task_view import ether
from ogpu_node.types.prescription import (
    InvalidPrescription,
    Prescription,
)
from ogpu_node.types.protocol import RESPONSE_METHODS
from ogpu_node.types.streams import MAX_PROMPT_BYTES, MAX_RESPONSE_TOKENS

__all__ = ["stream"]

DEFAULT_MAX_TOKENS = 64


@click.group("stream")
def stream() -> None:
    """Open stream tasks, send them requests, pay for the answers (the client app)."""


def _positive(text: str, what: str) -> int:
    """A positive decimal integer argument, or one error line (click's own would print a usage block)."""
    if not text.isdecimal() or int(text) < 1:
        raise click.ClickException(f"{what}: expected a positive integer, got {text!r:.40}")
    return int(text)


def _hash32(text: str, what: str) -> bytes:
    body = text.removeprefix("0x").removeprefix("0X")
    try:
        value = bytes.fromhex(body)
    except ValueError:
        value = b""
    if len(value) != 32 or len(body) != 64:
        raise click.ClickException(f"{what}: expected 0x and 64 hex digits, got {text!r:.80}")
    return value


def _prompt_bytes(prompt: str) -> bytes:
    """The prompt's UTF-8 bytes (`-`: read from stdin), bounded as the node bounds them."""
    if prompt == "-":
        data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
    else:
        try:
            data = prompt.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from an undecodable argv byte
            raise click.ClickException("prompt: not valid UTF-8") from None
    if not data:
        raise click.ClickException("prompt: empty (give 1 to 4096 bytes of text)")
    if len(data) > MAX_PROMPT_BYTES:
        raise click.ClickException(f"prompt: longer than {MAX_PROMPT_BYTES} bytes (UTF-8)")
    return data


def _run(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except StreamRefused as exc:
        if exc.data is not None:  # a request that failed after it was accepted: the message names it
            raise click.ClickException(str(exc)) from None
        raise click.ClickException(f"{what}: {exc}") from None
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


# -- submit -------------------------------------------------------------------------------------------------


@stream.command("submit")
@click.argument("prescription", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--weights", default=None, metavar="FILE|0xHASH",
              help="The weights to serve: `task result --out` (or `--checkpoint`) of a trained task, uploaded "
                   "and named in M.initial_weights; or the blob hash of weights already on the node.")
@click.option("--deposit", type=click.IntRange(min=0), default=None,
              help="Safety deposit in wei (default: the chain's minimum).")
@rpc_url_option
@key_options
def submit(prescription: Path, weights: str | None, deposit: int | None, rpc_url: str, keystore: Path | None,
           from_address: str | None, password_file: Path | None, private_key: str | None) -> None:
    """Upload the served weights, then open the stream PRESCRIPTION.json describes; print its task id."""
    from ogpu_node.compute.prescription import validate  # torch: load it only for this command

    doc = read_prescription(prescription)
    p = _validate(validate, doc)  # before any network access or key prompt
    if p.kind != "stream":
        raise click.ClickException("prescription.kind: `stream submit` opens a stream; a batch task is "
                                   "`ogpu-node task submit`")
    with tempfile.TemporaryDirectory(prefix="ogpu-stream-") as work:
        upload = None
        if weights is not None:
            if weights.startswith(("0x", "0X")) and not Path(weights).exists():
                doc["M"]["initial_weights"] = "0x" + _hash32(weights, "--weights").hex()
            else:
                upload = _run("--weights", served_weights, Path(weights), p.M.family, p.M.hparams, Path(work))
                doc["M"]["initial_weights"] = "0x" + file_blob_hash(upload).hex()
            p = _validate(validate, doc)
        if p.M.initial_weights is None:
            raise click.ClickException("prescription.M.initial_weights: required: give --weights FILE or 0xHASH")
        key = private_key_from_options(keystore, password_file, from_address, private_key)
        client = Client(rpc_url, key)
        streams = StreamClient(client)
        if upload is not None:
            _upload(client, upload)
        task_id, paid_deposit = _run("submitStream", streams.submit, p, deposit)
    qualifying = _run("providers", client.qualifying_providers, p)
    click.echo(f"Budget {ether(p.I.max_payment)} + deposit {ether(paid_deposit)}", err=True)
    if qualifying < p.I.council_size:
        click.echo(f"The stream forms once {p.I.council_size} providers subscribe; {qualifying} qualify now", err=True)
    click.echo(f"Task ID: {task_id}")


def _validate(validate: Any, doc: dict[str, Any]) -> Prescription:
    try:
        return validate(doc)
    except InvalidPrescription as exc:
        raise click.ClickException(str(exc)) from None


def _upload(client: Client, path: Path) -> None:
    size = path.stat().st_size
    with transfer_progress(f"Uploading {path.name}", size) as advance:
        blob_hash, size = _run("upload", client.upload_blob, path, advance)
    click.echo(f"Uploaded {path.name}: 0x{blob_hash.hex()} ({size} bytes)", err=True)


# -- requests -----------------------------------------------------------------------------------------------


@stream.command("request")
@click.argument("task_id")
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True,
              help=f"Most bytes (tokens) to generate, 1 to {MAX_RESPONSE_TOKENS}.")
@click.option("--seed", type=int, default=None, help="The members' sampling seed (default: random).")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for the node's answer.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer as JSON.")
@datadir_option
@rpc_url_option
@key_options
def request(task_id: str, prompt: str, max_tokens: int, seed: int | None, timeout: float, as_json: bool,
            datadir: Path | None, rpc_url: str, keystore: Path | None, from_address: str | None,
            password_file: Path | None, private_key: str | None) -> None:
    """Ask stream TASK_ID to complete PROMPT (`-`: read it from stdin); print the answer, then pay the
    members that agreed with signed cumulative receipts (kept in DATADIR)."""
    task = _positive(task_id, "task id")
    data = _prompt_bytes(prompt)
    if not 1 <= max_tokens <= MAX_RESPONSE_TOKENS:
        raise click.ClickException(f"--max-tokens: must be 1 to {MAX_RESPONSE_TOKENS}, got {max_tokens}")
    if seed is not None and not 0 <= seed < 1 << 64:
        raise click.ClickException("--seed: must be 0 to 2**64 - 1")
    key = private_key_from_options(keystore, password_file, from_address, private_key)
    streams = StreamClient(Client(rpc_url, key, timeout=timeout), resolve_datadir(datadir))
    sent, answer = _run("the node refused the request", streams.request, task, data, max_tokens, seed, timeout)
    signed = delivered = 0
    failed = None  # the answer is shown even when paying for it fails; the failure is the exit status
    try:
        signed, delivered = _run("ogpu_streamReceipts", streams.pay, answer)
    except click.ClickException as exc:
        failed = exc
    if as_json:
        click.echo(json.dumps({**answer.raw, "seed": hex(sent.seed), "paid": _hexes(answer.verified) if signed else [],
                               "receipts": {"signed": signed, "delivered": delivered}}, indent=1))
    else:
        click.echo(answer.text)
        _summary(answer, signed, delivered)
    if failed is not None:
        raise failed


@stream.command("status")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole request as JSON.")
@datadir_option
@rpc_url_option
@key_options
def status(request_id: str, as_json: bool, datadir: Path | None, rpc_url: str, keystore: Path | None,
           from_address: str | None, password_file: Path | None, private_key: str | None) -> None:
    """Print REQUEST_ID as the node reports it now (an optimistic answer: validated or faulty). With a key,
    also pay the members that have agreed since the answer."""
    rid = _hash32(request_id, "request id")
    key = None
    if keystore is not None or private_key is not None:
        key = private_key_from_options(keystore, password_file, from_address, private_key)
    streams = StreamClient(Client(rpc_url, key), resolve_datadir(datadir))
    answer, _ = _run("ogpu_streamStatus", streams.status, rid)
    signed = delivered = 0
    if key is not None:
        signed, delivered = _run("ogpu_streamReceipts", streams.pay, answer)
    if as_json:
        click.echo(json.dumps({**answer.raw, "paid": _hexes(answer.verified) if signed else [],
                               "receipts": {"signed": signed, "delivered": delivered}}, indent=1))
        return
    click.echo(f"Status:   {answer.status}" + (f" ({answer.error})" if answer.error else ""))
    click.echo(f"Method:   {answer.method}")
    click.echo(f"Council:  {', '.join(_hexes(answer.council)) or '-'}")
    click.echo(f"Agreed:   {', '.join(_hexes(answer.agreed)) or '-'}")
    if answer.skipped:
        click.echo(f"Skipped:  {', '.join(_hexes(answer.skipped))}")
    if answer.response is not None:
        click.echo(f"Response: {json.dumps(answer.text, ensure_ascii=False)}")
    if key is not None:
        click.echo(f"Receipts: {signed} signed, {delivered} delivered")


def _hexes(members: tuple[bytes, ...]) -> list[str]:
    return ["0x" + m.hex() for m in members]


def _summary(answer: Answer, signed: int, delivered: int) -> None:
    """What the node did with the request, on stderr (stdout holds the answer alone)."""
    validated = {"answered": "not validated yet", "validated": "validated"}.get(answer.status, answer.status)
    click.echo(f"Request 0x{answer.request_id.hex()}: {answer.method}, {validated}; "
               f"{len(answer.agreed)} of {len(answer.council)} agreed: {', '.join(_hexes(answer.agreed))}", err=True)
    unpaid = [m for m in answer.agreed if m not in answer.verified]
    if unpaid:
        click.echo(f"Not paid (their signature over the answer does not check): {', '.join(_hexes(tuple(unpaid)))}",
                   err=True)
    click.echo(f"Receipts: {signed} signed, {delivered} delivered", err=True)


# -- the client's transactions ------------------------------------------------------------------------------


@stream.command("retract")
@click.argument("task_id")
@rpc_url_option
@key_options
def retract(task_id: str, rpc_url: str, keystore: Path | None, from_address: str | None,
            password_file: Path | None, private_key: str | None) -> None:
    """Close stream TASK_ID: no more requests; providers settle within its settle window, then the rest of
    the budget and the deposit come back."""
    task = _positive(task_id, "task id")
    key = private_key_from_options(keystore, password_file, from_address, private_key)
    receipt = _run("retract", StreamClient(Client(rpc_url, key)).retract, task)
    click.echo(f"Retracted stream {task} in tx 0x{bytes(receipt['transactionHash']).hex()}")


@stream.command("update-terms")
@click.argument("task_id")
@click.option("--price", type=click.IntRange(min=1), default=None, help="Wei per output token.")
@click.option("--method", type=click.Choice(RESPONSE_METHODS), default=None, help="The response method.")
@click.option("--weight", type=click.IntRange(min=1, max=10_000), default=None,
              help="Basis points of the council a weighted answer needs (6666 ≈ 2/3).")
@rpc_url_option
@key_options
def update_terms(task_id: str, price: int | None, method: str | None, weight: int | None, rpc_url: str,
                 keystore: Path | None, from_address: str | None, password_file: Path | None,
                 private_key: str | None) -> None:
    """A new terms version of stream TASK_ID; what is not given stays. Requests then name the new version."""
    task = _positive(task_id, "task id")
    if price is None and method is None and weight is None:
        raise click.ClickException("give at least one of --price, --method, --weight")
    key = private_key_from_options(keystore, password_file, from_address, private_key)
    version, receipt = _run("updateTerms", StreamClient(Client(rpc_url, key)).update_terms, task, price, method, weight)
    click.echo(f"Stream {task} is at terms version {version} (tx 0x{bytes(receipt['transactionHash']).hex()})")
