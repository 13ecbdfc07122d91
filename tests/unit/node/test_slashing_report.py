"""A validator node reports the offences its core finds (issue 12): two conflicting votes of another
validator reach it, its service signs a Slashing report into the pool, its next block includes it,
the offender is slashed and ejected at the next epoch boundary, and the reward is shared by the
reporter and the including proposer (here the same node). A real Chain, the real validator service
and core, trio's mock clock."""

from __future__ import annotations

import pytest
import trio
from validator_harness import hear_double_vote, in_process_validator

from ogpu_node.chain import Chain
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import HashChain
from ogpu_node.contracts.addresses import SLASHING
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.types.protocol import ValidatorStatus

pytestmark = pytest.mark.timeout(120)

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 64
OGPU = 10**18
HONEST = Keypair.from_private_key(keccak(b"reporter"))
OFFENDER = Keypair.from_private_key(keccak(b"offender"))


@pytest.fixture
def chain(tmp_path):
    genesis = parse_genesis({
        "config": {"chainId": 99},
        "alloc": {"0x" + HONEST.address.hex(): {"balance": hex(10 * OGPU)}},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH, "validators": [
                          {"address": "0x" + HONEST.address.hex(), "stake": hex(9_000 * OGPU),
                           "randaoTip": "0x" + randao_chain(HONEST.private_key, RANDAO_LENGTH).tip.hex()},
                          {"address": "0x" + OFFENDER.address.hex(), "stake": hex(2_000 * OGPU),
                           "randaoTip": "0x" + HashChain(keccak(b"offender"), RANDAO_LENGTH).tip.hex()}]},
    })
    store = LMDBStore(tmp_path / "chaindata", durable=False)
    yield Chain(store, genesis)
    store.close()


def _stake_view(chain: Chain, header):
    return chain.execution.read_host(header), chain.execution.stake


async def test_a_double_vote_seen_by_a_validator_is_reported_included_slashed_and_ejected(chain, tmp_path, autojump_clock):
    service = in_process_validator(chain, HONEST, tmp_path, RANDAO_LENGTH)
    pos = service.pos
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(2 * SLOTS_PER_EPOCH + 0.1)  # into epoch 2
        hear_double_vote(pos.core, chain, OFFENDER, 2, SLOTS_PER_EPOCH)
        reported_at = chain.head.block_number
        await trio.sleep(3 * SLOTS_PER_EPOCH)  # the report, a block with it, an epoch boundary
        nursery.cancel_scope.cancel()

    # The report is in a block, from the honest validator, to Slashing, and it succeeded.
    (number, index) = next((n, i) for n in range(reported_at + 1, chain.head.block_number + 1)
                           for i, tx in enumerate(chain.block_by_number(n).transactions) if tx.to == SLASHING)
    block = chain.block_by_number(number)
    assert block.senders[index] == HONEST.address and block.receipts[index].state_root == b"\x01"
    before, stake = _stake_view(chain, chain.header_by_number(number - 1))
    after, _ = _stake_view(chain, block.header)
    penalty = 2_000 * OGPU * chain.genesis.protocol.consensus_penalty_bps // 10_000
    assert stake.stakeOf(after, OFFENDER.address).staked <= stake.stakeOf(before, OFFENDER.address).staked - penalty
    # Ejected at the next epoch boundary; the honest validator goes on alone and keeps finalizing.
    head, _ = _stake_view(chain, chain.head)
    assert stake.validatorOf(head, OFFENDER.address).status == ValidatorStatus.NONE
    assert stake.validators(head) == [HONEST.address]
    assert pos.core.take_evidence() == []  # reported once
