"""``ogpu-node validator randao-tip``: what a validator registers in a proof-of-stake genesis."""

from __future__ import annotations

from pathlib import Path

import click

from ogpu_node.cli.common import password_file_option, private_key_from_options
from ogpu_node.config.consensus import MAX_RANDAO_LENGTH

__all__ = ["validator", "validator_private_key"]


def validator_private_key(keystore: Path, password_file: Path | None, from_address: str | None) -> bytes:
    """The keystore's private key (never printed or logged)."""
    return private_key_from_options(keystore, password_file, from_address, None)


@click.group("validator")
def validator() -> None:
    """Validator keys for a proof-of-stake genesis (docs/consensus.md)."""


@validator.command("randao-tip")
@click.option("--keystore", type=click.Path(path_type=Path), required=True, help="Keystore directory or key file.")
@password_file_option
@click.option("--from", "from_address", default=None, help="Account to use when the keystore holds several.")
@click.option("--length", type=click.IntRange(1, MAX_RANDAO_LENGTH), default=1 << 20, show_default=True,
              help="The genesis's consensus.randaoLength: epochs the hash chain lasts.")
def randao_tip(keystore: Path, password_file: Path | None, from_address: str | None, length: int) -> None:
    """Print the validator's RANDAO hash-chain tip (the genesis's consensus.validators[].randaoTip).

    The chain's secret is derived from the private key, so the keystore is all a validator keeps."""
    from eth_utils import to_checksum_address

    from ogpu_node.crypto import Keypair
    from ogpu_node.node.validator_key import randao_chain

    keypair = Keypair.from_private_key(validator_private_key(keystore, password_file, from_address))
    chain = randao_chain(keypair.private_key, length)
    click.echo(f"validator {to_checksum_address(keypair.address)} randaoLength {length}:", err=True)
    click.echo(f"0x{chain.tip.hex()}")  # alone on stdout, for scripts: tip=$(ogpu-node validator randao-tip ...)
