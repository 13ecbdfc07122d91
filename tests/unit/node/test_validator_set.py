"""Each epoch's validator set comes from Stake (issue 11): accounts that stake, register a RANDAO tip and
take the validator role are activated at epoch boundaries, at most `churnLimit` per boundary, and the
consensus core gives them duties from the epoch after; an exit leaves the set the same way. A real
Chain on LMDB, the real validator service and consensus core, trio's mock clock as the wall clock."""

from __future__ import annotations

import pytest
from harness import STAKE_ABI
from txfactory import sign_tx
from validator_harness import in_process_validator, run_for

from ogpu_node.chain import Chain
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import HashChain
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.types.protocol import ValidatorStatus

pytestmark = pytest.mark.timeout(120)

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 64
OGPU = 10**18
STAKED = 1_000 * OGPU  # the dev genesis's minValidatorStake
JOIN = 1_500 * OGPU  # above the minimum: the joiners run no node, and their missed votes cost stake
VALIDATOR = Keypair.from_private_key(keccak(b"validator set test"))
JOINERS = [Keypair.from_private_key(keccak(b"joiner %d" % i)) for i in range(3)]


def _tip(keypair: Keypair) -> bytes:
    return HashChain(keccak(b"tip of " + keypair.address), RANDAO_LENGTH).tip


@pytest.fixture
def chain(tmp_path):
    genesis = parse_genesis({
        "config": {"chainId": 99},
        "alloc": {"0x" + k.address.hex(): {"balance": hex(2 * STAKED)} for k in (VALIDATOR, *JOINERS)},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH, "churnLimit": 1,
                      "validators": [{"address": "0x" + VALIDATOR.address.hex(), "stake": hex(10 * STAKED),
                                      "randaoTip": "0x" + randao_chain(VALIDATOR.private_key, RANDAO_LENGTH).tip.hex()}]},
    })
    store = LMDBStore(tmp_path / "chaindata", durable=False)
    yield Chain(store, genesis)
    store.close()


def _txs(keypair: Keypair, nonce: int, *calls: tuple) -> list:
    return [sign_tx(keypair, nonce + i, to=STAKE, value=value, data=STAKE_ABI.encode_call(name, *args),
                    gas=500_000, chain_id=99).decoded
            for i, (name, value, *args) in enumerate(calls)]


def _validator_of(chain: Chain, header, address: bytes):
    host = chain.execution.read_host(header)
    return chain.execution.stake.validatorOf(host, address)


def _last_block_before(chain: Chain, epoch: int):
    start = GENESIS_TIME + epoch * SLOTS_PER_EPOCH
    number = chain.head.block_number
    while chain.header_by_number(number).timestamp >= start:
        number -= 1
    return chain.header_by_number(number)


async def test_joiners_are_activated_one_per_epoch_boundary_and_get_duties_the_epoch_after(chain, tmp_path, autojump_clock):
    pending = [tx for j in JOINERS
               for tx in _txs(j, 0, ("stake", JOIN), ("setRandaoTip", 0, _tip(j)), ("setRoles", 0, 1))]
    service = in_process_validator(chain, VALIDATOR, tmp_path, RANDAO_LENGTH, pending)
    await run_for(service, 6 * SLOTS_PER_EPOCH + 0.5)  # into epoch 6
    rules = service.pos.rules

    def set_of(epoch: int) -> set[bytes]:
        return set(rules.validator_set(_last_block_before(chain, epoch).hash, epoch).by_address)

    # Queued in epoch 0 (block 1); churn 1: each epoch boundary that has a block activates one, in
    # queue order, and each is in the set from the epoch after its boundary.
    v, (a, b, c) = VALIDATOR.address, (j.address for j in JOINERS)
    activated = {j.address: _validator_of(chain, chain.head, j.address) for j in JOINERS}
    assert all(r.status == ValidatorStatus.ACTIVE and r.randao_tip == _tip(j) for j, r in zip(JOINERS, activated.values(), strict=True))
    epochs = [activated[x].activation_epoch for x in (a, b, c)]
    assert 1 <= epochs[0] < epochs[1] < epochs[2] <= 5
    for e in range(6):
        assert set_of(e) == {v} | {x for x in (a, b, c) if activated[x].activation_epoch < e}, e
    stamps = {chain.header_by_number(n).timestamp for n in range(1, chain.head.block_number + 1)}
    for epoch in epochs:  # activated by the first block of its epoch
        first = min(t for t in stamps if t >= GENESIS_TIME + epoch * SLOTS_PER_EPOCH)
        assert first < GENESIS_TIME + (epoch + 1) * SLOTS_PER_EPOCH
    # The core weighs them by their stake and gives them duties: every validator attests once in epoch 5.
    state = service.pos.core.epoch_state(5)
    host = chain.execution.read_host(_last_block_before(chain, 5))
    stake = chain.execution.stake
    assert state.current.validators.total_stake == sum(stake.stakeOf(host, x).staked for x in (v, a, b, c))
    assert sorted(state.current.attestation_slot(x, rules.params) for x in (v, a, b, c)) == list(range(20, 24))
    # The joiners run no node: the slots they propose stay empty, and the genesis validator still has its own.
    proposers = {chain.header_by_number(n).coinbase for n in range(1, chain.head.block_number + 1)}
    assert proposers == {v}


async def test_an_exit_leaves_the_set_at_the_boundary_after_it_and_the_last_validator_stays(chain, tmp_path, autojump_clock):
    a = JOINERS[0]
    pending = _txs(a, 0, ("stake", JOIN), ("setRandaoTip", 0, _tip(a)), ("setRoles", 0, 1))
    service = in_process_validator(chain, VALIDATOR, tmp_path, RANDAO_LENGTH, pending)
    await run_for(service, 2 * SLOTS_PER_EPOCH + 0.5)  # a active from epoch 2's set
    rules = service.pos.rules
    assert a.address in rules.validator_set(_last_block_before(chain, 2).hash, 2)
    # Both leave in epoch 2: the boundary of epoch 3 takes a out (churn 1, first in the queue); the
    # genesis validator, queued second, would leave the chain without a validator and stays.
    pending += _txs(a, 3, ("setRoles", 0, 0)) + _txs(VALIDATOR, 0, ("setRoles", 0, 0))
    await run_for(service, 3 * SLOTS_PER_EPOCH)  # into epoch 5
    assert [set(rules.validator_set(_last_block_before(chain, e).hash, e).by_address) for e in (3, 4, 5)] == [
        {VALIDATOR.address, a.address}, {VALIDATOR.address}, {VALIDATOR.address}]
    assert _validator_of(chain, chain.head, a.address).status == ValidatorStatus.NONE
    assert _validator_of(chain, chain.head, VALIDATOR.address).status == ValidatorStatus.EXITING
    assert chain.head.timestamp >= GENESIS_TIME + 5 * SLOTS_PER_EPOCH  # the chain goes on
