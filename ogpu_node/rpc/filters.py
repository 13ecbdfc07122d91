"""eth_getLogs, polling filters and WebSocket subscriptions, all on one LogFilter matcher."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ogpu_node.chain import Chain, HeadChange, LogFilter, StoredBlock
from ogpu_node.rpc import params as p
from ogpu_node.rpc.jsonrpc import SERVER_ERROR, InvalidParams, RpcError
from ogpu_node.rpc.notify import Notifier

MAX_LOG_RESULTS = 10_000
MAX_LOG_RANGE = 100_000
# geth's maxAddresses and maxSubTopics: a query's OR-lists, for getLogs, filters and subscriptions.
MAX_ADDRESSES = 1_000
MAX_SUB_TOPICS = 1_000
FILTER_TIMEOUT_S = 300.0  # geth drops a filter not polled for 5 minutes
MAX_SUBSCRIPTIONS_PER_CONNECTION = 4096
MAX_FILTERS = 10_000  # node-wide; at the limit the filter polled least recently is removed
# Node-wide, the addresses and topics all filters hold (each ~400 bytes once polled: the value and its
# bloom bits). Without it 10,000 filters of 1,000 addresses and 4 x 1,000 topics could hold ~19 GB.
MAX_FILTER_VALUES = 50_000
# Abandoned blocks a log filter remembers between polls, to report their logs as removed; a filter
# left unpolled across deeper reorganizations reports only the latest ones.
MAX_REMOVED_BLOCKS = 1_024

_log = logging.getLogger("ogpu.rpc")


def _log_filter(criteria: dict[str, Any]) -> LogFilter:
    """The matcher of a filter object. Its OR-lists are frozensets, so matching a log is O(1) per
    position whatever the list's length (a tuple made 100k addresses x 60k logs quadratic)."""
    raw_address = criteria.get("address")
    if raw_address is None:
        addresses: frozenset[bytes] = frozenset()
    elif isinstance(raw_address, list):
        if len(raw_address) > MAX_ADDRESSES:
            raise InvalidParams(f"exceed max addresses (limit {MAX_ADDRESSES})")
        addresses = frozenset(p.address(a) for a in raw_address)
    else:
        addresses = frozenset((p.address(raw_address),))
    raw_topics = criteria.get("topics") or []
    if not isinstance(raw_topics, list) or len(raw_topics) > 4:
        raise InvalidParams("invalid topics: expected a list of at most 4 positions")
    topics: list[frozenset[bytes] | None] = []
    for position in raw_topics:
        if position is None or position == []:
            topics.append(None)
        elif isinstance(position, list):
            if len(position) > MAX_SUB_TOPICS:
                raise InvalidParams(f"exceed max topics (limit {MAX_SUB_TOPICS} per position)")
            # As geth: a null anywhere in an OR-list makes the whole position a wildcard.
            if any(t is None for t in position):
                topics.append(None)
            else:
                topics.append(frozenset(p.hash32(t, "topic") for t in position))
        else:
            topics.append(frozenset((p.hash32(position, "topic"),)))
    return LogFilter(addresses, tuple(topics))



def _extend_capped(out: list[dict[str, Any]], criteria: LogFilter, block: StoredBlock) -> None:
    """Append the block's matching logs, failing as soon as the result would pass MAX_LOG_RESULTS."""
    for entry in criteria.logs_of(block):
        if len(out) >= MAX_LOG_RESULTS:
            raise RpcError(-32005, f"query returned more than {MAX_LOG_RESULTS} results")
        out.append(entry)


@dataclass
class _Filter:
    kind: str  # "logs" | "blocks" | "pending"
    criteria: LogFilter = field(default_factory=LogFilter)
    to_block: int | None = None
    from_block: int = 0
    next_block: int = 0
    last_poll: float = field(default_factory=time.monotonic)
    next_pending: int = 0  # "pending": the arrival number of the first hash it has not returned
    # "logs": abandoned blocks whose logs it returned; the next poll returns them with removed: true.
    removed: deque[bytes] = field(default_factory=lambda: deque(maxlen=MAX_REMOVED_BLOCKS))

    @property
    def values(self) -> int:
        """What it counts against MAX_FILTER_VALUES (at least 1, so that every filter counts)."""
        return _values_of(self.criteria)

    def covers(self, number: int) -> bool:
        return self.from_block <= number and (self.to_block is None or number <= self.to_block)


def _values_of(criteria: LogFilter) -> int:
    return 1 + len(criteria.addresses) + sum(len(wanted) for wanted in criteria.topics if wanted is not None)


@dataclass
class _Subscription:
    session: Any
    kind: str
    criteria: LogFilter


class FilterApi:
    def __init__(self, chain: Chain, checkpoint_root: Callable[[str], bytes | None] = lambda tag: None) -> None:
        self.chain = chain
        self.checkpoint_root = checkpoint_root  # as EthApi's: "safe"/"finalized" under PoS, None in --dev
        self._filters: dict[str, _Filter] = {}  # least recently polled first
        self._filter_values = 0  # sum of their `values`
        # The latest pending-transaction hashes, shared by every pending filter (each keeps a position
        # in it): a filter costs the same whether it is polled or not.
        self._pending_hashes: deque[bytes] = deque(maxlen=MAX_LOG_RESULTS)
        self._arrivals = 0  # pending hashes ever announced
        self._subscriptions: dict[str, _Subscription] = {}
        self._per_session: dict[Any, tuple[int, int]] = {}  # per WebSocket session: subscriptions, values held
        self._notifier = Notifier(self._drop)
        self._ids = itertools.count(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the tasks that write each WebSocket connection's notifications (notify.py)."""
        await self._notifier.run(task_status=task_status)

    def methods(self) -> dict[str, Any]:
        names = (
            "eth_getLogs eth_newFilter eth_newBlockFilter eth_newPendingTransactionFilter "
            "eth_getFilterChanges eth_getFilterLogs eth_uninstallFilter eth_subscribe eth_unsubscribe"
        ).split()
        return {n: getattr(self, n) for n in names}

    def _new_id(self) -> str:
        # Unguessable ids: one client cannot poll or cancel another's filter.
        return "0x" + os.urandom(16).hex()

    def block_number(self, value: Any, default: int) -> int:
        """The block number a fromBlock/toBlock parameter names (``default`` when absent)."""
        if value is None:
            return default
        kind, *rest = p.block_id(value)
        head = self.chain.head.block_number
        if kind == "tag":
            root = self.checkpoint_root(rest[0]) if rest[0] in ("safe", "finalized") else None
            header = None if root is None else self.chain.header_by_hash(root)
            if header is not None:
                return header.block_number
            return 0 if rest[0] == "earliest" else head
        if kind == "number":
            return rest[0]
        raise InvalidParams("invalid block: a block hash is not allowed here, use blockHash")

    def range_logs(self, criteria: LogFilter, first: int, last: int) -> list[dict[str, Any]]:
        """The canonical logs of blocks ``first``..``last`` matching ``criteria``, within the range and
        result caps."""
        last = min(last, self.chain.head.block_number)
        if last - first > MAX_LOG_RANGE:
            raise RpcError(-32005, f"block range too large (limit {MAX_LOG_RANGE})")
        out: list[dict[str, Any]] = []
        for number in range(first, last + 1):
            header = self.chain.header_by_number(number)
            if header is None or not criteria.may_match_bloom(self.chain.bloom_of(header)):
                continue
            _extend_capped(out, criteria, self.chain.block_by_hash(header.hash))
        return out

    # -- one-shot --

    def eth_getLogs(self, ctx: Any, criteria: Any) -> Any:
        criteria = p.obj(criteria, "filter")
        log_filter = _log_filter(criteria)
        if criteria.get("blockHash") is not None:
            if criteria.get("fromBlock") is not None or criteria.get("toBlock") is not None:
                raise InvalidParams("invalid filter: blockHash excludes fromBlock and toBlock")
            block = self.chain.block_by_hash(p.hash32(criteria["blockHash"], "blockHash"))
            if block is None:
                raise RpcError(SERVER_ERROR, "unknown block")
            out: list[dict[str, Any]] = []
            _extend_capped(out, log_filter, block)  # one block can hold more logs than the cap
            return p.to_json(out)
        head = self.chain.head.block_number
        first = self.block_number(criteria.get("fromBlock"), head)
        last = self.block_number(criteria.get("toBlock"), head)
        if first > last:
            raise InvalidParams("invalid block range: fromBlock is after toBlock")
        return p.to_json(self.range_logs(log_filter, first, last))

    # -- polling filters --

    def expire(self, now: float) -> None:
        for filter_id in [i for i, f in self._filters.items() if now - f.last_poll > FILTER_TIMEOUT_S]:
            self._remove(filter_id)

    def _install(self, flt: _Filter) -> str:
        values = flt.values
        # Bounded memory: the filters polled least recently go until there is room.
        while self._filters and (
            len(self._filters) >= MAX_FILTERS or self._filter_values + values > MAX_FILTER_VALUES
        ):
            self._remove(next(iter(self._filters)))
        filter_id = self._new_id()
        self._filters[filter_id] = flt
        self._filter_values += values
        return filter_id

    def _remove(self, filter_id: str) -> bool:
        flt = self._filters.pop(filter_id, None)
        if flt is None:
            return False
        self._filter_values -= flt.values
        return True

    def eth_newFilter(self, ctx: Any, criteria: Any) -> str:
        criteria = p.obj(criteria, "filter")
        head = self.chain.head.block_number
        first = self.block_number(criteria.get("fromBlock"), head)
        to_block = criteria.get("toBlock")
        flt = _Filter("logs", _log_filter(criteria), from_block=first, next_block=head + 1)
        flt.to_block = None if to_block in (None, "latest", "pending") else self.block_number(to_block, head)
        return self._install(flt)

    def eth_newBlockFilter(self, ctx: Any) -> str:
        return self._install(_Filter("blocks", next_block=self.chain.head.block_number + 1))

    def eth_newPendingTransactionFilter(self, ctx: Any, *_: Any) -> str:
        return self._install(_Filter("pending", next_pending=self._arrivals))

    def on_pending_transaction(self, tx_hash: bytes) -> None:
        self._pending_hashes.append(tx_hash)  # a filter nobody polls misses the oldest beyond MAX_LOG_RESULTS
        self._arrivals += 1

    def _get(self, filter_id: Any) -> _Filter:
        flt = self._filters.get(filter_id) if isinstance(filter_id, str) else None
        if flt is None:
            raise RpcError(SERVER_ERROR, "filter not found")
        flt.last_poll = time.monotonic()
        self._filters[filter_id] = self._filters.pop(filter_id)  # now the most recently polled
        return flt

    def eth_getFilterChanges(self, ctx: Any, filter_id: Any) -> Any:
        flt = self._get(filter_id)
        head = self.chain.head.block_number
        if flt.kind == "pending":
            oldest_kept = self._arrivals - len(self._pending_hashes)
            skip = max(flt.next_pending, oldest_kept) - oldest_kept
            flt.next_pending = self._arrivals
            return p.to_json(list(itertools.islice(self._pending_hashes, skip, None)))
        first, flt.next_block = flt.next_block, head + 1
        if flt.kind == "blocks":
            return p.to_json([self.chain.header_by_number(n).hash for n in range(first, head + 1)])
        last = head if flt.to_block is None else min(head, flt.to_block)
        removed: list[dict[str, Any]] = []
        while flt.removed:  # at most MAX_REMOVED_BLOCKS blocks: not capped like a range
            block = self.chain.block_by_hash(flt.removed.popleft())
            removed.extend(flt.criteria.logs_of(block, removed=True))
        return p.to_json(removed + self.range_logs(flt.criteria, max(first, flt.from_block), last))

    def on_reorg(self, change: HeadChange) -> None:
        """After a head switch, as geth: a block filter's next poll returns the adopted blocks' hashes;
        a log filter's returns the logs it had returned from abandoned blocks, now `removed: true`
        (oldest block first), then the adopted blocks' logs."""
        if not change.abandoned:
            return
        fork = change.ancestor.block_number + 1
        for flt in self._filters.values():
            if flt.kind == "logs":
                flt.removed.extend(b.hash for b in change.abandoned if b.number < flt.next_block and flt.covers(b.number))
            if flt.kind != "pending":
                flt.next_block = min(flt.next_block, fork)

    def eth_getFilterLogs(self, ctx: Any, filter_id: Any) -> Any:
        flt = self._get(filter_id)
        if flt.kind != "logs":
            raise RpcError(SERVER_ERROR, "filter not found")
        head = self.chain.head.block_number
        last = head if flt.to_block is None else min(head, flt.to_block)
        return p.to_json(self.range_logs(flt.criteria, flt.from_block, last))

    def eth_uninstallFilter(self, ctx: Any, filter_id: Any) -> bool:
        return self._remove(filter_id) if isinstance(filter_id, str) else False

    # -- subscriptions (WebSocket only) --

    def eth_subscribe(self, session: Any, kind: Any, criteria: Any = None) -> str:
        if session is None or not getattr(session, "is_websocket", False):
            raise RpcError(-32601, "notifications not supported")
        if kind == "newHeads":
            log_filter = LogFilter()
        elif kind == "logs":
            log_filter = _log_filter(p.obj(criteria or {}, "logs filter"))
        elif kind == "newPendingTransactions":
            log_filter = LogFilter()
        else:
            raise InvalidParams(f"no such subscription: {kind!r}")
        count, held = self._per_session.get(session, (0, 0))
        if count >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise RpcError(SERVER_ERROR, f"too many subscriptions (limit {MAX_SUBSCRIPTIONS_PER_CONNECTION} per connection)")
        values = _values_of(log_filter)
        if held + values > MAX_FILTER_VALUES:
            raise RpcError(SERVER_ERROR, f"subscriptions of this connection would hold more than {MAX_FILTER_VALUES} "
                                         "addresses and topics")
        if session not in self._per_session:  # once per session, however often it resubscribes
            session.on_close(lambda: self._forget(session))
        self._per_session[session] = (count + 1, held + values)
        sub_id = self._new_id()
        self._subscriptions[sub_id] = _Subscription(session, kind, log_filter)
        return sub_id

    def eth_unsubscribe(self, session: Any, sub_id: Any) -> bool:
        sub = self._subscriptions.get(sub_id) if isinstance(sub_id, str) else None
        if sub is None or sub.session is not session:
            return False
        del self._subscriptions[sub_id]
        count, held = self._per_session[session]
        self._per_session[session] = (count - 1, held - _values_of(sub.criteria))
        return True

    def _forget(self, session: Any) -> int:
        """Drop a session's subscriptions and its notification queue; returns how many it had."""
        dropped = [i for i, sub in self._subscriptions.items() if sub.session is session]
        for sub_id in dropped:
            del self._subscriptions[sub_id]
        self._per_session.pop(session, None)
        self._notifier.forget(session)
        return len(dropped)

    def _notifications(self, abandoned: tuple[StoredBlock, ...], adopted: tuple[StoredBlock, ...]) -> list[tuple[Any, bytes]]:
        """Per subscription: the abandoned blocks' logs as `removed: true`, then the adopted blocks'
        logs; each adopted block's header for newHeads (on a reorganization, every one: as geth)."""
        out = []
        heads = None
        for sub_id, sub in list(self._subscriptions.items()):
            if sub.kind == "newHeads":
                if heads is None:
                    heads = [p.to_json(block.header_json()) for block in adopted]
                results = heads
            elif sub.kind == "logs":
                results = [p.to_json(e) for block in abandoned for e in sub.criteria.logs_of(block, removed=True)]
                results += [p.to_json(e) for block in adopted for e in sub.criteria.logs_of(block)]
            else:
                continue
            for result in results:
                message = {"jsonrpc": "2.0", "method": "eth_subscription", "params": {"subscription": sub_id, "result": result}}
                out.append((sub.session, json.dumps(message, separators=(",", ":")).encode()))
        return out

    async def publish_block(self, block: StoredBlock) -> None:
        await self._notifier.send_all(self._notifications((), (block,)), block=True)

    async def publish_reorg(self, change: HeadChange) -> None:
        """Tell subscribers about a head switch in one batch per connection (a reorganization is one
        step for a client's queue, however many blocks it moves)."""
        await self._notifier.send_all(self._notifications(change.abandoned, change.adopted), block=True)

    async def publish_pending(self, tx_hashes: list[bytes]) -> None:
        messages = []
        for sub_id, sub in list(self._subscriptions.items()):
            if sub.kind != "newPendingTransactions":
                continue
            for tx_hash in tx_hashes:
                message = {"jsonrpc": "2.0", "method": "eth_subscription", "params": {"subscription": sub_id, "result": "0x" + tx_hash.hex()}}
                messages.append((sub.session, json.dumps(message, separators=(",", ":")).encode()))
        await self._notifier.send_all(messages, block=False)

    def _drop(self, session: Any, failure: str) -> None:
        """The notifier gave up on a session: cancel its subscriptions."""
        dropped = self._forget(session)
        if dropped:  # a connection that closed normally has already lost its subscriptions
            _log.warning("cancelled %d subscription(s) of a WebSocket client that %s", dropped, failure)
