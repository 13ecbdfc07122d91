"""The genesis file's optional `consensus` section: a proof-of-stake chain's slot clock and its
initial validators (docs/consensus.md, "Running a validator").

config/ sits below consensus/, so this is config's own typed copy; the node converts it into
`ogpu_node.consensus.ConsensusParams` and `Validator`s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ogpu_node.config.errors import GenesisError

MAX_SLOT_TIME = 3600  # seconds: a slot longer than an hour is a mistake, not a chain
MAX_SLOTS_PER_EPOCH = 1024
MAX_RANDAO_LENGTH = 1 << 26  # epochs; a validator hashes this many times once to build its chain
MAX_VALIDATORS = 10_000
MAX_CHURN_LIMIT = 1024  # activations (and exits) per epoch


@dataclass(frozen=True)
class GenesisValidator:
    address: bytes
    stake: int  # wei
    randao_tip: bytes  # H^randao_length(secret) of its RANDAO hash chain


@dataclass(frozen=True)
class ConsensusConfig:
    genesis_time: int  # unix time of slot 0
    slot_time: int
    slots_per_epoch: int
    randao_length: int
    validators: tuple[GenesisValidator, ...]
    churn_limit: int = 4  # validators activated, and validators exited, per epoch boundary at most
    base_reward_ppb: int = 25  # a validator's base reward per epoch, parts per billion of its stake
    block_reward: int = 10**17  # wei minted to each block's proposer
    inactivity_quotient: int = 4096  # Q of the inactivity leak

    def epoch_at(self, timestamp: int) -> int:
        """The epoch of a block with ``timestamp`` (0 before genesis)."""
        return max(0, timestamp - self.genesis_time) // self.slot_time // self.slots_per_epoch

    def epoch_start(self, epoch: int) -> int:
        """The timestamp of ``epoch``'s first slot."""
        return self.genesis_time + epoch * self.slots_per_epoch * self.slot_time

    def encode(self) -> list[int]:
        """The parameters the genesis block commits to (the validators are in its state)."""
        return [self.genesis_time, self.slot_time, self.slots_per_epoch, self.randao_length, self.churn_limit,
                self.base_reward_ppb, self.block_reward, self.inactivity_quotient]


_FIELDS = {"genesisTime", "slotTime", "slotsPerEpoch", "randaoLength", "churnLimit", "baseRewardPpb", "blockReward",
           "inactivityQuotient", "validators"}
_VALIDATOR_FIELDS = {"address", "stake", "randaoTip"}


def _bounded(value: int, name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise GenesisError(f"genesis: {name} must be between {low} and {high}, got {value}")
    return value


def parse_consensus(
    doc: Any,
    *,
    number: Callable[[Any, str], int],
    hex_bytes: Callable[[Any, str, int], bytes],
    genesis_timestamp: int,
    min_stake: int,
) -> ConsensusConfig | None:
    """The `consensus` section, or None when the genesis has none (a --dev chain). ``number`` and
    ``hex_bytes`` are genesis.py's field parsers, so every field reads as the rest of the file does."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise GenesisError("genesis: consensus must be an object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise GenesisError(f"genesis: consensus has unknown fields: {', '.join(sorted(unknown))}")
    if "genesisTime" not in doc:
        raise GenesisError("genesis: consensus.genesisTime is required (unix time of slot 0)")
    genesis_time = number(doc["genesisTime"], "consensus.genesisTime")
    if genesis_time < genesis_timestamp:
        # Slot 1's block must come after the genesis block's timestamp.
        raise GenesisError(f"genesis: consensus.genesisTime ({genesis_time}) is before timestamp ({genesis_timestamp})")
    slot_time = _bounded(number(doc.get("slotTime", 2), "consensus.slotTime"), "consensus.slotTime", 1, MAX_SLOT_TIME)
    slots_per_epoch = _bounded(number(doc.get("slotsPerEpoch", 8), "consensus.slotsPerEpoch"),
                               "consensus.slotsPerEpoch", 1, MAX_SLOTS_PER_EPOCH)
    randao_length = _bounded(number(doc.get("randaoLength", 1 << 20), "consensus.randaoLength"),
                             "consensus.randaoLength", 1, MAX_RANDAO_LENGTH)
    churn_limit = _bounded(number(doc.get("churnLimit", 4), "consensus.churnLimit"), "consensus.churnLimit",
                           1, MAX_CHURN_LIMIT)
    base_reward_ppb = _bounded(number(doc.get("baseRewardPpb", 25), "consensus.baseRewardPpb"),
                               "consensus.baseRewardPpb", 0, 10**6)
    block_reward = _bounded(number(doc.get("blockReward", 10**17), "consensus.blockReward"), "consensus.blockReward",
                            0, 10**24)
    inactivity_quotient = _bounded(number(doc.get("inactivityQuotient", 4096), "consensus.inactivityQuotient"),
                                   "consensus.inactivityQuotient", 16, 1 << 32)
    entries = doc.get("validators")
    if not isinstance(entries, list) or not entries:
        raise GenesisError("genesis: consensus.validators must be a non-empty list")
    if len(entries) > MAX_VALIDATORS:
        raise GenesisError(f"genesis: consensus.validators lists more than {MAX_VALIDATORS} validators")
    validators: list[GenesisValidator] = []
    seen: set[bytes] = set()
    for i, entry in enumerate(entries):
        where = f"consensus.validators[{i}]"
        if not isinstance(entry, dict):
            raise GenesisError(f"genesis: {where} must be an object")
        unknown = set(entry) - _VALIDATOR_FIELDS
        missing = _VALIDATOR_FIELDS - set(entry)
        if unknown or missing:
            detail = f"unknown fields: {', '.join(sorted(unknown))}" if unknown else \
                f"missing fields: {', '.join(sorted(missing))}"
            raise GenesisError(f"genesis: {where} has {detail}")
        address = hex_bytes(entry["address"], f"{where}.address", 20)
        if address in seen:
            raise GenesisError(f"genesis: {where}.address 0x{address.hex()} is listed twice")
        seen.add(address)
        stake = number(entry["stake"], f"{where}.stake")
        if stake < max(min_stake, 1):
            raise GenesisError(f"genesis: {where}.stake {stake} is below config.ogpu.minValidatorStake ({min_stake})")
        validators.append(GenesisValidator(address, stake, hex_bytes(entry["randaoTip"], f"{where}.randaoTip", 32)))
    return ConsensusConfig(genesis_time, slot_time, slots_per_epoch, randao_length, tuple(validators), churn_limit,
                           base_reward_ppb, block_reward, inactivity_quotient)
