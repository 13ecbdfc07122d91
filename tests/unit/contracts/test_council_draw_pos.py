"""Councils under proof of stake (issue 11, DESIGN.md §6): a checkpoint's council is drawn by the system
call of the first block of the epoch after its commitment, from that block's RANDAO mix, so neither
the executor nor a proposer of the commitment's epoch knows the draw when the commitment is made.
Under --dev the next block draws (test_task_checkpoints.py)."""

from __future__ import annotations

import json

import pytest
from eth_abi import encode
from eth_hash.auto import keccak
from test_task_checkpoints import WINDOW, Scenario, ckpt, one, terms

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, parse_genesis
from ogpu_node.db import LMDBStore
from ogpu_node.types.protocol import Phase

SLOT_TIME, SLOTS_PER_EPOCH = 2, 8
EPOCH = SLOT_TIME * SLOTS_PER_EPOCH
GENESIS_TIME = 0  # the dev genesis timestamp: every block here is after it


@pytest.fixture
def pos_chain(tmp_path, dev_accounts):
    doc = json.loads(DEV_GENESIS.read_text())
    doc["consensus"] = {"genesisTime": GENESIS_TIME, "slotTime": SLOT_TIME, "slotsPerEpoch": SLOTS_PER_EPOCH,
                        "validators": [{"address": "0x" + dev_accounts[9].address.hex(), "stake": hex(10**21),
                                        "randaoTip": "0x" + "07" * 32}]}
    store = LMDBStore(tmp_path / "pos")
    yield Chain(store, parse_genesis(doc))
    store.close()


def test_a_checkpoint_council_is_drawn_at_the_first_block_of_the_next_epoch_from_its_mix(pos_chain, dev_accounts):
    s = Scenario(pos_chain, dev_accounts)
    client, executor, members = dev_accounts[0], dev_accounts[1], dev_accounts[2:5]
    s.providers([executor, *members])
    task = s.submit(client)
    s.assign(task, [(executor, terms()["maxPayment"] // 2)])
    epoch = (s.h.now - GENESIS_TIME) // EPOCH + 1
    start = GENESIS_TIME + epoch * EPOCH  # the next epoch's first slot
    s.commit(task, 1, executor, ckpt(1), at=start - 3 * SLOT_TIME)
    for at in (start - 2 * SLOT_TIME, start - SLOT_TIME):  # the rest of the commitment's epoch: no draw
        quiet = s.h.block(at=at)
        assert [e.name for e in quiet.system_events if e.name == "CouncilDrawn"] == []
        assert s.checkpoint(task, 1)["phase"] == Phase.COMMITTED
    mix = keccak(b"the first mix of the next epoch")
    first = s.h.block(at=start, mix_hash=mix)
    drawn = one(first.system_events, "CouncilDrawn")
    seed = keccak(mix + encode(["uint256", "uint16", "uint8"], [task, 1, 0]))
    assert drawn["stepIndex"] == int.from_bytes(keccak(seed + b"step")[:8], "big")
    assert drawn["commitDeadline"] == start + WINDOW
    assert s.checkpoint(task, 1)["phase"] == Phase.COUNCIL_COMMIT
