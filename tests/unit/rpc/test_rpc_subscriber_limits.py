"""Filters and subscriptions under load, in process: a subscriber that does not read is dropped without
delaying blocks, subscriptions per connection and filters node-wide are bounded."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ogpu_node.rpc import filters
from ogpu_node.rpc.filters import FilterApi
from ogpu_node.rpc.jsonrpc import RpcError
from ogpu_node.rpc.notify import MAX_QUEUED_BATCHES


class Session:
    """A WebSocket session; `stuck` ones never finish a send (a client that stopped reading)."""

    is_websocket = True

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.sent: list[bytes] = []
        self.callbacks: list = []
        self.blocked = 0  # sends in progress

    async def send(self, payload: bytes) -> None:
        self.blocked += 1
        try:
            if self.stuck:
                await trio.sleep_forever()
            self.sent.append(payload)
        finally:
            self.blocked -= 1

    def on_close(self, callback) -> None:
        self.callbacks.append(callback)


async def test_a_silent_subscriber_is_dropped_without_delaying_blocks(chain, caplog):
    """Rule: publishing a block never waits for a subscriber; one that is MAX_QUEUED_BATCHES blocks
    behind loses its subscriptions while its first write is still blocked, and others get every block."""
    api = FilterApi(chain)
    block = chain.block_by_hash(chain.head.hash)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        stuck, reader = Session(stuck=True), Session()
        for _ in range(3):
            api.eth_subscribe(stuck, "newHeads")
        api.eth_subscribe(reader, "newHeads")
        for _ in range(MAX_QUEUED_BATCHES + 2):
            await api.publish_block(block)
            await trio.testing.wait_all_tasks_blocked()
        assert stuck.blocked == 1  # still inside its first write: no timeout was waited for
        assert "cancelled 3 subscription(s) of a WebSocket client that did not read" in caplog.text
        assert len(reader.sent) == MAX_QUEUED_BATCHES + 2
        assert api.eth_subscribe(stuck, "newHeads")  # it may subscribe again
        nursery.cancel_scope.cancel()


async def test_a_burst_of_pending_transactions_is_one_batch(chain, caplog):
    """Rule: pending-transaction hashes published one by one while a reader's write is in progress join
    one queued batch, so a reader that keeps up is never dropped for a burst."""
    api = FilterApi(chain)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        reader = Session()
        api.eth_subscribe(reader, "newPendingTransactions")
        for i in range(100):  # no checkpoint between them: the writer cannot run meanwhile
            await api.publish_pending([i.to_bytes(32, "big")])
        await trio.testing.wait_all_tasks_blocked()
        assert len(reader.sent) == 100
        assert "cancelled" not in caplog.text
        nursery.cancel_scope.cancel()


def test_subscriptions_per_connection_are_bounded(chain, monkeypatch):
    """Rule: a connection holds at most MAX_SUBSCRIPTIONS_PER_CONNECTION; unsubscribing frees a slot;
    the close callback is registered once per connection, however often it resubscribes."""
    monkeypatch.setattr(filters, "MAX_SUBSCRIPTIONS_PER_CONNECTION", 2)
    api, session = FilterApi(chain), Session()
    first = api.eth_subscribe(session, "newHeads")
    api.eth_subscribe(session, "logs", {})
    with pytest.raises(RpcError) as info:
        api.eth_subscribe(session, "newHeads")
    assert info.value.message == "too many subscriptions (limit 2 per connection)"
    for _ in range(5):
        assert api.eth_unsubscribe(session, first)
        first = api.eth_subscribe(session, "newHeads")
    assert api.eth_subscribe(Session(), "newHeads")  # the limit is per connection
    assert len(session.callbacks) == 1
    session.callbacks[0]()  # the connection closes: its subscriptions go
    assert api.eth_subscribe(session, "newHeads") and api.eth_subscribe(session, "newHeads")


def test_the_addresses_and_topics_one_connection_subscribes_to_are_bounded(chain):
    """Rule: a connection's logs subscriptions hold at most MAX_FILTER_VALUES addresses and topics
    together (4096 subscriptions of 1,000 addresses each would be 4M per connection); unsubscribing
    gives them back."""
    api, session = FilterApi(chain), Session()
    wide = {"address": ["0x" + f"{i:040x}" for i in range(filters.MAX_ADDRESSES)]}
    held = []
    while True:
        try:
            held.append(api.eth_subscribe(session, "logs", wide))
        except RpcError as exc:
            assert exc.message == ("subscriptions of this connection would hold more than "
                                   f"{filters.MAX_FILTER_VALUES} addresses and topics")
            break
    assert len(held) == filters.MAX_FILTER_VALUES // (filters.MAX_ADDRESSES + 1)
    assert api.eth_subscribe(session, "newHeads")  # small subscriptions still fit
    assert api.eth_unsubscribe(session, held[0])
    assert api.eth_subscribe(session, "logs", wide)
    assert api.eth_subscribe(Session(), "logs", wide)  # per connection


def test_filters_are_bounded_and_the_least_recently_polled_goes(chain, monkeypatch):
    """Rule: at MAX_FILTERS a new filter removes the one polled least recently (memory stays bounded)."""
    monkeypatch.setattr(filters, "MAX_FILTERS", 3)
    api = FilterApi(chain)
    ids = [api.eth_newBlockFilter(None) for _ in range(3)]
    assert api.eth_getFilterChanges(None, ids[0]) == []  # polled: now the most recent
    newest = api.eth_newPendingTransactionFilter(None)
    with pytest.raises(RpcError):
        api.eth_getFilterChanges(None, ids[1])
    for kept in (ids[0], ids[2], newest):
        assert api.eth_getFilterChanges(None, kept) == []
