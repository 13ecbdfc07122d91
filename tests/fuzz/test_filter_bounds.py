"""The two filter bounds the fuzzer's floods needed (test_rpc_fuzz.py::test_memory_and_state_stay_bounded),
rule by rule, in process: what all filters hold together, and the pending-transaction hashes they share."""

from __future__ import annotations

import tracemalloc

import pytest

from ogpu_node.rpc import filters
from ogpu_node.rpc.filters import MAX_LOG_RESULTS, FilterApi
from ogpu_node.rpc.jsonrpc import RpcError


def _addresses(tag: int, count: int) -> list[str]:
    return [f"0x{tag:08x}{i:032x}" for i in range(count)]


def test_filter_values_are_bounded_node_wide_least_recently_polled_first(chain, monkeypatch):
    """Rule: the addresses and topics of all filters together stay within MAX_FILTER_VALUES (a filter
    counts 1 more); a new filter removes those polled least recently until it fits."""
    monkeypatch.setattr(filters, "MAX_FILTER_VALUES", 25)
    api = FilterApi(chain)
    small = api.eth_newBlockFilter(None)  # 1
    first = api.eth_newFilter(None, {"address": _addresses(1, 9)})  # 10
    second = api.eth_newFilter(None, {"address": _addresses(2, 4), "topics": [["0x" + "11" * 32] * 2, None]})  # 6
    assert api.eth_getFilterChanges(None, small) == []  # polled: now the most recent
    third = api.eth_newFilter(None, {"address": _addresses(3, 9)})  # 10: 27 > 25, `first` goes
    with pytest.raises(RpcError, match="filter not found"):
        api.eth_getFilterChanges(None, first)
    for kept in (second, small, third):
        assert api.eth_getFilterChanges(None, kept) == []
    assert api.eth_uninstallFilter(None, third)
    assert api.eth_newFilter(None, {"address": _addresses(4, 17)})  # 18 + 7 = 25: fits, nothing goes
    assert api.eth_getFilterChanges(None, second) == []


def test_pending_filters_share_one_list_of_the_latest_hashes(chain):
    """Rule: pending-transaction filters cost the same polled or not: 1,000 unpolled filters over
    20,000 arrivals hold one list, and each returns the latest MAX_LOG_RESULTS hashes since its last
    poll (each filter kept its own list of up to 10,000 before: 800 MB at 10,000 filters)."""
    api = FilterApi(chain)
    ids = [api.eth_newPendingTransactionFilter(None) for _ in range(1000)]
    hashes = [i.to_bytes(32, "big") for i in range(20_000)]
    tracemalloc.start()
    for tx_hash in hashes:
        api.on_pending_transaction(tx_hash)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 1 << 20
    latest = ["0x" + h.hex() for h in hashes[-MAX_LOG_RESULTS:]]
    assert api.eth_getFilterChanges(None, ids[0]) == latest
    assert api.eth_getFilterChanges(None, ids[0]) == []
    late = api.eth_newPendingTransactionFilter(None)
    api.on_pending_transaction(b"\x01" * 32)
    assert api.eth_getFilterChanges(None, late) == ["0x" + "01" * 32]
    assert api.eth_getFilterChanges(None, ids[0]) == ["0x" + "01" * 32]
    assert api.eth_getFilterChanges(None, ids[1]) == [*latest[1:], "0x" + "01" * 32]
