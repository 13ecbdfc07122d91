"""Geth-style genesis files: `config`, `alloc`, `gasLimit`, `baseFeePerGas`, `timestamp`, `extraData`,
and for a proof-of-stake chain `consensus` (config/consensus.py).

Numbers may be JSON integers or 0x-hex strings, as geth accepts. Every error names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ogpu_node.config.consensus import ConsensusConfig, parse_consensus
from ogpu_node.config.errors import GenesisError
from ogpu_node.jsontext import JsonBoundsError, loads_bounded

DEFAULT_GAS_LIMIT = 30_000_000
DEFAULT_BASE_FEE = 1_000_000_000  # 1 gwei, as geth --dev
MAX_EXTRA_DATA = 32


@dataclass(frozen=True)
class GenesisAccount:
    balance: int = 0
    nonce: int = 0
    code: bytes = b""
    storage: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolParams:
    """The native contracts' parameters (`config.ogpu` in the genesis file); all windows in seconds."""

    min_validator_stake: int = 1_000 * 10**18
    min_provider_stake: int = 100 * 10**18
    unbonding_delay: int = 14 * 24 * 3600
    reporter_share_bps: int = 1_000  # of a slashed amount, to the reporter or harmed party; the rest burns
    consensus_penalty_bps: int = 1_000  # of an offender's stake, for a slashable consensus offence
    collateral_bps: int = 10_000  # stake an executor's bid locks, as a share of its price
    collateral_floor_bps: int = 2_500  # the least a bid locks, as a share of the task's maxPayment
    min_collateral: int = 10**18  # the least any bid locks
    client_deposit_bps: int = 1_000  # the client's safety deposit, as a share of the maximum payment
    max_deadlines_per_block: int = 64  # time-triggered steps the start-of-block call runs per block
    reveal_window: int = 300  # seconds to reveal after a checkpoint's commit phase closes
    council_seat_stake: int = 10 * 10**18  # stake a council seat locks until its verdict
    missed_vote_penalty: int = 10**18  # taken from a member that does not commit or reveal in time
    max_inconclusive_rounds: int = 3  # fresh councils for one checkpoint before the task is cancelled

    @classmethod
    def from_json(cls, doc: Any) -> ProtocolParams:
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise GenesisError("genesis: config.ogpu must be an object")
        names = {
            "minValidatorStake": "min_validator_stake",
            "minProviderStake": "min_provider_stake",
            "unbondingDelay": "unbonding_delay",
            "reporterShareBps": "reporter_share_bps",
            "consensusPenaltyBps": "consensus_penalty_bps",
            "collateralBps": "collateral_bps",
            "collateralFloorBps": "collateral_floor_bps",
            "minCollateral": "min_collateral",
            "clientDepositBps": "client_deposit_bps",
            "maxDeadlinesPerBlock": "max_deadlines_per_block",
            "revealWindow": "reveal_window",
            "councilSeatStake": "council_seat_stake",
            "missedVotePenalty": "missed_vote_penalty",
            "maxInconclusiveRounds": "max_inconclusive_rounds",
        }
        unknown = set(doc) - set(names)
        if unknown:
            raise GenesisError(f"genesis: config.ogpu has unknown fields: {', '.join(sorted(unknown))}")
        params = cls(**{names[k]: _int(v, f"config.ogpu.{k}") for k, v in doc.items()})
        for name in ("reporterShareBps", "consensusPenaltyBps", "clientDepositBps", "collateralFloorBps"):
            if getattr(params, names[name]) > 10_000:
                raise GenesisError(f"genesis: config.ogpu.{name} must be at most 10000 (basis points)")
        return params


@dataclass(frozen=True)
class GenesisConfig:
    chain_id: int
    alloc: dict[bytes, GenesisAccount]
    gas_limit: int = DEFAULT_GAS_LIMIT
    base_fee: int = DEFAULT_BASE_FEE
    timestamp: int = 0
    extra_data: bytes = b""
    coinbase: bytes = b"\x00" * 20
    mix_hash: bytes = b"\x00" * 32
    protocol: ProtocolParams = field(default_factory=ProtocolParams)
    consensus: ConsensusConfig | None = None  # None: no proof of stake (a --dev chain)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_supply(self) -> int:
        """Every coin the genesis state holds: the alloc's balances and the genesis validators' stake
        (minted into Stake's balance)."""
        staked = sum(v.stake for v in self.consensus.validators) if self.consensus is not None else 0
        return sum(acct.balance for acct in self.alloc.values()) + staked


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise GenesisError(f"genesis: {name} must be a number, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str):
        try:
            result = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
        except ValueError:
            raise GenesisError(f"genesis: {name} is not a number: {value!r}") from None
    else:
        raise GenesisError(f"genesis: {name} must be a number, got {value!r}")
    if result < 0:
        raise GenesisError(f"genesis: {name} must not be negative")
    return result


def _bytes(value: Any, name: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise GenesisError(f"genesis: {name} must be a 0x-prefixed hex string")
    try:
        result = bytes.fromhex(value[2:])
    except ValueError:
        raise GenesisError(f"genesis: {name} is not valid hex: {value!r}") from None
    if length is not None and len(result) != length:
        raise GenesisError(f"genesis: {name} must be {length} bytes, got {len(result)}")
    return result


def _address(value: str, name: str) -> bytes:
    text = value if value.startswith(("0x", "0X")) else "0x" + value
    return _bytes(text, name, 20)


def parse_genesis(doc: Any) -> GenesisConfig:
    if not isinstance(doc, dict):
        raise GenesisError("genesis: the document must be a JSON object")
    config = doc.get("config")
    if not isinstance(config, dict) or "chainId" not in config:
        raise GenesisError("genesis: config.chainId is required")
    chain_id = _int(config["chainId"], "config.chainId")
    if chain_id == 0:
        raise GenesisError("genesis: config.chainId must be positive")

    alloc_doc = doc.get("alloc", {})
    if not isinstance(alloc_doc, dict):
        raise GenesisError("genesis: alloc must be an object of address -> account")
    alloc: dict[bytes, GenesisAccount] = {}
    for addr_text, acct in alloc_doc.items():
        where = f"alloc[{addr_text}]"
        address = _address(addr_text, where)
        if not isinstance(acct, dict):
            raise GenesisError(f"genesis: {where} must be an object")
        storage_doc = acct.get("storage", {})
        if not isinstance(storage_doc, dict):
            raise GenesisError(f"genesis: {where}.storage must be an object")
        storage = {
            _int(k, f"{where}.storage key"): _int(v, f"{where}.storage[{k}]") for k, v in storage_doc.items()
        }
        alloc[address] = GenesisAccount(
            balance=_int(acct.get("balance", 0), f"{where}.balance"),
            nonce=_int(acct.get("nonce", 0), f"{where}.nonce"),
            code=_bytes(acct.get("code", "0x"), f"{where}.code"),
            storage=storage,
        )

    extra = _bytes(doc.get("extraData", "0x"), "extraData")
    if len(extra) > MAX_EXTRA_DATA:
        raise GenesisError(f"genesis: extraData must be at most {MAX_EXTRA_DATA} bytes")
    gas_limit = _int(doc.get("gasLimit", DEFAULT_GAS_LIMIT), "gasLimit")
    if gas_limit < 5000:
        raise GenesisError("genesis: gasLimit must be at least 5000")
    timestamp = _int(doc.get("timestamp", 0), "timestamp")
    protocol = ProtocolParams.from_json(config.get("ogpu"))
    consensus = parse_consensus(doc.get("consensus"), number=_int, hex_bytes=_bytes, genesis_timestamp=timestamp,
                                min_stake=protocol.min_validator_stake)
    return GenesisConfig(
        chain_id=chain_id,
        alloc=alloc,
        gas_limit=gas_limit,
        base_fee=_int(doc.get("baseFeePerGas", DEFAULT_BASE_FEE), "baseFeePerGas"),
        timestamp=timestamp,
        extra_data=extra,
        coinbase=_address(doc.get("coinbase", "0x" + "00" * 20), "coinbase"),
        mix_hash=_bytes(doc.get("mixHash", "0x" + "00" * 32), "mixHash", 32),
        protocol=protocol,
        consensus=consensus,
        raw=doc,
    )


MAX_GENESIS_BYTES = 256 << 20  # a large alloc is a few MB; nesting is bounded as for every JSON from outside
DEV_GENESIS: Traversable = files("ogpu_node.config") / "networks" / "dev.json"  # package data: works from a wheel


def load_genesis(path: str | Path | Traversable) -> GenesisConfig:
    try:
        text = (Path(path) if isinstance(path, str) else path).read_text()
    except OSError as exc:
        raise GenesisError(f"genesis: cannot read {path}: {exc.strerror}") from None
    try:
        doc = loads_bounded(text, max_bytes=MAX_GENESIS_BYTES)
    except JsonBoundsError as exc:  # not JSON, too large, or nested too deep
        raise GenesisError(f"genesis: {path}: {exc}") from None
    return parse_genesis(doc)
