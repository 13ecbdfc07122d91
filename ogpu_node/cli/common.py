"""Options and helpers shared by the ``ogpu-node`` commands."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console, RenderableType

from ogpu_node.crypto.keystore import KeystoreError, load_private_key, parse_private_key
from ogpu_node.jsontext import JsonBoundsError, loads_bounded
from ogpu_node.types.prescription import MAX_NESTING, MAX_PRESCRIPTION_BYTES

__all__ = [
    "PLAIN_WIDTH",
    "console",
    "datadir_option",
    "default_datadir",
    "key_options",
    "password_file_option",
    "plain_text",
    "private_key_from_options",
    "read_password_file",
    "resolve_datadir",
    "rpc_url_option",
    "show",
    "transfer_progress",
]

F = TypeVar("F", bound=Callable[..., Any])

_APP_NAME = "ogpu-node"


def default_datadir() -> Path:
    """``$OGPU_DATADIR`` if set; else the platform's per-user data directory + ``ogpu-node``.

    Linux and other Unix: ``$XDG_DATA_HOME/ogpu-node``, falling back to ``~/.local/share/ogpu-node``.
    macOS: ``~/Library/Application Support/ogpu-node``. Windows: ``%APPDATA%\\ogpu-node``.
    """
    env = os.environ.get("OGPU_DATADIR")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / _APP_NAME
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return (Path(appdata) if appdata else home / "AppData" / "Roaming") / _APP_NAME
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative paths
        return Path(xdg) / _APP_NAME
    return home / ".local" / "share" / _APP_NAME


def resolve_datadir(datadir: Path | None) -> Path:
    """The value of ``--datadir``, or the default data directory when it was not given."""
    return default_datadir() if datadir is None else Path(datadir).expanduser()


def read_password_file(path: Path) -> str:
    """The first line of ``path`` without its line ending (geth's ``--password`` file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"password file {path} is not UTF-8 text") from None
    except OSError as e:
        raise click.ClickException(f"cannot read password file {path}: {e.strerror or e}") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise click.ClickException(f"password file {path} is empty (the password is its first line)")
    return password


def datadir_option(f: F) -> F:
    """``--datadir DIR``; the command receives ``datadir: Path | None`` (None: use default_datadir())."""
    return click.option(
        "--datadir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        show_default="$OGPU_DATADIR or ~/.local/share/ogpu-node",
        help="Data directory for the databases and keystore.",
    )(f)


def password_file_option(f: F) -> F:
    """``--password-file FILE``; the command receives ``password_file: Path | None``."""
    return click.option(
        "--password-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File whose first line is the keystore password (prompted for if not given).",
    )(f)


def rpc_url_option(f: F) -> F:
    return click.option("--rpc-url", required=True, envvar="OGPU_RPC_URL",
                        help="The node's JSON-RPC endpoint, e.g. http://127.0.0.1:8545.")(f)


def key_options(f: F) -> F:
    f = click.option("--private-key", default=None, envvar="OGPU_PRIVATE_KEY",
                     help="Hex private key (development only; prefer --keystore).")(f)
    f = password_file_option(f)
    f = click.option("--from", "from_address", default=None,
                     help="Account to use when the keystore holds several.")(f)
    f = click.option("--keystore", type=click.Path(path_type=Path), default=None,
                     help="Keystore directory or key file.")(f)
    return f


def private_key_from_options(keystore: Path | None, password_file: Path | None, from_address: str | None,
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


# -- output through rich ------------------------------------------------------------------------------------
# On a terminal, tables, charts and progress are drawn by rich (colour, the terminal's width). Into a pipe
# or a file the same renderables become plain text, never wrapped and without trailing spaces, so scripts
# can parse `Name:  value` lines and long hashes stay on one line.

PLAIN_WIDTH = 4096  # columns for plain output: wide enough that no row of ours wraps


def console(*, err: bool = False) -> Console:
    """A console on stdout (or stderr) that prints text as given: no markup, emoji or highlighting."""
    return Console(stderr=err, highlight=False, emoji=False, markup=False, soft_wrap=True)


def plain_text(renderable: RenderableType, width: int = PLAIN_WIDTH) -> str:
    """``renderable`` as uncoloured text, lines right-stripped."""
    out = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, highlight=False,
                  emoji=False, markup=False, legacy_windows=False)
    with out.capture() as captured:
        out.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def show(renderable: RenderableType, *, err: bool = False) -> None:
    """Print ``renderable``: drawn by rich on a terminal, as `plain_text` otherwise."""
    target = console(err=err)
    if target.is_terminal:
        target.print(renderable)
    else:
        click.echo(plain_text(renderable), err=err)


@contextmanager
def transfer_progress(description: str, total: int | None) -> Iterator[Callable[[int], None] | None]:
    """A transient progress bar on stderr for a transfer of ``total`` bytes (None: unknown), fed with the
    bytes done so far; on a non-terminal stderr it shows nothing and yields None."""
    target = console(err=True)
    if not target.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=target, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)


def read_prescription(path: Path) -> dict[str, Any]:
    """A prescription file's JSON object, bounded in size and depth before it is parsed."""
    try:
        doc = loads_bounded(path.read_bytes(), max_bytes=MAX_PRESCRIPTION_BYTES, max_nesting=MAX_NESTING)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    except JsonBoundsError as exc:  # bounded before parsing: a deep file would overflow the C stack
        raise click.ClickException(f"{path} is not a prescription: {exc}") from None
    if not isinstance(doc, dict):
        raise click.ClickException("prescription: expected a JSON object")
    return doc
