"""ogpu_validators' stake, status and settlements and ogpu_slashings (issue 12, docs/consensus.md
"Running a validator"), answered in-process by the real RPC processor from the real consensus core of
a real Chain that the real validator service built under trio's mock clock. The expected values come
from the chain: Stake's `staked` around each block that emitted EpochSettled, and the Slashing
receipt's log decoded by the contract harness."""

from __future__ import annotations

import json

import pytest
import trio
from harness import SLASHING_ABI, STAKE_ABI, decode_logs, topic_bytes
from validator_harness import hear_double_vote, in_process_validator, run_for

from ogpu_node.chain import Chain
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import HashChain
from ogpu_node.contracts.addresses import SLASHING, STAKE
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.node.validator import ValidatorService
from ogpu_node.node.validator_key import randao_chain
from ogpu_node.rpc.filters import FilterApi
from ogpu_node.rpc.jsonrpc import JsonRpcProcessor
from ogpu_node.rpc.ogpu import MAX_SETTLEMENTS, OgpuConsensusApi

pytestmark = pytest.mark.timeout(120)

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 64
OGPU = 10**18
HONEST = Keypair.from_private_key(keccak(b"ogpu rpc: honest"))
OTHER = Keypair.from_private_key(keccak(b"ogpu rpc: offline or offending"))


def _chain(tmp_path, honest_stake: int, other_stake: int) -> Chain:
    """Two genesis validators: HONEST (its node runs in the test) and OTHER (never online)."""
    genesis = parse_genesis({
        "config": {"chainId": 99},
        "alloc": {"0x" + HONEST.address.hex(): {"balance": hex(10 * OGPU)}},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH, "baseRewardPpb": 1_000, "blockReward": 10**16,
                      "validators": [
                          {"address": "0x" + HONEST.address.hex(), "stake": hex(honest_stake),
                           "randaoTip": "0x" + randao_chain(HONEST.private_key, RANDAO_LENGTH).tip.hex()},
                          {"address": "0x" + OTHER.address.hex(), "stake": hex(other_stake),
                           "randaoTip": "0x" + HashChain(keccak(b"other"), RANDAO_LENGTH).tip.hex()}]},
    })
    return Chain(LMDBStore(tmp_path / "chaindata", durable=False), genesis)


@pytest.fixture
def chains(tmp_path):
    made: list[Chain] = []

    def make(honest_stake: int, other_stake: int) -> Chain:
        made.append(_chain(tmp_path, honest_stake, other_stake))
        return made[-1]

    yield make
    for chain in made:
        chain.store.close()


def _service(chain: Chain, datadir, pool: list | None = None) -> ValidatorService:
    """HONEST's validator service, sealing blocks of ``pool`` (its slashing reports) as Node does."""
    return in_process_validator(chain, HONEST, datadir, RANDAO_LENGTH, pool)


def _caller(service: ValidatorService, chain: Chain, now: float):
    api = OgpuConsensusApi(service.pos.core, wall_clock=lambda: now, filters=FilterApi(chain))
    rpc = JsonRpcProcessor(api.methods())

    async def call(method, *params):
        reply = json.loads(await rpc.handle(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                                        "params": list(params)}), None))
        return reply.get("result", reply.get("error"))

    return call


def _stake_at(chain: Chain, header):
    return chain.execution.read_host(header), chain.execution.stake


def _staked(chain: Chain, header, who: bytes) -> int:
    host, stake = _stake_at(chain, header)
    return stake.stakeOf(host, who).staked


def _settled_blocks(chain: Chain, down_to: int) -> list:
    """(block, EpochSettled args) of the canonical blocks from the head down to number ``down_to``."""
    out = []
    for number in range(chain.head.block_number, down_to - 1, -1):
        block = chain.block_by_number(number)
        for address, topics, data in block.system_logs:
            if address == STAKE and topics[0] == STAKE_ABI.event_topic("EpochSettled"):
                out.append((block, STAKE_ABI.decode_log(topics, data).args))
    return out


def _expected_settlements(chain: Chain, who: bytes, down_to: int) -> list[dict[str, str]]:
    """What Stake says each settling block did to ``who``: no transaction touches these validators'
    stake, so the change of `staked` across the block is its settlement."""
    out = []
    for block, args in _settled_blocks(chain, down_to):
        delta = _staked(chain, block.header, who) - _staked(chain, chain.header_by_hash(block.header.parent_hash), who)
        if delta:  # EpochSettled's epoch is the block's: the epoch it settles is two before
            out.append({"epoch": hex(args["epoch"] - 2), "block": "0x" + block.hash.hex(),
                        "reward": hex(max(delta, 0)), "penalty": hex(max(-delta, 0))})
    return out[:MAX_SETTLEMENTS]


def _validator_entry(chain: Chain, header, epoch_stake: int, who: bytes, settlements: list) -> dict:
    host, stake = _stake_at(chain, header)
    return {"address": "0x" + who.hex(), "stake": hex(epoch_stake),
            "randaoTip": "0x" + stake.validatorOf(host, who).randao_tip.hex(), "status": "active",
            "staked": hex(stake.stakeOf(host, who).staked), "settlements": settlements}


async def test_validators_show_stake_status_and_settlements_back_to_the_finalized_block(chains, tmp_path, autojump_clock):
    chain = chains(3_000 * OGPU, 1_200 * OGPU)  # the honest one holds 5/7: finality goes on
    service = _service(chain, tmp_path)
    await run_for(service, 8 * SLOTS_PER_EPOCH + 0.5)  # into epoch 8
    core = service.pos.core
    assert core.finalized.epoch >= 5
    call = _caller(service, chain, GENESIS_TIME + 8 * SLOTS_PER_EPOCH + 0.5)

    validators = await call("ogpu_validators")
    finalized_number = chain.header_by_hash(core.finalized.root).block_number
    # Epoch 8's weights: Stake's at the last block before the epoch.
    before = max(n for n in range(chain.head.block_number + 1)
                 if chain.header_by_number(n).timestamp < GENESIS_TIME + 8 * SLOTS_PER_EPOCH)
    expected = sorted((_validator_entry(chain, chain.head, _staked(chain, chain.header_by_number(before), who), who,
                                        _expected_settlements(chain, who, finalized_number))
                       for who in (HONEST.address, OTHER.address)), key=lambda v: v["address"])
    assert validators == expected
    honest, absent = (next(v for v in validators if v["address"] == "0x" + w.address.hex()) for w in (HONEST, OTHER))
    # Blocks below the finalized one are pruned from the core: the settlements reach back to it only.
    assert 2 <= len(honest["settlements"]) < MAX_SETTLEMENTS
    assert all(s["penalty"] == "0x0" and int(s["reward"], 16) > 0 for s in honest["settlements"])
    assert all(s["reward"] == "0x0" and int(s["penalty"], 16) > 0 for s in absent["settlements"])
    # Each settling block's entries add up to what its EpochSettled reports.
    for block, args in _settled_blocks(chain, finalized_number):
        entries = [s for v in validators for s in v["settlements"] if s["block"] == "0x" + block.hash.hex()]
        assert sum(int(s["reward"], 16) for s in entries) == args["minted"]
        assert sum(int(s["penalty"], 16) for s in entries) == args["burned"]
    assert (await call("ogpu_validators", "latest"))["code"] == -32602


async def test_validators_list_the_latest_eight_settlements_newest_first_without_finality(
        chains, tmp_path, autojump_clock):
    chain = chains(3_000 * OGPU, 3_000 * OGPU)  # half the stake offline: nothing is justified
    service = _service(chain, tmp_path)
    await run_for(service, 13 * SLOTS_PER_EPOCH + 0.5)  # into epoch 13: epochs 1 to 11 settled
    core = service.pos.core
    assert core.finalized.epoch == 0
    assert len(_settled_blocks(chain, 0)) > MAX_SETTLEMENTS
    call = _caller(service, chain, GENESIS_TIME + 13 * SLOTS_PER_EPOCH + 0.5)

    validators = await call("ogpu_validators")
    for who in (HONEST.address, OTHER.address):
        (entry,) = [v for v in validators if v["address"] == "0x" + who.hex()]
        assert entry["settlements"] == _expected_settlements(chain, who, 0)
        assert len(entry["settlements"]) == MAX_SETTLEMENTS
        epochs = [int(s["epoch"], 16) for s in entry["settlements"]]
        # Newest first; a block after an epoch without blocks settles both, under the later epoch.
        assert epochs == sorted(set(epochs), reverse=True)


async def test_slashings_list_the_offence_reported_on_chain_and_refuse_bad_ranges(chains, tmp_path, autojump_clock):
    chain = chains(9_000 * OGPU, 2_000 * OGPU)
    service = _service(chain, tmp_path)
    core = service.pos.core
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(2 * SLOTS_PER_EPOCH + 0.1)  # into epoch 2
        hear_double_vote(core, chain, OTHER, 2, SLOTS_PER_EPOCH)
        await trio.sleep(2 * SLOTS_PER_EPOCH)  # the report and a block with it
        nursery.cancel_scope.cancel()
    call = _caller(service, chain, GENESIS_TIME + trio.current_time())

    (number, index) = next((n, i) for n in range(1, chain.head.block_number + 1)
                           for i, tx in enumerate(chain.block_by_number(n).transactions) if tx.to == SLASHING)
    block = chain.block_by_number(number)
    receipt = block.receipts[index]
    (event,) = [e for e in decode_logs((log.address, [topic_bytes(t) for t in log.topics], log.data)
                                       for log in receipt.logs) if e.name == "ConsensusOffence"]
    assert event.contract == SLASHING_ABI.name and event["offender"] == OTHER.address
    assert event["evidenceId"] == keccak(b"double-vote" + OTHER.address + (2).to_bytes(32, "big"))
    # The penalty left OTHER's stake (its settlement in the block, if any, only takes more).
    assert 0 < event["penalty"] <= (_staked(chain, chain.header_by_number(number - 1), OTHER.address)
                                    - _staked(chain, block.header, OTHER.address))
    offence = {"offender": "0x" + OTHER.address.hex(), "kind": "double-vote",
               "evidenceId": "0x" + event["evidenceId"].hex(), "penalty": hex(event["penalty"]),
               "reporter": "0x" + HONEST.address.hex(), "blockNumber": hex(number),
               "blockHash": "0x" + block.hash.hex(), "transactionHash": "0x" + block.transaction_hashes[index].hex()}

    assert await call("ogpu_slashings") == [offence]  # the last 10,000 blocks
    assert await call("ogpu_slashings", "earliest", "latest") == [offence]
    assert await call("ogpu_slashings", hex(number), hex(number)) == [offence]
    assert await call("ogpu_slashings", hex(number + 1)) == []
    assert await call("ogpu_slashings", None, hex(number - 1)) == []
    assert await call("ogpu_slashings", "0x0", hex(9_999)) == [offence]  # 10,000 blocks: the limit
    assert (await call("ogpu_slashings", "0x0", hex(10_000)))["code"] == -32005
    assert await call("ogpu_slashings", None, hex(20_000)) == []  # the 10,000 blocks up to toBlock
    for bad in ((7,), ("0xzz",), ("0x" + "11" * 32,), ({"blockHash": "0x" + block.hash.hex()},),
                (hex(number), hex(number - 1)), ("latest", "latest", "latest")):
        assert (await call("ogpu_slashings", *bad))["code"] == -32602, bad
