"""Validator sets and duties: who proposes each slot, who attests when (docs/consensus.md, "Duties")."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ogpu_node.consensus.params import ConsensusParams
from ogpu_node.crypto import keccak


@dataclass(frozen=True)
class Validator:
    address: bytes
    stake: int
    randao_tip: bytes


@dataclass(frozen=True)
class ValidatorSet:
    """The validators of one epoch, ordered by address."""

    validators: tuple[Validator, ...]

    @classmethod
    def of(cls, validators: list[Validator] | tuple[Validator, ...]) -> ValidatorSet:
        ordered = tuple(sorted((v for v in validators if v.stake > 0), key=lambda v: v.address))
        if len({v.address for v in ordered}) != len(ordered):
            raise ValueError("a validator is listed twice")
        if not ordered:
            raise ValueError("a validator set needs a validator with stake")
        return cls(ordered)

    @cached_property
    def total_stake(self) -> int:
        return sum(v.stake for v in self.validators)

    @cached_property
    def by_address(self) -> dict[bytes, Validator]:
        return {v.address: v for v in self.validators}

    def stake_of(self, address: bytes) -> int:
        validator = self.by_address.get(address)
        return 0 if validator is None else validator.stake

    def __contains__(self, address: object) -> bool:
        return address in self.by_address


def compute_proposer(validators: ValidatorSet, epoch_seed: bytes, slot: int) -> bytes:
    """The proposer of ``slot``: chosen with probability proportional to stake, by the validator whose
    cumulative stake interval holds H(seed ‖ slot) mod total stake."""
    point = int.from_bytes(keccak(epoch_seed + slot.to_bytes(8, "big")), "big") % validators.total_stake
    for validator in validators.validators:
        if point < validator.stake:
            return validator.address
        point -= validator.stake
    raise AssertionError("unreachable: the point lies below the total stake")


def compute_attestation_slots(validators: ValidatorSet, epoch_seed: bytes, epoch: int,
                              params: ConsensusParams) -> dict[bytes, int]:
    """Each validator's one attestation slot in ``epoch``: the validators shuffled by H(seed ‖ address),
    dealt round the epoch's slots."""
    shuffled = sorted(validators.validators, key=lambda v: keccak(epoch_seed + v.address))
    start = params.start_slot(epoch)
    return {v.address: start + i % params.slots_per_epoch for i, v in enumerate(shuffled)}
