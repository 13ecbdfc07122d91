"""Consensus parameters and the slot clock (docs/consensus.md, "Parameters")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsensusParams:
    genesis_time: int
    slot_time: int = 2
    slots_per_epoch: int = 8
    randao_length: int = 1 << 20  # epochs each validator's RANDAO hash chain lasts
    base_reward_ppb: int = 25  # base reward per epoch, parts per billion of stake
    block_reward: int = 10**17  # wei per proposed block
    inactivity_quotient: int = 4096  # Q of the inactivity leak

    def __post_init__(self) -> None:
        if self.slot_time <= 0 or self.slots_per_epoch <= 0 or self.randao_length <= 0 or self.inactivity_quotient <= 0:
            raise ValueError("slot_time, slots_per_epoch, randao_length and inactivity_quotient must be positive")

    def epoch_of(self, slot: int) -> int:
        return slot // self.slots_per_epoch

    def start_slot(self, epoch: int) -> int:
        return epoch * self.slots_per_epoch

    def slot_at(self, time: float) -> int:
        """The slot under way at unix time ``time`` (0 before genesis)."""
        return max(0, int(time - self.genesis_time) // self.slot_time)

    def timestamp(self, slot: int) -> int:
        return self.genesis_time + slot * self.slot_time
