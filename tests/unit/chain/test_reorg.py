"""The block tree and head switches of `Chain` (issue 11): every valid block is kept, a block imports
on any known parent without moving the head, and `set_head` rewrites the canonical indexes and the
head in one write transaction, returning what left and what joined the canonical chain.

Branches are built on a second chain from the same genesis (its own `build_block`), then imported.
"""

from __future__ import annotations

import pytest
from txfactory import sign_tx

from ogpu_node.chain import Chain, ChainError, FinalizedRevert
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.execution.state import BlockAttributes, Execution

pytestmark = pytest.mark.timeout(120)

GENESIS = load_genesis(DEV_GENESIS)


def transfer(account, nonce, to, value=1):
    return sign_tx(account, nonce, to=to, value=value).decoded


def build(chain: Chain, txs=(), coinbase: bytes = b"\x00" * 20):
    attrs = BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=coinbase, mix_hash=b"\x07" * 32)
    executed = chain.build_block(attrs, list(txs))
    assert not executed.excluded, executed.excluded
    return executed.block


def import_all(chain: Chain, blocks) -> None:
    for block in blocks:
        chain.import_block(decode_block(encode_block(block)))


@pytest.fixture
def side(tmp_path):
    """A second chain of the same genesis, where the competing branch is built."""
    store = LMDBStore(tmp_path / "side")
    yield Chain(store, GENESIS)
    store.close()


@pytest.fixture
def forked(chain, side, dev_accounts):
    """Branch A on `chain` (2 blocks: T and S, then T2) and branch B on `side` (3 blocks: S and U, then
    two empty ones) from genesis; B's blocks imported into `chain` as side blocks."""
    a0, a1, a2, receiver = dev_accounts[0], dev_accounts[1], dev_accounts[2], dev_accounts[9].address
    shared = transfer(a1, 0, receiver, 7)
    t = transfer(a0, 0, receiver, 5)
    t2 = transfer(a0, 1, receiver, 6)
    u = transfer(a2, 0, receiver, 9)
    branch_a = [build(chain, [t, shared]), build(chain, [t2])]
    branch_b = [build(side, [shared, u], coinbase=b"\x0b" * 20), build(side, coinbase=b"\x0b" * 20),
                build(side, coinbase=b"\x0b" * 20)]
    import_all(chain, branch_b)
    return {"a": branch_a, "b": branch_b, "t": t, "t2": t2, "shared": shared, "u": u}


def canonical_hashes(chain: Chain) -> list[bytes]:
    return [chain.header_by_number(n).hash for n in range(chain.head.block_number + 1)]


def test_a_side_block_is_stored_without_moving_the_head_or_the_indexes(chain, forked):
    a, b = forked["a"], forked["b"]
    assert chain.head.hash == a[-1].hash
    assert canonical_hashes(chain)[1:] == [block.hash for block in a]
    for block in b:
        assert chain.has_block(block.hash)
        assert chain.block_by_hash(block.hash).header == block.header
        assert not chain.is_canonical(block.header)
    assert chain.transaction_location(forked["u"].hash) is None
    block, index = chain.transaction_location(forked["shared"].hash)
    assert (block.hash, index) == (a[0].hash, 1)


def test_set_head_adopts_the_branch_and_returns_what_changed(chain, side, forked, dev_accounts):
    a, b = forked["a"], forked["b"]
    change = chain.set_head(b[-1].hash)
    assert [blk.hash for blk in change.abandoned] == [blk.hash for blk in a]
    assert [blk.hash for blk in change.adopted] == [blk.hash for blk in b]
    assert (change.ancestor.hash, change.old_head.hash, change.new_head.hash) == (chain.genesis_hash, a[-1].hash, b[-1].hash)
    # T and T2 only in A go back to the pool, in nonce order; the shared transfer stays mined.
    assert [tx.hash for tx in change.returned_transactions] == [forked["t"].hash, forked["t2"].hash]
    assert change.senders == {dev_accounts[0].address, dev_accounts[1].address, dev_accounts[2].address}

    assert chain.head.hash == b[-1].hash
    assert canonical_hashes(chain) == canonical_hashes(side)
    assert chain.receipt_json(forked["t"].hash) is None and chain.transaction_location(forked["t2"].hash) is None
    block, index = chain.transaction_location(forked["shared"].hash)
    assert (block.hash, index) == (b[0].hash, 0)
    assert chain.receipt_json(forked["u"].hash)["blockHash"] == b[0].hash
    # The state is B's: the same accounts as on a chain that only ever had B.
    for account in dev_accounts:
        assert chain.account(chain.head, account.address) == side.account(side.head, account.address)


def test_switching_back_to_a_shorter_branch_cuts_the_number_index(chain, forked):
    a, b = forked["a"], forked["b"]
    chain.set_head(b[-1].hash)
    change = chain.set_head(a[-1].hash)  # A's blocks are still stored: nothing is executed again
    assert [blk.hash for blk in change.abandoned] == [blk.hash for blk in b]
    assert [blk.hash for blk in change.adopted] == [blk.hash for blk in a]
    assert chain.head.block_number == 2 and chain.header_by_number(3) is None
    assert chain.execution.canonical_hash(3) is None
    assert chain.receipt_json(forked["t"].hash)["blockHash"] == a[0].hash
    assert chain.transaction_location(forked["u"].hash) is None


def test_the_head_survives_a_reopen_after_a_switch(chain, forked, tmp_path):
    b = forked["b"]
    chain.set_head(b[-1].hash)
    chain.store.close()
    reopened = Chain(LMDBStore(tmp_path / "chaindata"), GENESIS)
    try:
        assert reopened.head.hash == b[-1].hash
        assert reopened.receipt_json(forked["t"].hash) is None
    finally:
        reopened.store.close()


def test_a_switch_that_would_revert_a_finalized_block_is_refused_and_changes_nothing(chain, forked):
    a, b = forked["a"], forked["b"]
    chain.finalized_number = 1
    before = canonical_hashes(chain)
    with pytest.raises(FinalizedRevert, match="would revert block 1, at or below finalized block 1"):
        chain.set_head(b[-1].hash)
    with pytest.raises(FinalizedRevert):
        chain.import_block(decode_block(encode_block(b[-1])), as_head=True)
    assert chain.head.hash == a[-1].hash and canonical_hashes(chain) == before
    assert chain.receipt_json(forked["t"].hash)["blockHash"] == a[0].hash
    # Moving forward on the finalized branch is no revert.
    chain.set_head(a[0].hash)  # a rewind above the finalized block is allowed too
    assert chain.set_head(a[1].hash).adopted[0].hash == a[1].hash


def test_a_failed_switch_leaves_the_old_head_and_indexes(chain, forked, monkeypatch, tmp_path):
    """One write transaction: a failure at its last write (the head pointer) undoes the index rewrites,
    in this process and in the store on disk."""
    a, b = forked["a"], forked["b"]
    before = canonical_hashes(chain)

    def crash(self, block_hash):
        raise OSError("power cut")

    monkeypatch.setattr(Execution, "write_head", crash)
    with pytest.raises(OSError, match="power cut"):
        chain.set_head(b[-1].hash)
    monkeypatch.undo()
    assert chain.head.hash == a[-1].hash
    assert [chain.execution.canonical_hash(n) for n in range(4)] == [*before, None]
    assert chain.receipt_json(forked["t"].hash)["blockHash"] == a[0].hash
    assert chain.transaction_location(forked["u"].hash) is None
    chain.store.close()
    reopened = Chain(LMDBStore(tmp_path / "chaindata"), GENESIS)
    try:
        assert reopened.head.hash == a[-1].hash and canonical_hashes(reopened) == before
        assert reopened.receipt_json(forked["t"].hash)["blockHash"] == a[0].hash
    finally:
        reopened.store.close()


def test_import_as_head_on_another_branch_switches_in_the_same_write(chain, side, forked):
    b = forked["b"]
    extra = build(side, coinbase=b"\x0b" * 20)
    chain.import_block(decode_block(encode_block(extra)), as_head=True)
    assert chain.head.hash == extra.hash
    assert canonical_hashes(chain) == canonical_hashes(side)
    assert chain.header_by_number(3).hash == b[-1].hash


def test_a_block_on_an_unknown_parent_or_an_unknown_head_is_refused(chain, side, dev_accounts):
    build(side)
    orphan = build(side)
    with pytest.raises(InvalidBlock, match="unknown parent"):
        chain.import_block(decode_block(encode_block(orphan)))
    assert not chain.has_block(orphan.hash)
    with pytest.raises(ChainError, match="unknown block"):
        chain.set_head(orphan.hash)
    assert chain.head.block_number == 0


def test_set_head_to_the_head_changes_nothing(chain, forked):
    change = chain.set_head(chain.head.hash)
    assert change.abandoned == change.adopted == () and change.new_head.hash == forked["a"][-1].hash
