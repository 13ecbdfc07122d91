"""The chain on a full disk (issue 10): a block that cannot be committed leaves the head, the indexes and
the state exactly as before, and the same block built or imported later, once space is back, is the
block a chain on a roomy disk makes of the same inputs."""

from __future__ import annotations

import pytest
from smallfs import fill, small_tmpfs
from txfactory import sign_tx

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.db import LMDBStore, StoreFull
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.execution.state import BlockAttributes

GENESIS = load_genesis(DEV_GENESIS)


@pytest.fixture
def fs(tmp_path):
    with small_tmpfs(tmp_path / "fs", "16m") as mounted:
        yield mounted


@pytest.fixture
def full_disk_chain(fs):
    store = LMDBStore(fs / "chaindata", durable=False)
    yield Chain(store, GENESIS)
    store.close()


@pytest.fixture
def roomy_chain(tmp_path):
    store = LMDBStore(tmp_path / "roomy", durable=False)
    yield Chain(store, GENESIS)
    store.close()


def attrs(number: int) -> BlockAttributes:
    return BlockAttributes(timestamp=GENESIS.timestamp + 12 * number, coinbase=b"\x05" * 20, mix_hash=b"\x07" * 32)


def transfers(dev_accounts, nonce: int) -> list:
    return [
        sign_tx(dev_accounts[i].private_key, nonce, to=dev_accounts[9].address, value=10 + i).decoded
        for i in range(8)
    ]


def test_rule_build_on_full_disk_raises_store_full_and_a_retry_builds_the_same_block(
    fs, full_disk_chain, roomy_chain, dev_accounts
):
    chain = full_disk_chain
    first = transfers(dev_accounts, 0)
    assert chain.build_block(attrs(1), first).header == roomy_chain.build_block(attrs(1), first).header
    head = chain.head
    receiver = dev_accounts[9].address
    balance = chain.account(head, receiver)[1]
    second = transfers(dev_accounts, 1)

    filler = fill(fs)
    for _ in range(2):  # every retry while the disk stays full fails the same way
        with pytest.raises(StoreFull):
            chain.build_block(attrs(2), second)
        assert chain.head == head
        assert chain.header_by_number(2) is None and chain.block_by_number(2) is None
        assert all(chain.transaction_location(tx.hash) is None for tx in second)
        assert chain.account(chain.head, receiver)[1] == balance
        assert chain.block_by_number(1).transaction_hashes == [tx.hash for tx in first]

    filler.unlink()
    built = chain.build_block(attrs(2), second)
    expected = roomy_chain.build_block(attrs(2), second)
    assert built.header == expected.header  # same state root, receipts root, hash
    assert chain.head.hash == expected.header.hash
    assert chain.account(chain.head, receiver)[1] == balance + sum(10 + i for i in range(8))
    block, index = chain.transaction_location(second[7].hash)
    assert (block.number, index) == (2, 7)

    store = chain.store
    store.close()
    reopened = Chain(LMDBStore(fs / "chaindata", durable=False), GENESIS)
    try:
        assert reopened.head.hash == expected.header.hash
    finally:
        reopened.store.close()


def test_rule_import_on_full_disk_raises_store_full_and_a_retry_imports_it(
    fs, full_disk_chain, roomy_chain, dev_accounts
):
    chain = full_disk_chain
    built = roomy_chain.build_block(attrs(1), transfers(dev_accounts, 0))
    block = decode_block(encode_block(built.block))

    filler = fill(fs)
    with pytest.raises(StoreFull):
        chain.import_block(block, as_head=True)
    assert chain.head.block_number == 0
    assert chain.header_by_number(1) is None
    assert chain.transaction_location(block.transactions[0].hash) is None

    filler.unlink()
    imported = chain.import_block(block, as_head=True)
    assert imported.header == built.header
    assert chain.head.hash == roomy_chain.head.hash
