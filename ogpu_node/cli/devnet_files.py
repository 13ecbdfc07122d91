"""The files of an `ogpu-node devnet` (docs/network.md, "Devnet"): made once in its directory, reused by
every later run so the same chain restarts.

    D/genesis.json                  proof-of-stake genesis, written last (its presence marks a devnet)
    D/password                      the keystores' password (0600)
    D/keystore/validator<i>/        node i's validator key;  D/keystore/provider<j>/  provider j's key
    D/node<i>/                      node i's datadir: p2p/nodekey, validator/randao-*.bin, chaindata, node.log
    D/provider<j>/                  provider j's datadir
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ogpu_node.cli.common import read_password_file
from ogpu_node.config import DEV_GENESIS, GenesisConfig, GenesisError, load_genesis, parse_genesis
from ogpu_node.crypto import Keypair
from ogpu_node.crypto.keystore import (
    LIGHT_SCRYPT_N,
    KeystoreError,
    create_account,
    list_accounts,
    load_private_key,
)
from ogpu_node.files import atomic_write
from ogpu_node.node.validator_key import load_validator_key

__all__ = ["DEFAULT_SLOT_TIME", "DEFAULT_VALIDATORS", "DEVNET_CHAIN_ID", "MAX_DEVNET_NODES", "Devnet", "find_devnet",
           "make_devnet"]

DEVNET_CHAIN_ID = 1338  # not the dev chain's 1337: a wallet keeps the two apart
MAX_DEVNET_NODES = 16  # 16 nodes were the most 2 cores carried in the network measurements (DESIGN.md §5)
DEFAULT_VALIDATORS = 4
DEFAULT_SLOT_TIME = 2
SLOTS_PER_EPOCH = 4  # short epochs: a devnet finalizes within a minute
# RANDAO chains are counted in wall-clock epochs from genesisTime, whether the devnet runs or not.
# 2^16 epochs of 4 slots of 2 s last 6 days; building one takes ~1 s (~13 us a hash, measured), once per
# validator, into the node's cache. 2^20 (the node's default) would last years but take ~15 s each.
RANDAO_LENGTH = 1 << 16
# Seconds from writing the genesis to slot 0: GENESIS_DELAY, plus STARTUP_PER_NODE a node, as N node
# processes start at once (each ~4 s of CPU to start, measured; on 2 cores 2 s a node).
GENESIS_DELAY = 8
STARTUP_PER_NODE = 2
VALIDATOR_STAKE = 10_000 * 10**18
ACCOUNT_FUNDS = 1_000_000 * 10**18


@dataclass(frozen=True)
class Devnet:
    root: Path
    genesis: GenesisConfig
    password: str
    validators: tuple[bytes, ...]  # node i's validator address
    providers: tuple[bytes, ...]  # provider j's address

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    @property
    def password_path(self) -> Path:
        return self.root / "password"

    def node_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def validator_keystore(self, i: int) -> Path:
        return self.root / "keystore" / f"validator{i}"

    def provider_keystore(self, j: int) -> Path:
        return self.root / "keystore" / f"provider{j}"

    def provider_dir(self, j: int) -> Path:
        return self.root / f"provider{j}"

    @property
    def expires(self) -> int:
        """Unix time when the validators' RANDAO hash chains run out: after it the chain cannot go on."""
        consensus = self.genesis.consensus
        assert consensus is not None
        return consensus.epoch_start(consensus.randao_length)


def find_devnet(root: Path, validators: int | None, providers: int | None, slot_time: int | None) -> Devnet | None:
    """The devnet ``root`` holds, which the arguments given must match; None when ``root`` is new or empty.
    Raises ClickException on a mismatch, or on a ``root`` that holds something else. Writes nothing."""
    if (root / "genesis.json").exists():
        return _load(root, validators, providers, slot_time)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise click.ClickException(f"{root} is not empty and holds no devnet (genesis.json): give an empty or new "
                                   "--datadir")
    return None


def make_devnet(root: Path, validators: int, providers: int, slot_time: int) -> Devnet:
    """A new devnet in ``root`` (new or empty): keys, password, node keys, RANDAO chains and genesis."""
    # Made in a directory beside root and renamed onto it at the end, so an interrupted run leaves no
    # half-made devnet behind for the next one to trip over.
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".partial"))
    try:
        password = secrets.token_urlsafe(24)
        atomic_write(staging / "password", (password + "\n").encode(), mode=0o600)
        # Scrypt at geth's --lightkdf cost: the password lies beside the keys in D/password, so a costly
        # KDF would protect nothing here, and devnet keys hold no real value; it saves ~1 s per key.
        keys = [_new_key(staging / "keystore" / f"validator{i}", password) for i in range(validators)]
        provider_keys = [_new_key(staging / "keystore" / f"provider{j}", password) for j in range(providers)]
        genesis_time = int(time.time()) + GENESIS_DELAY + STARTUP_PER_NODE * validators
        tips = [
            # Built into node i's cache, where its node reads it instead of hashing the chain again.
            load_validator_key(staging / f"node{i}", key, RANDAO_LENGTH).randao.tip for i, key in enumerate(keys)
        ]
        from ogpu_node.p2p.identity import node_key  # loads py-libp2p (~1 s): only when a devnet is made

        for i in range(validators):
            node_key(staging / f"node{i}")  # node 0's peer id goes into the others' --bootnodes
        doc = _genesis_doc([k.address for k in keys], tips, [k.address for k in provider_keys], genesis_time,
                           slot_time)
        genesis = parse_genesis(doc)  # our own document: a failure here is a bug, not the user's input
        atomic_write(staging / "genesis.json", (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644)
        staging.replace(root)  # replaces an empty root directory too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Devnet(root, genesis, password, tuple(k.address for k in keys), tuple(k.address for k in provider_keys))


def _new_key(keystore: Path, password: str) -> Keypair:
    address, path = create_account(keystore, password, kdf_iterations=LIGHT_SCRYPT_N)
    return Keypair.from_private_key(load_private_key(path, address, password))


def _genesis_doc(validators: list[bytes], tips: list[bytes], providers: list[bytes], genesis_time: int,
                 slot_time: int) -> dict[str, object]:
    """The dev chain's protocol parameters and funded test accounts (so the --dev mnemonic's keys work
    here too), plus the devnet's validators, staked, and its providers, funded."""
    dev = json.loads(DEV_GENESIS.read_text())
    alloc = dict(dev["alloc"])
    alloc.update({"0x" + a.hex(): {"balance": hex(ACCOUNT_FUNDS)} for a in validators + providers})
    return {
        "config": {"chainId": DEVNET_CHAIN_ID, "ogpu": dev["config"]["ogpu"]},
        "alloc": alloc,
        "gasLimit": dev["gasLimit"],
        "baseFeePerGas": dev["baseFeePerGas"],
        "timestamp": genesis_time,
        "consensus": {
            "genesisTime": genesis_time, "slotTime": slot_time, "slotsPerEpoch": SLOTS_PER_EPOCH,
            "randaoLength": RANDAO_LENGTH,
            "validators": [{"address": "0x" + a.hex(), "stake": hex(VALIDATOR_STAKE), "randaoTip": "0x" + t.hex()}
                           for a, t in zip(validators, tips, strict=True)],
        },
    }


def _load(root: Path, validators: int | None, providers: int | None, slot_time: int | None) -> Devnet:
    path = root / "genesis.json"
    try:
        genesis = load_genesis(path)
    except GenesisError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    consensus = genesis.consensus
    if consensus is None or genesis.chain_id != DEVNET_CHAIN_ID:
        raise click.ClickException(f"{path} is not a devnet's genesis (chain id {genesis.chain_id}"
                                   f"{'' if consensus else ', no consensus section'}): give another --datadir")
    count = len(consensus.validators)
    if validators is not None and validators != count:
        raise click.ClickException(f"the devnet in {root} was made with --validators {count}, not {validators}: "
                                   "leave --validators out or give another --datadir")
    if slot_time is not None and slot_time != consensus.slot_time:
        raise click.ClickException(f"the devnet in {root} was made with --slot-time {consensus.slot_time}, not "
                                   f"{slot_time}: leave --slot-time out or give another --datadir")
    password = read_password_file(root / "password")
    keys = tuple(_address_in(root / "keystore" / f"validator{i}") for i in range(count))
    if keys != tuple(v.address for v in consensus.validators):
        raise click.ClickException(f"the validator keystores in {root / 'keystore'} do not hold {path}'s validators")
    made = 0
    while (root / "keystore" / f"provider{made}").is_dir():
        made += 1
    if providers is not None and providers > made:
        raise click.ClickException(f"the devnet in {root} was made with --providers {made}, so funds no more than "
                                   f"{made}, not {providers}: give fewer, or another --datadir")
    provider_keys = tuple(_address_in(root / "keystore" / f"provider{j}") for j in range(made))
    devnet = Devnet(root, genesis, password, keys, provider_keys[:made if providers is None else providers])
    if time.time() >= devnet.expires:
        raise click.ClickException(f"the devnet in {root} is past the end of its RANDAO hash chains "
                                   f"({time.ctime(devnet.expires)}): make a new one with another --datadir")
    if devnet.validators:  # the password must open the keys before any process is started with it
        try:
            load_private_key(devnet.validator_keystore(0), devnet.validators[0], password)
        except KeystoreError as exc:
            raise click.ClickException(str(exc)) from None
    return devnet


def _address_in(keystore: Path) -> bytes:
    accounts = list_accounts(keystore) if keystore.is_dir() else []
    if len(accounts) != 1:
        raise click.ClickException(f"{keystore} should hold one key, holds {len(accounts)}")
    return accounts[0][0]
