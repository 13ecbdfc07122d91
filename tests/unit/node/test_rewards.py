"""Rewards and penalties on a real chain (issue 12, docs/consensus.md "Rewards and penalties"): two
genesis validators, one running (the real validator service and core on a real Chain, trio's mock
clock) and one offline. Each epoch's settlement reaches Stake through the first block of the epoch
after next; the honest validator's stake grows by exactly what the rules give, the absent one's
shrinks, and the supply moves only by what was minted and burned."""

from __future__ import annotations

import pytest
import rlp
from harness import STAKE_ABI
from validator_harness import in_process_validator, run_for

from ogpu_node.chain import Chain
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import ConsensusBody, HashChain
from ogpu_node.consensus.rewards import base_reward, proposer_share
from ogpu_node.contracts.addresses import ALL as NATIVE_CONTRACTS
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.execution.native import SystemHost
from ogpu_node.node.pos import CONSENSUS_RECORD
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.types.protocol import HEAD_WEIGHT, SOURCE_WEIGHT, TARGET_WEIGHT, WEIGHT_DENOMINATOR

pytestmark = pytest.mark.timeout(120)

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 64
OGPU = 10**18
HONEST = Keypair.from_private_key(keccak(b"rewards: honest"))
ABSENT = Keypair.from_private_key(keccak(b"rewards: absent"))
HONEST_STAKE, ABSENT_STAKE = 3_000 * OGPU, 1_200 * OGPU  # the honest one holds 5/7: finality goes on
BASE_PPB, BLOCK_REWARD = 1_000, 10**16


@pytest.fixture
def chain(tmp_path):
    genesis = parse_genesis({
        "config": {"chainId": 99},
        "alloc": {},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH, "baseRewardPpb": BASE_PPB, "blockReward": BLOCK_REWARD,
                      "validators": [
                          {"address": "0x" + HONEST.address.hex(), "stake": hex(HONEST_STAKE),
                           "randaoTip": "0x" + randao_chain(HONEST.private_key, RANDAO_LENGTH).tip.hex()},
                          {"address": "0x" + ABSENT.address.hex(), "stake": hex(ABSENT_STAKE),
                           "randaoTip": "0x" + HashChain(keccak(b"absent"), RANDAO_LENGTH).tip.hex()}]},
    })
    store = LMDBStore(tmp_path / "chaindata", durable=False)
    yield Chain(store, genesis)
    store.close()


def _staked(chain: Chain, header, who: bytes) -> int:
    host = chain.execution.read_host(header)
    return chain.execution.stake.stakeOf(host, who).staked


async def test_settlements_pay_the_honest_charge_the_absent_and_account_for_the_supply(chain, tmp_path, autojump_clock):
    service = in_process_validator(chain, HONEST, tmp_path, RANDAO_LENGTH)
    pos = service.pos
    await run_for(service, 8 * SLOTS_PER_EPOCH + 0.5)  # into epoch 8: epochs 1 to 6 settled
    assert pos.core.finalized.epoch >= 5  # the absent fifth of the stake does not stop finality

    settled = []  # (block, EpochSettled args) in chain order
    for number in range(1, chain.head.block_number + 1):
        block = chain.block_by_number(number)
        for address, topics, data in block.system_logs:
            if address == STAKE and topics[0] == STAKE_ABI.event_topic("EpochSettled"):
                settled.append((block, STAKE_ABI.decode_log(topics, data).args))
    # Epoch e is settled by the first block of epoch e + 2 (every epoch here has a block: one each).
    epochs = [args["epoch"] for _, args in settled]
    assert epochs == list(range(3, 3 + len(epochs))) and len(epochs) >= 5

    bodies = [ConsensusBody.decode(rlp.decode(chain.store[CONSENSUS_RECORD + chain.header_by_number(n).hash])[0])
              for n in range(1, chain.head.block_number + 1)]
    minted = burned = 0
    for block, args in settled:
        parent = chain.header_by_hash(block.header.parent_hash)
        honest, absent = _staked(chain, parent, HONEST.address), _staked(chain, parent, ABSENT.address)
        # The settled epoch's stakes are those its set was read with: the last block before it.
        e = args["epoch"] - 2
        before_e = max((chain.header_by_number(n) for n in range(block.number)
                        if chain.header_by_number(n).timestamp < GENESIS_TIME + e * SLOTS_PER_EPOCH),
                       key=lambda h: h.block_number)
        s_honest, s_absent = _staked(chain, before_e, HONEST.address), _staked(chain, before_e, ABSENT.address)
        blocks_in_e = sum(1 for n in range(1, block.number)
                          if (chain.header_by_number(n).timestamp - GENESIS_TIME) // SLOTS_PER_EPOCH == e)
        # The honest validator's attestation is included by itself (the only proposer); its head vote
        # counts only when included in the very next slot, which the absent one may have had. The
        # absent one missed source and target.
        (delay,) = [body.slot - a.message.slot for body in bodies for a in body.attestations
                    if a.message.target_epoch == e]
        base = base_reward(pos.params, s_honest)
        weight = SOURCE_WEIGHT + TARGET_WEIGHT + (HEAD_WEIGHT if delay == 1 else 0)
        reward = base * weight // WEIGHT_DENOMINATOR + proposer_share(base, weight) + blocks_in_e * BLOCK_REWARD
        penalty = base_reward(pos.params, s_absent) * (SOURCE_WEIGHT + TARGET_WEIGHT) // WEIGHT_DENOMINATOR
        assert (args["minted"], args["burned"]) == (reward, penalty)
        assert _staked(chain, block.header, HONEST.address) == honest + reward
        assert _staked(chain, block.header, ABSENT.address) == absent - penalty
        minted, burned = minted + args["minted"], burned + args["burned"]
    assert _staked(chain, chain.head, HONEST.address) > HONEST_STAKE
    assert _staked(chain, chain.head, ABSENT.address) < ABSENT_STAKE

    # Supply: every balance there is = genesis + minted − burned (no transactions: no fees burned).
    state = chain.execution.state_at(chain.head)
    supply = sum(state.get_balance(a) for a in (HONEST.address, ABSENT.address, *NATIVE_CONTRACTS))
    assert supply == chain.genesis.total_supply + minted - burned
    host = SystemHost(state, [])
    assert chain.execution.stake.totalStaked(host) == state.get_balance(STAKE)
