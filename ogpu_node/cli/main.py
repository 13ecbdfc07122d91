"""`ogpu-node`: geth-like commands. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import click
import trio
from eth_utils import to_checksum_address

from ogpu_node import CLIENT_VERSION
from ogpu_node.chain import ChainError
from ogpu_node.cli.account import account
from ogpu_node.cli.common import datadir_option, resolve_datadir
from ogpu_node.cli.devnet import devnet
from ogpu_node.cli.provider import provider
from ogpu_node.cli.stream import stream
from ogpu_node.cli.task import task
from ogpu_node.cli.validator import validator, validator_private_key
from ogpu_node.config import DEV_GENESIS, GenesisConfig, GenesisError, load_genesis
from ogpu_node.crypto import DEV_MNEMONIC, derive_dev_accounts
from ogpu_node.db import DatabaseLocked
from ogpu_node.p2p.limits import DEFAULT_MAXPEERS, DEFAULT_P2P_PORT

_GENESIS_COPY = "genesis.json"

log = logging.getLogger("ogpu.cli")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-5s %(name)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(CLIENT_VERSION, message="%(version)s")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
def cli(log_level: str) -> None:
    """Full node for the OpenGPU Network."""
    _setup_logging(log_level)


cli.add_command(account)
cli.add_command(task)
cli.add_command(stream)
cli.add_command(provider)
cli.add_command(validator)
cli.add_command(devnet)


class Duration(click.ParamType):
    """A duration as geth takes one: 5s, 500ms, 1m, or plain seconds; returns seconds."""

    name = "duration"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        for unit in ("ms", "s", "m", "h"):  # "ms" before "s" and "m"
            if text.endswith(unit):
                number, scale = text[: -len(unit)], self._UNITS[unit]
                break
        else:
            number, scale = text, 1.0
        try:
            seconds = float(number) * scale
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 5s, 500ms)", param, ctx)
        if not seconds >= 0 or seconds == float("inf"):
            self.fail(f"{value!r} is not a duration (e.g. 5s, 500ms)", param, ctx)
        return seconds


def _load_genesis(path: Path) -> GenesisConfig:
    try:
        return load_genesis(path)
    except GenesisError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@datadir_option
@click.argument("genesis_file", type=click.Path(path_type=Path))
def init(datadir: Path | None, genesis_file: Path) -> None:
    """Write the genesis block of GENESIS_FILE into the datadir."""
    from ogpu_node.chain import Chain
    from ogpu_node.db import LMDBStore

    datadir = resolve_datadir(datadir)
    genesis = _load_genesis(genesis_file)
    copy = datadir / _GENESIS_COPY
    if copy.is_file() and _load_genesis(copy).consensus != genesis.consensus:  # the genesis hash does not cover it
        raise click.ClickException(f"the datadir holds a chain of another consensus section ({copy})")
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        store = LMDBStore(datadir / "chaindata")
    except DatabaseLocked as exc:
        raise click.ClickException(str(exc)) from None
    try:
        genesis_hash = Chain(store, genesis).genesis_hash
    except ChainError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    (datadir / _GENESIS_COPY).write_text(json.dumps(genesis.raw, indent=2) + "\n")
    click.echo(f"Successfully wrote genesis state  database=chaindata  hash=0x{genesis_hash.hex()}")


def _print_dev_banner(node, accounts) -> None:  # type: ignore[no-untyped-def]
    lines = ["", "Available Accounts", "=================="]
    for i, acct in enumerate(accounts):
        balance = node.chain.account(node.chain.head, acct.address)[1]
        lines.append(f"({i}) {to_checksum_address(acct.address)} ({balance / 10**18:g} oGPU)")
    lines += ["", "Private Keys", "=================="]
    lines += [f"({i}) 0x{acct.private_key.hex()}" for i, acct in enumerate(accounts)]
    lines += [
        "",
        "Wallet",
        "==================",
        f"Mnemonic:          {DEV_MNEMONIC}",
        "Derivation path:   m/44'/60'/0'/0/",
        "",
        f"Chain ID:          {node.chain.chain_id}",
        f"Datadir:           {node.config.datadir}",
        "",
        f"Listening on http://{node.config.http_addr}:{node.http_port}",
    ]
    if node.ws_port is not None:
        lines.append(f"WebSocket on  ws://{node.config.http_addr}:{node.ws_port}")
    click.echo("\n".join(lines), nl=True)
    sys.stdout.flush()


@cli.command()
@datadir_option
@click.option("--genesis", "genesis_file", type=click.Path(path_type=Path), help="Genesis file (default: the datadir's).")
@click.option("--dev", is_flag=True, help="Single-validator dev chain with funded test accounts, as anvil.")
@click.option("--keystore", type=click.Path(path_type=Path), default=None,
              help="Proof of stake: validate with this keystore's key (a directory or key file); "
                   "without it the node is a full node.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the keystore password (prompted for if not given).")
@click.option("--block-time", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds between blocks; 0 seals a block as soon as transactions arrive.")
@click.option("--http.addr", "http_addr", default="127.0.0.1", show_default=True)
@click.option("--http.port", "http_port", type=click.IntRange(0, 65535), default=8545, show_default=True)
@click.option("--ws.port", "ws_port", type=click.IntRange(0, 65535), default=8546, show_default=True)
@click.option("--no-ws", is_flag=True, help="Do not serve WebSocket.")
@click.option("--blob.max-bytes", "blob_max_bytes", type=click.IntRange(min=1), default=1 << 30, show_default=True,
              help="Largest blob (dataset, model, checkpoint) the node stores.")
@click.option("--blob.min-free", "blob_min_free", type=click.IntRange(min=0), default=256 << 20, show_default=True,
              help="Bytes of free disk the node keeps: uploads that would go below it are refused (507).")
@click.option("--blob.min-balance", "blob_min_balance", type=click.IntRange(min=0), default=10**18, show_default=True,
              help="Wei an unstaked account holds to upload blobs (a staked one always may).")
@click.option("--blob.quota", "blob_quota", type=click.IntRange(min=0), default=4 << 30, show_default=True,
              help="Bytes of an account's uploads no task references yet (more: 429).")
@click.option("--blob.pending-max", "blob_pending_max", type=click.IntRange(min=0), default=16 << 30,
              show_default=True, help="Bytes of uploads no task references yet, all accounts together (more: 507).")
@click.option("--blob.ttl", "blob_ttl", type=Duration(), default="24h", show_default=True,
              help="How long an upload no task references is kept, e.g. 24h, 30m.")
@click.option("--rpc.gascap", "rpc_gascap", type=click.IntRange(min=0), default=50_000_000, show_default=True,
              help="Gas cap of eth_call/eth_estimateGas; caller gas above it is capped (0 = no cap).")
@click.option("--rpc.evmtimeout", "rpc_evmtimeout", type=Duration(), default="5s", show_default=True,
              help="Timeout of eth_call/eth_estimateGas, e.g. 5s, 500ms (0 = none).")
@click.option("--rpc.allow-unprotected-txs", "rpc_allow_unprotected_txs", is_flag=True,
              help="Accept legacy transactions without a chain id (not replay-protected) over RPC.")
@click.option("--http.corsdomain", "http_corsdomain", default="", show_default=True,
              help="Comma-separated browser origins allowed to read HTTP replies ('*': any; default none).")
@click.option("--http.vhosts", "http_vhosts", default="localhost", show_default=True,
              help="Comma-separated Host names served ('*': any); IP addresses are always served.")
@click.option("--ws.origins", "ws_origins", default="", show_default=True,
              help="Comma-separated browser origins allowed to open a WebSocket ('*': any; default localhost).")
@click.option("--port", "p2p_port", type=click.IntRange(0, 65535), default=DEFAULT_P2P_PORT, show_default=True,
              help="Proof of stake: the p2p TCP port (0: any free port).")
@click.option("--p2p.addr", "p2p_addr", default="127.0.0.1", show_default=True,
              help="Proof of stake: the address the p2p listener binds (0.0.0.0 to take peers from other machines).")
@click.option("--bootnodes", default="", help="Comma-separated multiaddrs (/ip4/…/tcp/…/p2p/<peer id>) to join through.")
@click.option("--maxpeers", type=click.IntRange(0, 1000), default=DEFAULT_MAXPEERS, show_default=True,
              help="Most peers kept connected (0: no network).")
def run(
    datadir: Path | None,
    genesis_file: Path | None,
    dev: bool,
    keystore: Path | None,
    password_file: Path | None,
    block_time: float,
    http_addr: str,
    http_port: int,
    ws_port: int,
    no_ws: bool,
    blob_max_bytes: int,
    blob_min_free: int,
    blob_min_balance: int,
    blob_quota: int,
    blob_pending_max: int,
    blob_ttl: float,
    rpc_gascap: int,
    rpc_evmtimeout: float,
    rpc_allow_unprotected_txs: bool,
    http_corsdomain: str,
    http_vhosts: str,
    ws_origins: str,
    p2p_port: int,
    p2p_addr: str,
    bootnodes: str,
    maxpeers: int,
) -> None:
    """Run a node."""
    from ogpu_node.blobs import UploadLimits
    from ogpu_node.node import Node, NodeConfig
    from ogpu_node.node.network import P2PConfig
    from ogpu_node.node.slashing_protection import SlashingProtectionError
    from ogpu_node.rpc.access import HttpAccess
    from ogpu_node.rpc.calls import CallLimits

    temp_dir = None
    validator_key = None
    if dev:
        if keystore is not None:
            raise click.ClickException("--keystore validates a proof-of-stake chain; --dev signs with its own test key")
        if datadir is None:
            temp_dir = Path(tempfile.mkdtemp(prefix="ogpu-dev-"))
            datadir = temp_dir
        genesis = _load_genesis(genesis_file or DEV_GENESIS)
        if genesis.consensus is not None:
            raise click.ClickException("this genesis has a consensus section (proof of stake): run it without --dev")
        accounts = derive_dev_accounts(10)
    else:
        datadir = resolve_datadir(datadir)
        genesis = _proof_of_stake_genesis(datadir, genesis_file, block_time)
        accounts = []
        if keystore is not None:
            validator_key = _validator_key(datadir, genesis, keystore, password_file)
    config = NodeConfig(
        datadir=datadir,
        genesis=genesis,
        signer=accounts[0] if dev else None,
        block_time=block_time,
        http_addr=http_addr,
        http_port=http_port,
        ws_port=None if no_ws else ws_port,
        durable=not dev,
        blob_max_bytes=blob_max_bytes,
        blob_min_free=blob_min_free,
        blob_uploads=UploadLimits(min_balance=blob_min_balance, quota=blob_quota, pending_max=blob_pending_max,
                                  ttl_s=blob_ttl),
        calls=CallLimits(gas_cap=rpc_gascap, evm_timeout_s=rpc_evmtimeout),
        allow_unprotected_txs=rpc_allow_unprotected_txs,
        access=HttpAccess(
            cors_domains=_csv(http_corsdomain), vhosts=_csv(http_vhosts), ws_origins=_csv(ws_origins)
        ),
        validator=validator_key,
        p2p=None if dev or maxpeers == 0 else P2PConfig(p2p_addr, p2p_port, _csv(bootnodes), maxpeers),
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(config).run)
            if dev:
                _print_dev_banner(node, accounts)
            else:
                _print_banner(node)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("shutting down")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseException as exc:  # trio wraps failures of its tasks in exception groups
        cause = _first_cause(exc)
        if isinstance(cause, (ChainError, DatabaseLocked, SlashingProtectionError)):
            raise click.ClickException(str(cause)) from None
        if isinstance(cause, OSError):
            raise click.ClickException(f"cannot start: {cause.strerror or cause}") from None
        raise
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _proof_of_stake_genesis(datadir: Path, genesis_file: Path | None, block_time: float) -> GenesisConfig:
    """The genesis of a node run without --dev: --genesis, or the datadir's copy that `init` wrote; it
    must have a consensus section, and match the datadir's copy (said plainly here, before the chain's
    genesis hash, which covers the section, refuses it less clearly)."""
    copy = datadir / _GENESIS_COPY
    if genesis_file is None and not copy.is_file():
        raise click.ClickException(f"no genesis: give --genesis, run `ogpu-node init --datadir {datadir} GENESIS` "
                                   "first, or use --dev")
    genesis = _load_genesis(genesis_file or copy)
    if genesis.consensus is None:
        raise click.ClickException("this genesis has no consensus section: a node without --dev runs proof of stake "
                                   "(docs/consensus.md); use --dev for a single-signer dev chain")
    if block_time:
        raise click.ClickException("--block-time is for --dev: a proof-of-stake chain makes a block each slotTime")
    if genesis_file is not None and copy.is_file() and _load_genesis(copy).consensus != genesis.consensus:
        raise click.ClickException(f"the consensus section of {genesis_file} differs from the datadir's genesis ({copy})")
    return genesis


def _validator_key(datadir: Path, genesis: GenesisConfig, keystore: Path, password_file: Path | None):  # type: ignore[no-untyped-def]
    """The keystore's validator key with its RANDAO hash chain (built once, then read from the datadir)."""
    from ogpu_node.crypto import Keypair
    from ogpu_node.node.validator_key import load_validator_key

    assert genesis.consensus is not None
    # A key outside the genesis validators may join later through Stake (setRandaoTip, setRoles): the
    # node checks its RANDAO tip against Stake's record (ProofOfStake) and gives it duties once active.
    keypair = Keypair.from_private_key(validator_private_key(keystore, password_file, None))
    return load_validator_key(datadir, keypair, genesis.consensus.randao_length)


def _print_banner(node) -> None:  # type: ignore[no-untyped-def]
    key = node.config.validator
    role = f"validator {to_checksum_address(key.address)}" if key is not None else "full node (no --keystore)"
    lines = [f"Chain ID:          {node.chain.chain_id}", f"Datadir:           {node.config.datadir}",
             f"Role:              {role}", "", f"Listening on http://{node.config.http_addr}:{node.http_port}"]
    if node.ws_port is not None:
        lines.append(f"WebSocket on  ws://{node.config.http_addr}:{node.ws_port}")
    click.echo("\n".join(lines))
    sys.stdout.flush()


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _first_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main() -> None:
    cli(prog_name="ogpu-node")


if __name__ == "__main__":
    main()
