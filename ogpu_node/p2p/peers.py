"""What the node remembers about each peer: its score, its rate limits, its bans (docs/network.md,
"Peer scoring"). Sans-IO: the host calls in with the peer's id and `now`, monotonic seconds, and acts on
the answers (drops a message, disconnects and blacklists a peer); nothing here reads a clock or a socket.

A peer id is any hashable value (the host passes libp2p's `ID`). Times may arrive slightly out of order
from concurrent tasks: an earlier `now` than one already seen counts as no time elapsed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

from ogpu_node.p2p.limits import (
    BAN_THRESHOLD,
    FIRST_BAN,
    MAX_BAN,
    MAX_BAN_RECORDS,
    MAX_SCORE,
    MAX_TRACKED_PEERS,
    RATES,
    SCORE_KEPT_PER_MINUTE,
    SCORE_PENALTY,
    USEFUL_MESSAGE_SCORE,
    MessageKind,
    PeerOffence,
)

Peer = Hashable

# Doublings beyond this already exceed MAX_BAN; the bound keeps 2**n from overflowing a float.
_MAX_DOUBLINGS = math.ceil(math.log2(MAX_BAN / FIRST_BAN))


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class _PeerState:
    __slots__ = ("score", "at", "buckets")

    def __init__(self, at: float) -> None:
        self.score = 0.0
        self.at = at  # when `score` was last brought up to date
        self.buckets: dict[MessageKind, _Bucket] = {}

    def decayed(self, now: float) -> float:
        minutes = max(0.0, now - self.at) / 60.0
        return self.score * SCORE_KEPT_PER_MINUTE ** minutes

    def set_score(self, value: float, now: float) -> None:
        self.score = value
        self.at = max(self.at, now)


class _Ban:
    __slots__ = ("count", "until")

    def __init__(self, count: int, until: float) -> None:
        self.count = count
        self.until = until


def ban_duration(count: int) -> float:
    """How long a peer's `count`-th ban lasts (1-based): FIRST_BAN, doubling each time, capped at MAX_BAN."""
    if count < 1:
        raise ValueError(f"ban count must be at least 1, got {count}")
    return min(FIRST_BAN * 2 ** min(count - 1, _MAX_DOUBLINGS), MAX_BAN)


def _check_time(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")


class PeerBook:
    """Scores, token buckets and bans of peers, bounded in memory whatever peer ids arrive.

    Scores and buckets are kept for at most `max_peers` peers (the least recently seen dropped first),
    ban records for at most `max_bans` (the least recently banned dropped first). A banned peer's
    messages are refused (`allow` is False) and its offences and useful messages are not counted.
    """

    def __init__(self, *, max_peers: int = MAX_TRACKED_PEERS, max_bans: int = MAX_BAN_RECORDS) -> None:
        if max_peers < 1 or max_bans < 1:
            raise ValueError(f"max_peers and max_bans must be positive, got {max_peers}, {max_bans}")
        self._max_peers = max_peers
        self._max_bans = max_bans
        self._peers: OrderedDict[Peer, _PeerState] = OrderedDict()
        self._bans: OrderedDict[Peer, _Ban] = OrderedDict()

    @property
    def tracked_peers(self) -> int:
        """Peers whose score or buckets are held."""
        return len(self._peers)

    @property
    def ban_records(self) -> int:
        """Peers whose ban history is held, banned now or before."""
        return len(self._bans)

    def score(self, peer: Peer, now: float) -> float:
        """The peer's score at `now`, decayed toward 0; 0 for a peer not tracked."""
        _check_time(now)
        state = self._peers.get(peer)
        return 0.0 if state is None else state.decayed(now)

    def reward(self, peer: Peer, now: float) -> None:
        """A useful message from the peer (first delivery of a valid one): +0.1, up to MAX_SCORE."""
        _check_time(now)
        if self._banned(peer, now):
            return
        state = self._touch(peer, now)
        state.set_score(min(MAX_SCORE, state.decayed(now) + USEFUL_MESSAGE_SCORE), now)

    def penalize(self, peer: Peer, offence: PeerOffence, now: float) -> bool:
        """Score an offence. True when the peer fell below BAN_THRESHOLD: it is now banned (its score
        and buckets dropped) and the host must disconnect it. False otherwise, and for a peer already
        banned, so the host acts once per ban."""
        if not isinstance(offence, PeerOffence):
            raise TypeError(f"offence must be a PeerOffence, got {offence!r}")
        _check_time(now)
        if self._banned(peer, now):
            return False
        state = self._touch(peer, now)
        state.set_score(state.decayed(now) + SCORE_PENALTY[offence], now)
        if state.score >= BAN_THRESHOLD:
            return False
        self.ban(peer, now)
        return True

    def allow(self, peer: Peer, kind: MessageKind, now: float) -> bool:
        """Take one token from the peer's bucket for `kind` (RATES). False when it is empty (the message
        is over the peer's rate: drop it unread and penalize OVER_RATE) or the peer is banned."""
        if not isinstance(kind, MessageKind):
            raise TypeError(f"kind must be a MessageKind, got {kind!r}")
        _check_time(now)
        if self._banned(peer, now):
            return False
        rate = RATES[kind]
        state = self._touch(peer, now)
        bucket = state.buckets.get(kind)
        if bucket is None:
            bucket = state.buckets[kind] = _Bucket(float(rate.burst), now)
        elapsed = max(0.0, now - bucket.at)
        tokens = min(float(rate.burst), bucket.tokens + rate.per_second * elapsed)
        bucket.at = max(bucket.at, now)
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return True
        bucket.tokens = tokens
        return False

    def ban(self, peer: Peer, now: float) -> float:
        """Ban the peer from `now` and drop its score and buckets; returns the ban's length in seconds
        (FIRST_BAN, doubled for each earlier ban of this peer still on record, up to MAX_BAN)."""
        _check_time(now)
        self._peers.pop(peer, None)
        previous = self._bans.pop(peer, None)
        count = 1 if previous is None else previous.count + 1
        duration = ban_duration(count)
        self._bans[peer] = _Ban(count, now + duration)
        while len(self._bans) > self._max_bans:
            self._bans.popitem(last=False)
        return duration

    def is_banned(self, peer: Peer, now: float) -> bool:
        """Whether the peer is banned at `now`: refuse its connections and drop its messages."""
        _check_time(now)
        return self._banned(peer, now)

    def ban_remaining(self, peer: Peer, now: float) -> float:
        """Seconds until the peer's ban ends; 0 when it is not banned."""
        _check_time(now)
        record = self._bans.get(peer)
        return 0.0 if record is None else max(0.0, record.until - now)

    def forget(self, peer: Peer) -> None:
        """The peer disconnected: drop its score and buckets. Its ban record stays."""
        self._peers.pop(peer, None)

    def _banned(self, peer: Peer, now: float) -> bool:
        record = self._bans.get(peer)
        return record is not None and now < record.until

    def _touch(self, peer: Peer, now: float) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(now)
            while len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return state
