"""The settlement of one epoch (docs/consensus.md, "Rewards and penalties"): every term of the rules
on a crafted branch state, in and out of the inactivity leak, and the leak's arithmetic: an offline
half of the stake shrinks until the rest holds two thirds within the epochs the docs derive."""

from __future__ import annotations

import math
from dataclasses import replace

from ogpu_node.consensus.rewards import base_reward, inactivity_penalty, proposer_share, settle_epoch
from ogpu_node.consensus.state import Checkpoint, EpochDuties, Vote, genesis_state
from ogpu_node.types.protocol import (
    HEAD_WEIGHT,
    INACTIVITY_GRACE_EPOCHS,
    SOURCE_WEIGHT,
    TARGET_WEIGHT,
    WEIGHT_DENOMINATOR,
)
from tests.unit.consensus.sim import GENESIS_MIX, GENESIS_ROOT, make_keys, make_rules

STAKE = 2_000 * 10**18
KEYS = make_keys(4)
RULES = make_rules(KEYS, stakes=[STAKE] * 4)
PARAMS = RULES.params


def _settled_epoch_10(finalized_epoch: int) -> dict[bytes, int]:
    """Epoch 10 settled as epoch 12 begins: validator 0 attested with a timely head, included by 1;
    1 attested late (no head) and included itself, and proposed two blocks; 2 and 3 were away."""
    state = genesis_state(RULES, GENESIS_ROOT, GENESIS_MIX)
    v = [k.address for k in KEYS]
    validators = state.current.validators
    state = replace(
        state,
        previous=EpochDuties(10, GENESIS_MIX, validators, GENESIS_ROOT),
        current=EpochDuties(11, GENESIS_MIX, validators, GENESIS_ROOT),
        finalized=Checkpoint(finalized_epoch, GENESIS_ROOT),
        previous_attesters={v[0]: Vote(v[1], True), v[1]: Vote(v[1], False)},
        previous_proposals={v[1]: 2},
    )
    deltas: dict[bytes, int] = {}
    settle_epoch(PARAMS, state, deltas)
    return deltas


def test_outside_the_leak_attesters_earn_by_their_votes_the_absent_lose_and_proposers_earn_shares():
    v = [k.address for k in KEYS]
    base = base_reward(PARAMS, STAKE)
    assert base == STAKE * PARAMS.base_reward_ppb // 10**9 > 0
    full, late = SOURCE_WEIGHT + TARGET_WEIGHT + HEAD_WEIGHT, SOURCE_WEIGHT + TARGET_WEIGHT
    missed = -(base * late // WEIGHT_DENOMINATOR)
    assert _settled_epoch_10(finalized_epoch=10 - INACTIVITY_GRACE_EPOCHS) == {
        v[0]: base * full // WEIGHT_DENOMINATOR,
        v[1]: base * late // WEIGHT_DENOMINATOR + proposer_share(base, full) + proposer_share(base, late)
        + 2 * PARAMS.block_reward,
        v[2]: missed,
        v[3]: missed,
    }


def test_in_the_leak_attesters_earn_nothing_and_the_absent_lose_stake_growing_with_the_delay():
    v = [k.address for k in KEYS]
    base = base_reward(PARAMS, STAKE)
    full, late = SOURCE_WEIGHT + TARGET_WEIGHT + HEAD_WEIGHT, SOURCE_WEIGHT + TARGET_WEIGHT
    finalized = 10 - INACTIVITY_GRACE_EPOCHS - 3  # the third epoch of the leak
    leak = STAKE * 3 // PARAMS.inactivity_quotient
    assert inactivity_penalty(PARAMS, replace(genesis_state(RULES, GENESIS_ROOT, GENESIS_MIX),
                                              finalized=Checkpoint(finalized, GENESIS_ROOT)), 10, STAKE) == leak
    missed = -(base * late // WEIGHT_DENOMINATOR + leak)
    assert _settled_epoch_10(finalized_epoch=finalized) == {
        v[1]: proposer_share(base, full) + proposer_share(base, late) + 2 * PARAMS.block_reward,
        v[2]: missed,
        v[3]: missed,
    }


def test_the_leak_restores_a_two_thirds_majority_within_the_epochs_the_docs_derive():
    """docs/consensus.md: with an offline fraction f, the online stake holds 2/3 again after n leak
    epochs with n(n+1) ≥ 2Q ln(2f/(1−f)); here the leak's own function, epoch by epoch."""
    for quotient in (64, 4096):
        params = replace(PARAMS, inactivity_quotient=quotient)
        for offline_share in (0.4, 0.5, 0.6):
            online = 10**24
            offline = int(online * offline_share / (1 - offline_share))
            bound = next(n for n in range(1, 10_000) if n * (n + 1) >= 2 * quotient * math.log(2 * offline_share / (1 - offline_share)))
            state = genesis_state(RULES, GENESIS_ROOT, GENESIS_MIX)
            n = 0
            while 3 * online < 2 * (online + offline):
                n += 1
                epoch = INACTIVITY_GRACE_EPOCHS + n  # finalized at 0: the n-th leaking epoch
                offline -= inactivity_penalty(params, state, epoch, offline)
            assert n <= bound, (quotient, offline_share, n, bound)
