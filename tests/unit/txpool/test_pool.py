"""TxPool over a real Chain: geth's rejection messages, replacement, pending vs queued, capacity, order."""

from __future__ import annotations

from typing import Any

import pytest
import rlp
from eth_utils import to_checksum_address
from txfactory import sign_tx

from ogpu_node.crypto import Keypair
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.txpool import PoolConfig, TxPool, TxRejected
from ogpu_node.txpool.pool import TX_MAX_SIZE

GWEI = 10**9
ETHER = 10**18
DEV_BALANCE = 10_000 * ETHER
BASE_FEE_1 = 875_000_000  # the base fee after the empty dev genesis (1 gwei - 1/8)
RECEIVER = b"\x11" * 20


def signed(key: bytes, nonce: int, **fields: Any) -> bytes:
    """This file's transaction: a transfer of 1 wei to RECEIVER unless the test says otherwise."""
    return sign_tx(key, nonce, **{"to": RECEIVER, "value": 1, **fields}).raw


def next_base_fee(header) -> int:
    """EIP-1559, as the node's head view computes it."""
    target = header.gas_limit // 2
    base = header.base_fee_per_gas
    if header.gas_used > target:
        return base + max(1, base * (header.gas_used - target) // target // 8)
    return base - base * (target - header.gas_used) // target // 8


def make_pool(chain, config: PoolConfig = PoolConfig()) -> TxPool:
    """Wired as ogpu_node.node.Node wires it: state at the head, next block's base fee and gas limit."""
    return TxPool(
        chain.chain_id,
        lambda address: chain.account(chain.head, address)[:2],
        lambda: (next_base_fee(chain.head), chain.head.gas_limit),
        config,
    )


def seal(chain, pool: TxPool) -> list[bytes]:
    """Build a block from the pool's pending transactions and tell the pool; returns the included hashes."""
    attrs = BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=b"\x00" * 20, mix_hash=b"\x07" * 32)
    executed = chain.build_block(attrs, pool.pending_in_order())
    pool.on_new_head(set(executed.senders))
    return [tx.hash for tx in executed.block.transactions]


def rejection(pool: TxPool, raw: bytes) -> str:
    with pytest.raises(TxRejected) as info:
        pool.add_raw(raw)
    return str(info.value)


@pytest.fixture
def pool(chain) -> TxPool:
    return make_pool(chain)


@pytest.fixture
def keys_(dev_accounts) -> list[bytes]:
    return [account.private_key for account in dev_accounts]


# -- geth's rejections --


def test_nonce_below_the_state_nonce_is_too_low(chain, pool, keys_):
    pool.add_raw(signed(keys_[0], 0))
    pool.add_raw(signed(keys_[0], 1))
    assert len(seal(chain, pool)) == 2
    assert len(pool) == 0
    assert rejection(pool, signed(keys_[0], 1, tip=2 * GWEI)) == "nonce too low: next nonce 2, tx nonce 1"


def test_cost_above_balance_is_insufficient_funds(pool, keys_):
    value = DEV_BALANCE
    cost = 21_000 * 10 * GWEI + value
    assert rejection(pool, signed(keys_[0], 0, value=value)) == (
        f"insufficient funds for gas * price + value: balance {DEV_BALANCE}, tx cost {cost}, "
        f"overshot {cost - DEV_BALANCE}"
    )


def test_pooled_transactions_count_against_the_balance(pool, keys_):
    gas_cost = 21_000 * 10 * GWEI
    pool.add_raw(signed(keys_[0], 0, value=6_000 * ETHER))
    second = 5_000 * ETHER + gas_cost
    queued = 6_000 * ETHER + gas_cost
    assert rejection(pool, signed(keys_[0], 1, value=5_000 * ETHER)) == (
        f"insufficient funds for gas * price + value: balance {DEV_BALANCE}, queued cost {queued}, "
        f"tx cost {second}, overshot {queued + second - DEV_BALANCE}"
    )
    # Replacing the expensive one frees its cost.
    pool.add_raw(signed(keys_[0], 0, value=1, tip=2 * GWEI, max_fee=11 * GWEI))
    pool.add_raw(signed(keys_[0], 1, value=5_000 * ETHER))
    assert pool.counts() == (2, 0)


def test_balance_is_read_at_admission_not_cached_from_a_rejection(chain, pool, keys_):
    poor = Keypair.from_private_key(b"\x42" * 32)
    raw = signed(poor.private_key, 0, value=0)
    assert rejection(pool, raw).startswith("insufficient funds for gas * price + value: balance 0,")
    pool.add_raw(signed(keys_[0], 0, to=poor.address, value=ETHER))
    seal(chain, pool)
    assert pool.add_raw(raw) in pool


def test_gas_below_intrinsic_is_too_low(pool, keys_):
    assert rejection(pool, signed(keys_[0], 0, gas=20_999)) == "intrinsic gas too low: gas 20999, minimum needed 21000"
    # 21000 + 16 per non-zero calldata byte
    assert rejection(pool, signed(keys_[0], 0, gas=21_000, data=b"\x01" * 10)) == (
        "intrinsic gas too low: gas 21000, minimum needed 21160"
    )


def test_legacy_gas_below_intrinsic_is_too_low_not_a_bad_signature(pool, keys_):
    assert rejection(pool, signed(keys_[0], 0, gas=20_000, gas_price=10 * GWEI)) == (
        "intrinsic gas too low: gas 20000, minimum needed 21000"
    )


def test_gas_below_the_eip7623_calldata_floor_is_rejected(pool, keys_):
    # intrinsic 21000 + 1000 * 16 = 37000; floor 21000 + 1000 * 4 tokens * 10 = 61000
    raw = signed(keys_[0], 0, gas=40_000, data=b"\x01" * 1000)
    assert rejection(pool, raw) == "insufficient gas for floor data gas cost: gas 40000, minimum needed 61000"
    assert pool.add_raw(signed(keys_[0], 0, gas=61_000, data=b"\x01" * 1000)) in pool


def test_same_transaction_twice_is_already_known(pool, keys_):
    raw = signed(keys_[0], 0)
    pool.add_raw(raw)
    assert rejection(pool, raw) == "already known"
    assert len(pool) == 1


def test_fee_cap_below_the_next_base_fee_is_rejected(pool, keys_, dev_accounts):
    raw = signed(keys_[0], 0, tip=0, max_fee=BASE_FEE_1 - 1)
    assert rejection(pool, raw) == (
        f"max fee per gas less than block base fee: address {to_checksum_address(dev_accounts[0].address)}, "
        f"maxFeePerGas: {BASE_FEE_1 - 1}, baseFee: {BASE_FEE_1}"
    )
    assert pool.add_raw(signed(keys_[0], 0, tip=0, max_fee=BASE_FEE_1)) in pool


def test_encoding_over_128_kib_is_oversized_data(pool, keys_):
    raw = signed(keys_[0], 0, gas=5_000_000, data=b"\x01" * TX_MAX_SIZE)
    assert rejection(pool, raw) == f"oversized data: transaction size {len(raw)}, limit {TX_MAX_SIZE}"


def _resigned(raw: bytes, **fields: int) -> bytes:
    """The EIP-1559 transaction with its signature fields (y_parity 9, r 10, s 11) replaced."""
    items = rlp.decode(raw[1:])
    for name, value in fields.items():
        items[{"y_parity": 9, "r": 10, "s": 11}[name]] = rlp.sedes.big_endian_int.serialize(value)
    return raw[:1] + rlp.encode(items)


def test_unrecoverable_or_malleable_signatures_are_invalid_sender(pool, keys_):
    raw = signed(keys_[0], 0)
    s = rlp.sedes.big_endian_int.deserialize(rlp.decode(raw[1:])[11])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    assert rejection(pool, _resigned(raw, r=0)) == "invalid sender: invalid transaction v, r, s values"
    assert rejection(pool, _resigned(raw, s=n - s)) == "invalid sender: invalid transaction v, r, s values"
    assert rejection(pool, _resigned(raw, y_parity=2)) == "invalid sender"
    assert len(pool) == 0


def test_other_chain_id_is_invalid_chain_id_for_signer(pool, keys_):
    assert rejection(pool, signed(keys_[0], 0, chain_id=1)) == "invalid chain id for signer"


def test_stateless_limits_use_geths_words(pool, keys_):
    assert rejection(pool, signed(keys_[0], 0, gas=30_000_001)) == "exceeds block gas limit"
    assert rejection(pool, signed(keys_[0], 0, tip=2 * GWEI, max_fee=GWEI)) == (
        "max priority fee per gas higher than max fee per gas"
    )
    assert rejection(pool, b"\x05" + signed(keys_[0], 0)[1:]) == "transaction type not supported"


def test_tip_below_the_configured_minimum_is_underpriced(chain, keys_):
    pool = make_pool(chain, PoolConfig(min_tip=GWEI))
    assert rejection(pool, signed(keys_[0], 0, tip=GWEI - 1)) == (
        f"transaction underpriced: gas tip cap {GWEI - 1}, minimum needed {GWEI}"
    )
    assert pool.add_raw(signed(keys_[0], 0, tip=GWEI)) in pool


# -- replacement --


def test_replacement_needs_both_fees_up_by_ten_percent(pool, keys_):
    original = pool.add_raw(signed(keys_[0], 0, tip=10 * GWEI, max_fee=100 * GWEI))
    underpriced = [
        signed(keys_[0], 0, tip=11 * GWEI, max_fee=100 * GWEI),  # only the tip rises
        signed(keys_[0], 0, tip=10 * GWEI, max_fee=110 * GWEI),  # only the fee cap rises
        signed(keys_[0], 0, tip=11 * GWEI - 1, max_fee=110 * GWEI),  # tip up 9.99 %
        signed(keys_[0], 0, tip=11 * GWEI, max_fee=110 * GWEI - 1),  # fee cap up 9.99 %
    ]
    for raw in underpriced:
        assert rejection(pool, raw) == "replacement transaction underpriced"
    assert original in pool
    replacement = pool.add_raw(signed(keys_[0], 0, tip=11 * GWEI, max_fee=110 * GWEI))
    assert replacement in pool and original not in pool
    assert len(pool) == 1 and pool.pending_in_order()[0].hash == replacement


def test_zero_tip_replacement_must_still_raise_the_tip(pool, keys_):
    pool.add_raw(signed(keys_[0], 0, tip=0, max_fee=10 * GWEI))
    assert rejection(pool, signed(keys_[0], 0, tip=0, max_fee=20 * GWEI)) == "replacement transaction underpriced"
    assert pool.add_raw(signed(keys_[0], 0, tip=1, max_fee=20 * GWEI)) in pool


# -- pending and queued --


def test_nonce_gap_is_queued_and_filling_it_promotes(chain, pool, keys_, dev_accounts):
    sender = dev_accounts[0].address
    two = pool.add_raw(signed(keys_[0], 2))
    one = pool.add_raw(signed(keys_[0], 1))
    assert pool.counts() == (0, 2)
    assert pool.next_nonce(sender) == 0
    assert not pool.has_pending() and pool.pending_in_order() == []
    zero = pool.add_raw(signed(keys_[0], 0))
    assert pool.counts() == (3, 0)
    assert pool.next_nonce(sender) == 3
    assert [tx.hash for tx in pool.pending_in_order()] == [zero, one, two]
    assert seal(chain, pool) == [zero, one, two]
    assert len(pool) == 0 and pool.next_nonce(sender) == 3


def test_block_keeps_queued_transactions_and_drops_included_ones(chain, pool, keys_, dev_accounts):
    zero = pool.add_raw(signed(keys_[0], 0))
    five = pool.add_raw(signed(keys_[0], 5))
    assert seal(chain, pool) == [zero]
    assert zero not in pool and five in pool
    assert pool.counts() == (0, 1)
    assert pool.next_nonce(dev_accounts[0].address) == 1


# -- capacity --


def test_full_pool_rejects_a_tip_not_above_the_cheapest(chain, keys_):
    pool = make_pool(chain, PoolConfig(max_transactions=3))
    for i, tip in enumerate((5, 6, 7)):
        pool.add_raw(signed(keys_[i], 0, tip=tip * GWEI))
    assert rejection(pool, signed(keys_[3], 0, tip=5 * GWEI)) == "transaction underpriced"
    assert rejection(pool, signed(keys_[3], 0, tip=GWEI)) == "transaction underpriced"
    assert len(pool) == 3


def test_full_pool_evicts_the_lowest_tip_for_a_better_paying_one(chain, keys_):
    pool = make_pool(chain, PoolConfig(max_transactions=3))
    hashes = [pool.add_raw(signed(keys_[i], 0, tip=tip * GWEI)) for i, tip in enumerate((6, 5, 7))]
    newcomer = pool.add_raw(signed(keys_[3], 0, tip=8 * GWEI))
    assert len(pool) == 3
    assert hashes[1] not in pool
    assert {hashes[0], hashes[2], newcomer} == {tx.hash for tx in pool.pending_in_order()}


def test_eviction_takes_a_senders_highest_nonce_so_no_gap_opens(chain, keys_, dev_accounts):
    pool = make_pool(chain, PoolConfig(max_transactions=3))
    first = pool.add_raw(signed(keys_[0], 0, tip=GWEI))
    tail = pool.add_raw(signed(keys_[0], 1, tip=9 * GWEI))
    other = pool.add_raw(signed(keys_[1], 0, tip=4 * GWEI))
    pool.add_raw(signed(keys_[2], 0, tip=5 * GWEI))
    assert other not in pool and first in pool and tail in pool
    assert pool.counts() == (3, 0)


def test_replacement_in_a_full_pool_evicts_nothing(chain, keys_):
    pool = make_pool(chain, PoolConfig(max_transactions=2))
    kept = pool.add_raw(signed(keys_[0], 0, tip=GWEI))
    pool.add_raw(signed(keys_[1], 0, tip=GWEI))
    replacement = pool.add_raw(signed(keys_[1], 0, tip=2 * GWEI, max_fee=11 * GWEI))
    assert kept in pool and replacement in pool and len(pool) == 2


# -- block order --


def test_block_order_is_highest_tip_across_senders_and_nonce_within_one(chain, pool, keys_):
    a0 = pool.add_raw(signed(keys_[0], 0, tip=1 * GWEI))
    a1 = pool.add_raw(signed(keys_[0], 1, tip=9 * GWEI))
    b0 = pool.add_raw(signed(keys_[1], 0, tip=5 * GWEI))
    c0 = pool.add_raw(signed(keys_[2], 0, tip=5 * GWEI))  # ties with b0: b0 came first
    d1 = pool.add_raw(signed(keys_[3], 1, tip=9 * GWEI))  # queued: never in a block before nonce 0
    d0 = pool.add_raw(signed(keys_[3], 0, tip=3 * GWEI))
    # effective tip = min(tip, fee cap - base fee): e0 offers 2.5 gwei but its fee cap leaves 2 gwei
    e0 = pool.add_raw(signed(keys_[4], 0, tip=2_500_000_000, max_fee=BASE_FEE_1 + 2 * GWEI))
    f0 = pool.add_raw(signed(keys_[5], 0, tip=2_200_000_000))
    order = [tx.hash for tx in pool.pending_in_order()]
    assert order == [b0, c0, d0, d1, f0, e0, a0, a1]
    assert seal(chain, pool) == order
