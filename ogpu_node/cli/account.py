"""``ogpu-node account new|list|import``: geth-style encrypted keystore management."""

from __future__ import annotations

from pathlib import Path

import click
from eth_utils import to_checksum_address

from ogpu_node.cli.common import (
    datadir_option,
    password_file_option,
    read_password_file,
    resolve_datadir,
)
from ogpu_node.crypto.keys import private_key_to_address
from ogpu_node.crypto.keystore import (
    LIGHT_SCRYPT_N,
    KeystoreError,
    create_account,
    find_account,
    keystore_dir,
    list_accounts,
    parse_private_key,
)

__all__ = ["account"]

_lightkdf_option = click.option(
    "--lightkdf",
    is_flag=True,
    default=False,
    help="Reduce key-derivation RAM and CPU usage at some expense of KDF strength (as geth's --lightkdf).",
)


def _new_password(password_file: Path | None) -> str:
    if password_file is not None:
        return read_password_file(password_file)
    click.echo(
        "Your new account is locked with a password. Please give a password. Do not forget it.", err=True
    )
    return click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)


def _store(keystore: Path, password: str, private_key: bytes | None, lightkdf: bool) -> None:
    try:
        address, path = create_account(
            keystore, password, private_key, kdf_iterations=LIGHT_SCRYPT_N if lightkdf else None
        )
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Address: {to_checksum_address(address)}")
    click.echo(f"Keystore: {path}")


@click.group("account")
def account() -> None:
    """Manage accounts in the encrypted keystore (DATADIR/keystore)."""


@account.command("new")
@datadir_option
@password_file_option
@_lightkdf_option
def new(datadir: Path | None, password_file: Path | None, lightkdf: bool) -> None:
    """Create a new account and print its address."""
    keystore = keystore_dir(resolve_datadir(datadir))
    password = _new_password(password_file)
    _store(keystore, password, None, lightkdf)


@account.command("list")
@datadir_option
def list_(datadir: Path | None) -> None:
    """Print the accounts in the keystore."""
    keystore = keystore_dir(resolve_datadir(datadir))
    try:
        accounts = list_accounts(keystore)
    except KeystoreError as e:
        raise click.ClickException(str(e)) from None
    if not accounts:
        click.echo(f"No accounts in {keystore}", err=True)
        return
    for i, (address, path) in enumerate(accounts):
        click.echo(f"Account #{i}: {{{to_checksum_address(address)}}} keystore://{path.absolute()}")


@account.command("import")
@click.argument("keyfile", type=click.Path(dir_okay=False, path_type=Path))
@datadir_option
@password_file_option
@_lightkdf_option
def import_(keyfile: Path, datadir: Path | None, password_file: Path | None, lightkdf: bool) -> None:
    """Import the hex private key in KEYFILE into a new encrypted key file."""
    keystore = keystore_dir(resolve_datadir(datadir))
    try:
        text = keyfile.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{keyfile} does not hold a hex private key") from None
    except OSError as e:
        raise click.ClickException(f"cannot read key file {keyfile}: {e.strerror or e}") from None
    try:
        # Never put the file's content into a message: it is (nearly) a private key.
        private_key = parse_private_key(text)
        # Fail before asking for a password if the account is already there.
        address = private_key_to_address(private_key)
        if find_account(keystore, address) is not None:
            raise KeystoreError(f"account {to_checksum_address(address)} already exists")
    except KeystoreError as e:
        raise click.ClickException(f"{keyfile}: {e}" if "private key" in str(e) else str(e)) from None
    password = _new_password(password_file)
    _store(keystore, password, private_key, lightkdf)
