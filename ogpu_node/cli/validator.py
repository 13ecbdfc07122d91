"""``ogpu-node validator``: `randao-tip`, what a validator registers in a proof-of-stake genesis, and
`slashing-protection export|import`, its record of what it signed in EIP-3076's interchange format."""

from __future__ import annotations

from pathlib import Path

import click

from ogpu_node.cli.common import (
    datadir_option,
    password_file_option,
    private_key_from_options,
    resolve_datadir,
)
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


# -- slashing protection (docs/consensus.md, "Slashing protection") --

@validator.group("slashing-protection")
def slashing_protection() -> None:
    """The record of what each validator key signed, in EIP-3076's interchange format (version 5)."""


def _address(text: str, option: str) -> bytes:
    try:
        address = bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))
    except ValueError:
        address = b""
    if len(address) != 20:
        raise click.ClickException(f"{option}: not an address: {text}")
    return address


def _keystore_addresses(keystore: Path, from_address: str | None) -> list[bytes]:
    """The accounts of a keystore directory or key file (read without the password), or --from's."""
    from ogpu_node.crypto.keystore import KeystoreError, list_accounts

    try:
        if keystore.is_file():
            accounts = [a for a, p in list_accounts(keystore.parent) if p.resolve() == keystore.resolve()]
        else:
            accounts = [a for a, _ in list_accounts(keystore)]
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    if from_address is not None:
        wanted = _address(from_address, "--from")
        accounts = [a for a in accounts if a == wanted]
    if not accounts:
        raise click.ClickException(f"no account{' ' + from_address if from_address else 's'} in {keystore}")
    return accounts


@slashing_protection.command("export")
@datadir_option
@click.option("--keystore", type=click.Path(path_type=Path), default=None,
              help="Export the keys of this keystore directory or key file (no password needed).")
@click.option("--from", "from_address", default=None, help="With --keystore: only this account.")
@click.option("--address", default=None, help="Export this validator address's record.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: stdout).")
def export(datadir: Path | None, keystore: Path | None, from_address: str | None, address: str | None,
           output: Path | None) -> None:
    """Write the datadir's slashing-protection records (every key's, or the one asked for) as an
    EIP-3076 interchange file. Safe while the node runs: it sees the record as it stands."""
    import json

    from ogpu_node.files import atomic_write
    from ogpu_node.node.slashing_interchange import to_interchange
    from ogpu_node.node.slashing_protection import (
        SlashingProtectionError,
        protection_files,
        protection_path,
        read_protection,
    )

    datadir = resolve_datadir(datadir)
    if keystore is not None and address is not None:
        raise click.ClickException("give --keystore or --address, not both")
    if from_address is not None and keystore is None:
        raise click.ClickException("--from picks an account of --keystore")
    if address is not None:
        paths = [protection_path(datadir, _address(address, "--address"))]
    elif keystore is not None:
        paths = [protection_path(datadir, a) for a in _keystore_addresses(keystore, from_address)]
    else:
        paths = protection_files(datadir)
        if not paths:
            raise click.ClickException(f"no slashing-protection records in {datadir}")
    histories = {}
    genesis_hashes = set()
    for path in paths:
        if not path.is_file():
            raise click.ClickException(f"no slashing-protection record {path} (a node makes it when it first "
                                       "runs with the key)")
        try:
            genesis_hash, key_address, history = read_protection(path)
        except SlashingProtectionError as exc:
            raise click.ClickException(str(exc)) from None
        genesis_hashes.add(genesis_hash)
        histories[key_address] = history
    if len(genesis_hashes) > 1:
        raise click.ClickException(f"the records in {datadir} are of {len(genesis_hashes)} chains; export them one "
                                   "--address at a time")
    text = json.dumps(to_interchange(genesis_hashes.pop(), histories), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        atomic_write(output, text.encode())
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"exported {len(histories)} key{'s' if len(histories) != 1 else ''} to {output}", err=True)


def _chain_genesis_hash(datadir: Path, genesis_file: Path | None) -> bytes:
    """The genesis hash of the datadir's chain (read as `run` opens it: refused while a node runs)."""
    from ogpu_node.chain import Chain, ChainError
    from ogpu_node.cli.main import _proof_of_stake_genesis
    from ogpu_node.db import DatabaseLocked, LMDBStore

    if not (datadir / "chaindata").is_dir():
        raise click.ClickException(f"{datadir} holds no chain: run `ogpu-node init --datadir {datadir} GENESIS` first")
    genesis = _proof_of_stake_genesis(datadir, genesis_file, 0)
    try:
        store = LMDBStore(datadir / "chaindata")
    except DatabaseLocked as exc:
        raise click.ClickException(f"{exc}: stop the node before importing") from None
    try:
        return Chain(store, genesis).genesis_hash
    except ChainError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@slashing_protection.command("import")
@datadir_option
@click.option("--input", "input_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="EIP-3076 interchange file (version 5) of this chain.")
@click.option("--genesis", "genesis_file", type=click.Path(path_type=Path), default=None,
              help="Genesis file (default: the datadir's).")
def import_(datadir: Path | None, input_file: Path, genesis_file: Path | None) -> None:
    """Merge an interchange file into the datadir's records (stop the node first).

    Each key of the file then signs no block at or below the file's highest slot for it, and no vote
    with a source below its highest source epoch or a target at or below its highest target epoch."""
    from ogpu_node.node.slashing_interchange import MAX_INTERCHANGE_BYTES, InterchangeError, from_interchange
    from ogpu_node.node.slashing_protection import SlashingProtection, SlashingProtectionError

    datadir = resolve_datadir(datadir)
    try:
        with open(input_file, "rb") as f:
            text = f.read(MAX_INTERCHANGE_BYTES + 1)  # more is refused unread by from_interchange's bound
    except OSError as exc:
        raise click.ClickException(f"cannot read {input_file}: {exc.strerror or exc}") from None
    try:
        genesis_hash, histories = from_interchange(text)
    except InterchangeError as exc:
        raise click.ClickException(f"{input_file}: {exc}") from None
    chain_genesis = _chain_genesis_hash(datadir, genesis_file)
    if genesis_hash != chain_genesis:
        raise click.ClickException(f"{input_file} is of the chain with genesis 0x{genesis_hash.hex()}, not this "
                                   f"datadir's (0x{chain_genesis.hex()})")
    guards: list[SlashingProtection] = []
    try:
        for address in histories:  # every record opened (and checked) before any is changed
            guards.append(SlashingProtection.open(datadir, address, genesis_hash))
        for guard in guards:
            merged = guard.merge(histories[guard.address])
            click.echo(f"0x{guard.address.hex()}: no proposal at or below slot {merged.block_floor}, no attestation "
                       f"with a source below epoch {merged.source_floor} or a target at or below {merged.target_floor}")
    except SlashingProtectionError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for guard in guards:
            guard.close()
    click.echo(f"imported {len(histories)} key{'s' if len(histories) != 1 else ''} from {input_file}", err=True)
