"""Rewards and penalties of one epoch (docs/consensus.md, "Rewards and penalties"), as phase0's
`process_rewards_and_penalties` with Altair's weights and inactivity leak: what a branch settles when
an epoch's inclusion window closes. Deterministic integer arithmetic over the branch's state only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ogpu_node.consensus.params import ConsensusParams
from ogpu_node.types.protocol import (
    HEAD_WEIGHT,
    INACTIVITY_GRACE_EPOCHS,
    PROPOSER_WEIGHT,
    SOURCE_WEIGHT,
    TARGET_WEIGHT,
    WEIGHT_DENOMINATOR,
)

if TYPE_CHECKING:  # state.py imports this module
    from ogpu_node.consensus.state import BranchState

PPB = 10**9


def base_reward(params: ConsensusParams, stake: int) -> int:
    return stake * params.base_reward_ppb // PPB


def is_leaking(state: BranchState, epoch: int) -> bool:
    """Whether ``epoch`` is settled under the inactivity leak: finality is more than the grace behind."""
    return epoch - state.finalized.epoch > INACTIVITY_GRACE_EPOCHS


def inactivity_penalty(params: ConsensusParams, state: BranchState, epoch: int, stake: int) -> int:
    """What a validator that missed ``epoch``'s target loses to the leak: stake × k / Q in the k-th
    leaking epoch, so the longer finality waits, the faster the absent shrink."""
    k = epoch - state.finalized.epoch - INACTIVITY_GRACE_EPOCHS
    return stake * k // params.inactivity_quotient if k > 0 else 0


def proposer_share(base: int, weight: int) -> int:
    """The includer's reward for an attestation that earned ``weight``/64 of its attester's base."""
    return base * weight * PROPOSER_WEIGHT // ((WEIGHT_DENOMINATOR - PROPOSER_WEIGHT) * WEIGHT_DENOMINATOR)


def settle_epoch(params: ConsensusParams, state: BranchState, deltas: dict[bytes, int]) -> None:
    """Add to ``deltas`` the rewards and penalties of ``state.previous.epoch``, whose inclusion window
    has just closed (``state``: justified and finalized for the boundary being crossed)."""
    duties, votes = state.previous, state.previous_attesters
    epoch = duties.epoch
    leaking = is_leaking(state, epoch)

    def add(address: bytes, amount: int) -> None:
        deltas[address] = deltas.get(address, 0) + amount

    for validator in duties.validators.validators:
        base = base_reward(params, validator.stake)
        vote = votes.get(validator.address)
        if vote is None:
            add(validator.address, -(base * (SOURCE_WEIGHT + TARGET_WEIGHT) // WEIGHT_DENOMINATOR
                                     + inactivity_penalty(params, state, epoch, validator.stake)))
            continue
        weight = SOURCE_WEIGHT + TARGET_WEIGHT + (HEAD_WEIGHT if vote.head else 0)
        if not leaking:
            add(validator.address, base * weight // WEIGHT_DENOMINATOR)
        add(vote.includer, proposer_share(base, weight))
    for proposer, blocks in state.previous_proposals.items():
        add(proposer, blocks * params.block_reward)
