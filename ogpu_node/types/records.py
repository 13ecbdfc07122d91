"""The records the native contracts' views return, declared once for the contracts and the apps.

Each record is a frozen dataclass whose fields are the view's ABI outputs in order, in snake_case
(`prescriptionHash` ↔ `prescription_hash`; tests/unit/types/test_records.py checks them against the
ABI JSON). A contract's view returns the record; the ABI encoder writes it field by field; an app
decodes a call's result with `decode_record`, so no code on either side of the boundary reads a
view's result by position.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ogpu_node.types.protocol import Phase, Role, TaskKind, TaskState

R = TypeVar("R")


def camel(name: str) -> str:
    """snake_case field → the ABI's camelCase name (`min_memory_mib` → `minMemoryMiB`)."""
    head, *rest = name.split("_")
    return head + "".join(_ABI_WORDS.get(part, part.capitalize()) for part in rest)


_ABI_WORDS = {"mib": "MiB", "bps": "Bps", "n": "N"}


def as_tuple(record: Any) -> tuple[Any, ...]:
    """The record's values in ABI order (shallow: nested records stay records)."""
    return tuple(getattr(record, f.name) for f in fields(record))


def decode_record(cls: type[R], values: Any) -> R:
    """Build ``cls`` from a decoded ABI result (a tuple or list in output order); addresses and
    bytes are kept as the decoder returned them."""
    if not isinstance(values, list | tuple):
        values = (values,)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if len(values) != len(names):
        raise ValueError(f"{cls.__name__}: expected {len(names)} values, got {len(values)}")
    return cls(**dict(zip(names, values, strict=True)))


@dataclass(frozen=True)
class TaskRecord:
    """Task.getTask."""

    client: Any  # address: 20 bytes in contracts, a checksummed string in apps
    kind: int
    state: int
    prescription_hash: bytes
    escrow: int
    deposit: int
    executor: Any
    price: int
    seed: bytes
    bid_deadline: int
    assigned_at: int

    @property
    def task_kind(self) -> TaskKind:
        return TaskKind(self.kind)

    @property
    def task_state(self) -> TaskState:
        return TaskState(self.state)


@dataclass(frozen=True)
class TermsRecord:
    """Task.getTerms: the terms of a batch task the chain enforces."""

    max_payment: int
    council_size: int
    council_share_bps: int
    checkpoints: int
    segment_window: int
    bid_window: int
    first_n: int
    min_bids: int
    lateness_bps_per_second: int
    confirm_window: int
    response_method: int
    response_weight: int
    equivalence: int  # protocol.Equivalence: exact (members commit first) or allclose (executor reveals first)
    min_memory_mib: int  # council members' registered memory must reach this
    device_mask: int  # bit i allows protocol.DeviceKind i; 0 allows any
    numeric_profile: bytes  # protocol.profile_id of the profile members must have registered; zero: any


@dataclass(frozen=True)
class CheckpointRecord:
    """Task.getCheckpoint: checkpoint k of a batch task."""

    phase: int
    round: int
    commitment: bytes
    checkpoint_hash: bytes
    phase_ends: int
    council: list[Any]
    step_index: int

    @property
    def checkpoint_phase(self) -> Phase:
        return Phase(self.phase)


@dataclass(frozen=True)
class ProgressRecord:
    """Task.getProgress."""

    accepted: int
    committed: int
    paid: int
    run_start: int
    run_base: int
    generation: int
    confirm_deadline: int


@dataclass(frozen=True)
class StreamRecord:
    """Task.getStream."""

    terms_version: int
    price_per_unit: int
    response_method: int
    response_weight: int
    subscribers: int
    request_key: Any
    close_deadline: int


@dataclass(frozen=True)
class StakeRecord:
    """Stake.stakeOf."""

    staked: int
    locked: int
    unbonding: int
    release_time: int
    roles: int

    @property
    def role_flags(self) -> Role:
        return Role(self.roles)


@dataclass(frozen=True)
class ValidatorRecord:
    """Stake.validatorOf: an account's RANDAO tip and place in the validator lifecycle."""

    randao_tip: bytes
    status: int  # protocol.ValidatorStatus
    activation_epoch: int
    exit_epoch: int


@dataclass(frozen=True)
class ResourcesRecord:
    """Stake.resourcesOf: what a provider registered."""

    device_kind: int
    memory_mib: int
    throughput_score: int
    endpoint: str


@dataclass(frozen=True)
class StakeParamsRecord:
    """Stake.params."""

    min_validator_stake: int
    min_provider_stake: int
    unbonding_delay: int


@dataclass(frozen=True)
class SlashingParamsRecord:
    """Slashing.params."""

    reporter_share_bps: int
    consensus_penalty_bps: int


@dataclass(frozen=True)
class BidsRecord:
    """Bid.bidsOf."""

    providers: list[Any]
    prices: list[int]


# The view each record answers: (contract, function) → record class. Tests check every pair against the ABI.
VIEW_RECORDS: dict[tuple[str, str], type] = {
    ("Task", "getTask"): TaskRecord,
    ("Task", "getCheckpoint"): CheckpointRecord,
    ("Task", "getProgress"): ProgressRecord,
    ("Task", "getStream"): StreamRecord,
    ("Stake", "stakeOf"): StakeRecord,
    ("Stake", "resourcesOf"): ResourcesRecord,
    ("Stake", "validatorOf"): ValidatorRecord,
    ("Stake", "params"): StakeParamsRecord,
    ("Slashing", "params"): SlashingParamsRecord,
    ("Bid", "bidsOf"): BidsRecord,
}
# Views whose single output is a tuple (struct) of these fields.
STRUCT_RECORDS: dict[tuple[str, str], type] = {
    ("Task", "getTerms"): TermsRecord,
}

__all__ = [
    "VIEW_RECORDS", "STRUCT_RECORDS", "BidsRecord", "CheckpointRecord", "ProgressRecord", "ResourcesRecord",
    "SlashingParamsRecord", "StakeParamsRecord", "StakeRecord", "StreamRecord", "TaskRecord", "TermsRecord",
    "as_tuple", "camel", "decode_record",
]
