"""The blob keeper across a reorganization: references recorded from blocks later abandoned stay (a
blob is kept longer, never lost), and the adopted branch's blocks at heights already scanned are
scanned too, so a blob only they reference never expires."""

from __future__ import annotations

import pytest
from harness import OGPU, TASK_ABI, Harness

from ogpu_node.blobs import BlobKeeper, BlobLedger, BlobStore
from ogpu_node.chain import Chain
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.types.protocol import BPS, TaskKind

pytestmark = pytest.mark.timeout(120)

TERMS = {
    "maxPayment": 10 * OGPU, "councilSize": 3, "councilShareBps": 1_000, "checkpoints": 4,
    "segmentWindow": 3_600, "bidWindow": 30, "firstN": 0, "minBids": 1, "latenessBpsPerSecond": 0,
    "confirmWindow": 600, "responseMethod": 0, "responseWeight": 0,
}


def submit(h: Harness, client, prescription_hash: bytes) -> None:
    deposit = TERMS["maxPayment"] * h.chain.genesis.protocol.client_deposit_bps // BPS
    result = h.send(client, TASK_ABI, "submitTask", prescription_hash, TaskKind.BATCH, TERMS,
                    value=TERMS["maxPayment"] + deposit)
    assert result.ok, result.reason


def test_blocks_adopted_below_the_scanned_height_are_scanned(chain, tmp_path, dev_accounts):
    store = BlobStore(tmp_path / "blobs", min_free_bytes=0)
    ledger = BlobLedger(tmp_path / "blobs" / "ledger")
    keeper = BlobKeeper(chain, store, ledger, ttl_s=60.0)
    h = Harness(chain)
    side = LMDBStore(tmp_path / "side")
    try:
        other = Chain(side, chain.genesis)
        hb = Harness(other)
        only_a, only_b = b"\xaa" * 32, b"\xbb" * 32
        submit(h, dev_accounts[1], only_a)  # branch A: one block, referencing only_a
        assert keeper.catch_up() == 2 and ledger.kind(only_a) is not None
        submit(hb, dev_accounts[2], only_b)  # branch B: referencing only_b at the same height, and one more block
        hb.block(hb.tx(dev_accounts[2], TASK_ABI, "taskCount"))
        for result in hb.blocks:
            chain.import_block(decode_block(encode_block(result.executed.block)))
        chain.set_head(hb.blocks[-1].executed.block.hash)
        assert not keeper.caught_up()
        keeper.catch_up()
        assert ledger.kind(only_b) is not None  # scanned, though its height was scanned on A
        assert ledger.kind(only_a) is not None  # A's reference stays: kept longer, never lost early
        assert keeper.caught_up() and ledger.scanned == (chain.head.block_number, chain.head.hash)
    finally:
        side.close()
        ledger.close()
