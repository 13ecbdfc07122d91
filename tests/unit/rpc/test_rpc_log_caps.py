"""eth_getLogs limits over a real Chain: OR-lists capped as geth caps them, the result cap applied to
the blockHash form too, and long OR-lists matched by set membership."""

from __future__ import annotations

import pytest
from txfactory import sign_tx

from ogpu_node.execution.state import BlockAttributes
from ogpu_node.rpc import filters
from ogpu_node.rpc.filters import MAX_ADDRESSES, MAX_SUB_TOPICS, FilterApi
from ogpu_node.rpc.jsonrpc import RpcError

LOGS_PER_TX = 5
# Init code: LOG1(offset 0, size 0, topic 0x07) five times, then STOP (deploys no code).
EMIT = bytes.fromhex("6007" "6000" "6000" "a1") * LOGS_PER_TX


@pytest.fixture
def block_with_logs(chain, dev_accounts):
    tx = sign_tx(dev_accounts[0], 0, data=EMIT, gas=200_000).decoded
    attrs = BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=b"\x00" * 20, mix_hash=b"\x07" * 32)
    executed = chain.build_block(attrs, [tx])
    return executed.header


def error_of(fn, *args) -> RpcError:
    with pytest.raises(RpcError) as info:
        fn(None, *args)
    return info.value


def test_or_lists_are_capped_for_every_form(chain):
    """Rule: more than MAX_ADDRESSES addresses, or MAX_SUB_TOPICS topics in one position, is invalid
    params for eth_getLogs (range and blockHash), eth_newFilter and logs subscriptions alike."""
    api = FilterApi(chain)
    many_addresses = {"address": ["0x" + i.to_bytes(20, "big").hex() for i in range(MAX_ADDRESSES + 1)]}
    many_topics = {"topics": [None, ["0x" + i.to_bytes(32, "big").hex() for i in range(MAX_SUB_TOPICS + 1)]]}
    by_hash = {"blockHash": "0x" + chain.head.hash.hex()}
    for criteria in (many_addresses, many_topics):
        for fn, args in (
            (api.eth_getLogs, [criteria]),
            (api.eth_getLogs, [{**criteria, **by_hash}]),
            (api.eth_newFilter, [criteria]),
        ):
            assert error_of(fn, *args).code == -32602
    assert error_of(api.eth_getLogs, many_addresses).message == f"exceed max addresses (limit {MAX_ADDRESSES})"


def test_block_hash_form_has_the_result_cap(chain, block_with_logs, monkeypatch):
    """Rule: a block with more matching logs than MAX_LOG_RESULTS fails by hash as by range."""
    api = FilterApi(chain)
    by_hash = {"blockHash": "0x" + block_with_logs.hash.hex()}
    assert len(api.eth_getLogs(None, by_hash)) == LOGS_PER_TX
    monkeypatch.setattr(filters, "MAX_LOG_RESULTS", LOGS_PER_TX - 1)
    for criteria in (by_hash, {"fromBlock": "0x0", "toBlock": "latest"}):
        error = error_of(api.eth_getLogs, criteria)
        assert (error.code, error.message) == (-32005, f"query returned more than {LOGS_PER_TX - 1} results")


def test_long_or_lists_still_match(chain, block_with_logs):
    """Rule: the one matching address among MAX_ADDRESSES, or topic among MAX_SUB_TOPICS, selects the
    same logs as a filter naming it alone (range and blockHash forms)."""
    api = FilterApi(chain)
    [receipt_log, *_] = api.eth_getLogs(None, {"blockHash": "0x" + block_with_logs.hash.hex()})
    emitter, topic = receipt_log["address"], receipt_log["topics"][0]
    decoys = ["0x" + i.to_bytes(20, "big").hex() for i in range(1, MAX_ADDRESSES)]
    topic_decoys = ["0x" + i.to_bytes(32, "big").hex() for i in range(8, MAX_SUB_TOPICS + 7)]
    criteria = {"address": [*decoys, emitter], "topics": [[*topic_decoys, topic]]}
    for form in ({"blockHash": "0x" + block_with_logs.hash.hex()}, {"fromBlock": "0x0"}):
        assert len(api.eth_getLogs(None, {**criteria, **form})) == LOGS_PER_TX
        assert api.eth_getLogs(None, {"address": decoys, **form}) == []


def test_safe_and_finalized_name_the_checkpoint_blocks_in_log_ranges(chain, dev_accounts):
    """Rule: under proof of stake, fromBlock/toBlock "safe" and "finalized" are the justified and
    finalized checkpoints' blocks (as eth_getBlockByNumber answers them), not the head; under --dev
    (no checkpoints) both name the head, as geth's dev mode."""
    headers = []
    for nonce in range(3):  # blocks 1, 2, 3, each with LOGS_PER_TX logs
        tx = sign_tx(dev_accounts[0], nonce, data=EMIT, gas=200_000).decoded
        attrs = BlockAttributes(timestamp=chain.head.timestamp + 12, coinbase=b"\x00" * 20, mix_hash=b"\x07" * 32)
        headers.append(chain.build_block(attrs, [tx]).header)
    checkpoints = {"finalized": headers[0].hash, "safe": headers[1].hash}
    pos = FilterApi(chain, checkpoints.get)

    def blocks(api: FilterApi, criteria: dict) -> list[int]:
        return sorted({int(entry["blockNumber"], 16) for entry in api.eth_getLogs(None, criteria)})

    assert blocks(pos, {"fromBlock": "0x0", "toBlock": "finalized"}) == [1]
    assert blocks(pos, {"fromBlock": "finalized", "toBlock": "safe"}) == [1, 2]
    assert blocks(pos, {"fromBlock": "safe"}) == [2, 3]
    assert blocks(FilterApi(chain), {"fromBlock": "finalized"}) == [3]
