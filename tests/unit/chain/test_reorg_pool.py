"""The transaction pool after a head switch (issue 11): the abandoned blocks' transactions that the new
branch lacks come back, in nonce order, and the next block mines them on the new branch; one whose
nonce the new branch used for another transaction is dropped."""

from __future__ import annotations

import pytest
from txfactory import sign_tx

from ogpu_node.chain import Chain
from ogpu_node.db import LMDBStore
from ogpu_node.execution.codec import decode_block, encode_block
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.txpool import TxPool

pytestmark = pytest.mark.timeout(120)


def make_pool(chain: Chain) -> TxPool:
    """As the node wires it, with the head's base fee (blocks here are small: the fee only falls)."""
    return TxPool(chain.chain_id, lambda address: chain.account(chain.head, address)[:2],
                  lambda: (chain.head.base_fee_per_gas, chain.head.gas_limit))


def signed(key: bytes, nonce: int, value: int = 1) -> bytes:
    return sign_tx(key, nonce, to=b"\x11" * 20, value=value).raw


def seal(chain: Chain, pool: TxPool) -> list[bytes]:
    attrs = BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=b"\x00" * 20, mix_hash=b"\x07" * 32)
    executed = chain.build_block(attrs, pool.pending_in_order())
    pool.on_new_head(set(executed.senders))
    return [tx.hash for tx in executed.block.transactions]


@pytest.fixture
def side(chain, tmp_path):
    store = LMDBStore(tmp_path / "side")
    yield Chain(store, chain.genesis)
    store.close()


def test_abandoned_transactions_return_to_the_pool_and_are_mined_on_the_new_branch(chain, side, dev_accounts):
    k0, k1, k2 = (a.private_key for a in dev_accounts[:3])
    pool = make_pool(chain)
    t0, t1 = pool.add_raw(signed(k0, 0)), pool.add_raw(signed(k0, 1))
    x = pool.add_raw(signed(k1, 0, value=5))
    assert set(seal(chain, pool)) == {t0, t1, x}
    later = pool.add_raw(signed(k0, 2))  # waits on top of the mined ones
    assert [tx.hash for tx in pool.pending_in_order()] == [later]

    # Branch B: sender 1 spent nonce 0 on another transfer; two blocks, so it is the longer one.
    y = sign_tx(k1, 0, to=b"\x22" * 20, value=9).decoded
    for txs in ([y], [sign_tx(k2, 0, to=b"\x22" * 20, value=1).decoded]):
        attrs = BlockAttributes(timestamp=side.head.timestamp + 12, coinbase=b"\x0b" * 20, mix_hash=b"\x07" * 32)
        built = side.build_block(attrs, txs)
        chain.import_block(decode_block(encode_block(built.block)))
    change = chain.set_head(side.head.hash)

    taken = pool.on_reorg(change.returned_transactions, change.senders)
    assert taken == [t0, t1]  # x's nonce is used by y on this branch: dropped
    assert x not in pool and y.hash not in pool
    assert [tx.hash for tx in pool.pending_in_order()] == [t0, t1, later]
    assert set(seal(chain, pool)) == {t0, t1, later}
    assert chain.head.parent_hash == side.head.hash and len(pool) == 0
    assert chain.receipt_json(t0)["blockNumber"] == 3
