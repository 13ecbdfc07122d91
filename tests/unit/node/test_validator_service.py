"""The validator service and proof-of-stake wiring in-process: a real Chain on LMDB, the real consensus
core, trio's mock clock standing in for the wall clock (docs/consensus.md, "Running a validator")."""

from __future__ import annotations

import dataclasses
import json

import pytest
import rlp
import trio
from validator_harness import in_process_validator

from ogpu_node.chain import Chain, ChainError
from ogpu_node.config import parse_genesis
from ogpu_node.consensus import ConsensusBody
from ogpu_node.crypto import Keypair, keccak
from ogpu_node.db import LMDBStore
from ogpu_node.node.pos import CONSENSUS_RECORD, ProofOfStake
from ogpu_node.node.validator import ValidatorService
from ogpu_node.node.validator_key import load_validator_key, randao_chain, randao_secret
from ogpu_node.rpc.jsonrpc import JsonRpcProcessor
from ogpu_node.rpc.ogpu import OgpuConsensusApi

GENESIS_TIME = 1_700_000_000
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 2_100  # more than two of HashChain's 1024-value checkpoints
KEYPAIR = Keypair.from_private_key(keccak(b"validator service test"))


def _genesis(keypair: Keypair = KEYPAIR, tip: bytes | None = None):
    tip = tip or randao_chain(keypair.private_key, RANDAO_LENGTH).tip
    return parse_genesis({
        "config": {"chainId": 99},
        "alloc": {},
        "consensus": {"genesisTime": GENESIS_TIME, "slotTime": 1, "slotsPerEpoch": SLOTS_PER_EPOCH,
                      "randaoLength": RANDAO_LENGTH,
                      "validators": [{"address": "0x" + keypair.address.hex(), "stake": 10**21,
                                      "randaoTip": "0x" + tip.hex()}]},
    })


@pytest.fixture
def chain(tmp_path):
    store = LMDBStore(tmp_path / "chaindata", durable=False)
    yield Chain(store, _genesis())
    store.close()


def _service(chain: Chain, datadir) -> ValidatorService:
    return in_process_validator(chain, KEYPAIR, datadir, RANDAO_LENGTH)


async def test_one_validator_proposes_every_slot_and_finalizes(chain, tmp_path, autojump_clock):
    service = _service(chain, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(6 * SLOTS_PER_EPOCH + 0.5)  # into slot 24, the first of epoch 6
        nursery.cancel_scope.cancel()
    core = service.pos.core
    assert chain.head.block_number == 24
    assert [chain.header_by_number(n).timestamp for n in range(1, 25)] == [GENESIS_TIME + s for s in range(1, 25)]
    assert core.head() == chain.head.hash
    # Epochs 0 and 1 end unprocessed; from then on each epoch is justified and the one before finalized.
    assert (core.justified.epoch, core.finalized.epoch) == (5, 4)
    assert core.finalized.root == chain.header_by_number(4 * SLOTS_PER_EPOCH).hash
    # Each block's extra_data commits to its stored consensus body.
    for number in range(1, 25):
        header = chain.header_by_number(number)
        body, _ = rlp.decode(chain.store[CONSENSUS_RECORD + header.hash])
        assert ConsensusBody.decode(body).root == header.extra_data
        assert ConsensusBody.decode(body).slot == number


async def test_a_restarted_node_replays_the_stored_bodies_to_the_same_finality(chain, tmp_path, autojump_clock):
    service = _service(chain, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(5 * SLOTS_PER_EPOCH + 0.5)
        nursery.cancel_scope.cancel()
    before = service.pos.core
    replayed = ProofOfStake(chain, chain.genesis.consensus, None).core  # a full node: no key
    assert (replayed.head(), replayed.justified, replayed.finalized) == (before.head(), before.justified, before.finalized)
    assert replayed.finalized.epoch == 3


def test_a_key_whose_randao_tip_is_not_the_registered_one_is_refused(tmp_path):
    store = LMDBStore(tmp_path / "chaindata", durable=False)
    try:
        chain = Chain(store, _genesis(tip=b"\x01" * 32))
        key = load_validator_key(tmp_path, KEYPAIR, RANDAO_LENGTH)
        with pytest.raises(ChainError, match="RANDAO tip .* is not the one Stake registered"):
            ProofOfStake(chain, chain.genesis.consensus, key)
    finally:
        store.close()


def test_randao_chain_is_kept_in_the_datadir_and_read_back(tmp_path, caplog):
    caplog.set_level("INFO", logger="ogpu.validator")
    built = load_validator_key(tmp_path, KEYPAIR, RANDAO_LENGTH)
    path = tmp_path / "validator" / f"randao-{KEYPAIR.address.hex()}.bin"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "building the RANDAO hash chain" in caplog.text
    caplog.clear()
    read = load_validator_key(tmp_path, KEYPAIR, RANDAO_LENGTH)
    assert "building the RANDAO hash chain" not in caplog.text  # from the file, not rebuilt
    assert read.randao.tip == built.randao.tip
    assert [read.randao.reveal(e) for e in (0, 1, 1000, 2099)] == [built.randao.reveal(e) for e in (0, 1, 1000, 2099)]
    # The file holds checkpoints, never the private key.
    assert KEYPAIR.private_key not in path.read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "other-secret", "other-length"])
def test_a_randao_file_that_is_not_this_chain_is_rebuilt(tmp_path, damage):
    path = tmp_path / "validator" / f"randao-{KEYPAIR.address.hex()}.bin"
    load_validator_key(tmp_path, KEYPAIR, RANDAO_LENGTH)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-1])
    elif damage == "other-secret":
        other = Keypair.from_private_key(keccak(b"someone else"))
        other_path = tmp_path / "validator" / f"randao-{other.address.hex()}.bin"
        load_validator_key(tmp_path, other, RANDAO_LENGTH)
        path.write_bytes(other_path.read_bytes())
    key = load_validator_key(tmp_path, KEYPAIR, RANDAO_LENGTH + 1 if damage == "other-length" else RANDAO_LENGTH)
    expected = randao_chain(KEYPAIR.private_key, key.randao.length)
    assert key.randao.tip == expected.tip
    assert key.randao.reveal(5) == expected.reveal(5)


def test_randao_secret_is_derived_from_the_key_under_its_own_domain():
    assert randao_secret(KEYPAIR.private_key) == keccak(b"ogpu/randao-secret" + KEYPAIR.private_key)
    assert randao_secret(KEYPAIR.private_key) != keccak(KEYPAIR.private_key)


async def test_ogpu_methods_answer_from_the_core_and_refuse_bad_params(chain, tmp_path, autojump_clock):
    service = _service(chain, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(5 * SLOTS_PER_EPOCH + 0.5)  # slot 20: epoch 5
        nursery.cancel_scope.cancel()
    api = OgpuConsensusApi(service.pos.core, wall_clock=lambda: GENESIS_TIME + 20.5)
    rpc = JsonRpcProcessor(api.methods())

    async def call(method, *params):
        reply = json.loads(await rpc.handle(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                                        "params": list(params)}), None))
        return reply.get("result", reply.get("error"))

    finality = await call("ogpu_finality")
    assert finality == {"justified": {"epoch": "0x4", "root": "0x" + chain.header_by_number(16).hash.hex()},
                        "finalized": {"epoch": "0x3", "root": "0x" + chain.header_by_number(12).hash.hex()},
                        "head": "0x" + chain.head.hash.hex(), "slot": "0x14"}
    tip = randao_chain(KEYPAIR.private_key, RANDAO_LENGTH).tip
    # Epoch 5's stake: Stake's at the last block before it, grown by the settled epochs' rewards.
    host = chain.execution.read_host(chain.header_by_number(19))
    staked = chain.execution.stake.stakeOf(host, KEYPAIR.address).staked
    assert staked > 10**21
    validators = await call("ogpu_validators")  # status, staked, settlements: tests/unit/rpc/test_ogpu_consensus_rpc.py
    assert [{k: v[k] for k in ("address", "stake", "randaoTip")} for v in validators] == [
        {"address": "0x" + KEYPAIR.address.hex(), "stake": hex(staked), "randaoTip": "0x" + tip.hex()}]
    duties = await call("ogpu_duties", "0x" + KEYPAIR.address.hex())
    assert duties == {"epoch": "0x5", "proposerSlots": ["0x14", "0x15", "0x16", "0x17"], "attestationSlot": "0x14"}
    assert await call("ogpu_duties", "0x" + "11" * 20) == {"epoch": "0x5", "proposerSlots": [], "attestationSlot": None}
    for bad in ("0x12", 7, None, ["0x" + "11" * 20], "0x" + "zz" * 20):
        assert (await call("ogpu_duties", bad))["code"] == -32602
    assert (await call("ogpu_duties"))["code"] == -32602
    assert (await call("ogpu_finality", 1))["code"] == -32602


async def test_blocks_that_do_not_replay_under_another_consensus_section_are_a_clear_error(
        chain, tmp_path, autojump_clock):
    service = _service(chain, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    other = dataclasses.replace(chain.genesis.consensus, genesis_time=GENESIS_TIME + 7)
    with pytest.raises(ChainError, match="block 1 does not replay under this genesis's consensus section"):
        ProofOfStake(chain, other, None)
