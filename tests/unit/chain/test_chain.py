"""The chain core without a network: build, import, reject, index."""

import pytest
from txfactory import sign_tx

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block, make_block
from ogpu_node.execution.errors import InvalidBlock
from ogpu_node.execution.state import BlockAttributes

GENESIS = load_genesis(DEV_GENESIS)


def transfer(key, nonce, to, value=1):
    """A signed EIP-1559 transfer (1 gwei tip, 10 gwei fee cap) as a block holds it."""
    return sign_tx(key, nonce, to=to, value=value).decoded


def attrs(chain, coinbase=b"\x00" * 20):
    return BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=coinbase, mix_hash=b"\x07" * 32)


@pytest.fixture
def other_chain(tmp_path):
    store = LMDBStore(tmp_path / "other")
    yield Chain(store, GENESIS)
    store.close()


def test_built_block_is_indexed_and_reopens_at_the_same_head(tmp_path, dev_accounts):
    store = LMDBStore(tmp_path / "db")
    chain = Chain(store, GENESIS)
    sender, receiver = dev_accounts[0], dev_accounts[1]
    txs = [transfer(sender.private_key, n, receiver.address, value=5) for n in range(3)]
    executed = chain.build_block(attrs(chain), txs)
    assert executed.header.block_number == 1 and executed.header.gas_used == 3 * 21000
    block, index = chain.transaction_location(txs[2].hash)
    assert (block.number, index) == (1, 2)
    assert block.receipts_json[2]["cumulativeGasUsed"] == 63000
    assert chain.account(chain.head, receiver.address)[1] == 10_000 * 10**18 + 15
    head = chain.head
    store.close()
    reopened = Chain(LMDBStore(tmp_path / "db"), GENESIS)
    assert reopened.head == head
    assert reopened.block_by_number(1).transactions[0].hash == txs[0].hash


def test_builder_leaves_out_invalid_transactions(chain, dev_accounts):
    sender, receiver = dev_accounts[0], dev_accounts[1]
    good = transfer(sender.private_key, 0, receiver.address)
    gap = transfer(sender.private_key, 5, receiver.address)
    broke = transfer(dev_accounts[2].private_key, 0, receiver.address, value=10**30)
    executed = chain.build_block(attrs(chain), [good, gap, broke])
    assert [tx.hash for tx in executed.block.transactions] == [good.hash]
    assert {tx.hash for tx, _ in executed.excluded} == {gap.hash, broke.hash}


def test_import_reproduces_a_block_built_elsewhere(chain, other_chain, dev_accounts):
    txs = [transfer(dev_accounts[i].private_key, 0, dev_accounts[9].address) for i in range(4)]
    built = chain.build_block(attrs(chain, coinbase=dev_accounts[0].address), txs)
    imported = other_chain.import_block(decode_block(encode_block(built.block)), as_head=True)
    assert imported.header == built.header
    assert other_chain.head.hash == chain.head.hash


def test_tampered_block_is_rejected_and_changes_nothing(chain, other_chain, dev_accounts):
    txs = [transfer(dev_accounts[0].private_key, 0, dev_accounts[1].address)]
    built = chain.build_block(attrs(chain), txs)
    bad = make_block(built.header.copy(state_root=b"\x01" * 32), built.block.transactions)
    with pytest.raises(InvalidBlock, match="state_root"):
        other_chain.import_block(bad)
    assert other_chain.head.block_number == 0
    assert other_chain.transaction_location(txs[0].hash) is None
    assert other_chain.header_by_number(1) is None


def test_block_with_invalid_transaction_is_rejected(chain, other_chain, dev_accounts):
    tx = transfer(dev_accounts[0].private_key, 0, dev_accounts[1].address)
    built = chain.build_block(attrs(chain), [tx])
    replayed = make_block(built.header, [tx, tx])
    with pytest.raises(InvalidBlock, match="transaction 1"):
        other_chain.import_block(replayed)
    assert other_chain.head.block_number == 0


def test_block_size_is_the_length_of_its_rlp(chain, dev_accounts):
    legacy = sign_tx(dev_accounts[2], 0, to=dev_accounts[1].address, value=1, gas_price=10**10).decoded
    txs = [transfer(dev_accounts[0].private_key, n, dev_accounts[1].address) for n in range(3)] + [legacy]
    executed = chain.build_block(attrs(chain), txs)
    stored = chain.block_by_hash(executed.header.hash)
    assert stored.size == len(encode_block(executed.block))
    assert chain.block_by_number(0).size == len(encode_block(make_block(chain.header_by_number(0), [])))
