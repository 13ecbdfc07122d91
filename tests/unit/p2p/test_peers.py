"""Peer scoring, rate limits and bans (docs/network.md, "Peer scoring"), each rule at explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ogpu_node.p2p.limits import (
    BAN_THRESHOLD,
    BLOB_CHUNK,
    FIRST_BAN,
    MAX_BAN,
    MAX_BAN_RECORDS,
    MAX_SCORE,
    MAX_TRACKED_PEERS,
    RATES,
    SCORE_PENALTY,
    TOPIC_KIND,
    TOPIC_MAX_BYTES,
    TOPICS,
    MessageKind,
    PeerOffence,
)
from ogpu_node.p2p.peers import PeerBook, ban_duration
from ogpu_node.types.merkle import CHUNK_SIZE

MINUTE = 60.0
BLOCK = MessageKind.BLOCK


def test_limits_cover_every_topic_kind_and_offence():
    assert set(TOPIC_MAX_BYTES) == set(TOPIC_KIND) == set(TOPICS)
    assert set(RATES) == set(MessageKind)
    assert set(SCORE_PENALTY) == set(PeerOffence)
    assert BLOB_CHUNK == CHUNK_SIZE == 256 * 1024


def test_rule_score_starts_at_zero():
    assert PeerBook().score("a", 0.0) == 0.0


def test_rule_score_decays_ten_percent_a_minute():
    book = PeerBook()
    book.penalize("a", PeerOffence.INVALID, 100.0)
    assert book.score("a", 100.0) == -20.0
    assert book.score("a", 100.0 + MINUTE) == pytest.approx(-18.0)
    assert book.score("a", 100.0 + 2 * MINUTE) == pytest.approx(-16.2)
    assert book.score("a", 100.0 + MINUTE / 2) == pytest.approx(-20.0 * 0.9 ** 0.5)
    assert book.score("a", 100.0 + 60 * MINUTE) == pytest.approx(-20.0 * 0.9 ** 60)


def test_rule_each_offence_scores_its_penalty():
    book = PeerBook()
    book.penalize("invalid", PeerOffence.INVALID, 0.0)
    book.penalize("rate", PeerOffence.OVER_RATE, 0.0)
    book.penalize("response", PeerOffence.BAD_RESPONSE, 0.0)
    assert [book.score(p, 0.0) for p in ("invalid", "rate", "response")] == [-20.0, -5.0, -10.0]


@pytest.mark.parametrize("offence", [PeerOffence.OVERSIZED, PeerOffence.UNDECODABLE])
def test_rule_oversized_or_undecodable_bans_a_fresh_peer_at_once(offence):
    book = PeerBook()
    assert book.penalize("a", offence, 0.0) is True
    assert book.is_banned("a", 0.0)


def test_rule_useful_messages_add_a_tenth_up_to_twenty():
    book = PeerBook()
    book.reward("a", 0.0)
    assert book.score("a", 0.0) == pytest.approx(0.1)
    for _ in range(300):
        book.reward("a", 0.0)
    assert book.score("a", 0.0) == MAX_SCORE == 20.0
    assert book.score("a", MINUTE) == pytest.approx(18.0)  # a positive score decays too
    book.reward("a", MINUTE)
    assert book.score("a", MINUTE) == pytest.approx(18.1)


def test_rule_rewards_lift_a_negative_score():
    book = PeerBook()
    book.penalize("a", PeerOffence.OVER_RATE, 0.0)
    for _ in range(10):
        book.reward("a", 0.0)
    assert book.score("a", 0.0) == pytest.approx(-4.0)


def test_rule_crossing_the_threshold_returns_true_once_and_bans():
    book = PeerBook()
    assert book.penalize("a", PeerOffence.INVALID, 0.0) is False
    assert book.penalize("a", PeerOffence.INVALID, 0.0) is False
    assert book.penalize("a", PeerOffence.BAD_RESPONSE, 0.0) is False
    assert book.score("a", 0.0) == BAN_THRESHOLD  # at the threshold is not below it
    assert not book.is_banned("a", 0.0)
    assert book.penalize("a", PeerOffence.OVER_RATE, 0.0) is True
    assert book.is_banned("a", 0.0)
    assert book.ban_remaining("a", 0.0) == FIRST_BAN
    assert book.penalize("a", PeerOffence.OVERSIZED, 1.0) is False  # already banned: act once
    assert book.ban_remaining("a", 1.0) == FIRST_BAN - 1.0  # and the ban is not extended


def test_rule_decay_lets_a_peer_recover_before_the_threshold():
    book = PeerBook()
    book.penalize("a", PeerOffence.INVALID, 0.0)
    book.penalize("a", PeerOffence.INVALID, 0.0)
    assert book.penalize("a", PeerOffence.INVALID, 10 * MINUTE) is False  # -40 decayed to ~-14
    assert book.score("a", 10 * MINUTE) == pytest.approx(-40 * 0.9 ** 10 - 20)


def test_rule_a_banned_peer_is_refused_and_not_scored():
    book = PeerBook()
    book.allow("a", BLOCK, 0.0)
    book.penalize("a", PeerOffence.OVERSIZED, 0.0)
    assert book.allow("a", BLOCK, 1.0) is False
    book.reward("a", 1.0)
    assert book.score("a", 1.0) == 0.0
    assert book.tracked_peers == 0  # the ban dropped its score and buckets


def test_rule_bans_expire():
    book = PeerBook()
    book.penalize("a", PeerOffence.OVERSIZED, 1000.0)
    assert book.is_banned("a", 1000.0 + FIRST_BAN - 0.001)
    assert book.ban_remaining("a", 1000.0 + 1) > book.ban_remaining("a", 1000.0 + 2) > 0.0
    assert not book.is_banned("a", 1000.0 + FIRST_BAN)
    assert book.ban_remaining("a", 1000.0 + FIRST_BAN + 5) == 0.0
    assert book.allow("a", BLOCK, 1000.0 + FIRST_BAN) is True
    assert book.score("a", 1000.0 + FIRST_BAN) == 0.0  # back with a clean score


def test_rule_ban_doubles_on_each_repeat_up_to_a_day():
    book = PeerBook()
    now, lengths = 0.0, []
    for _ in range(10):
        assert book.penalize("a", PeerOffence.OVERSIZED, now) is True
        lengths.append(book.ban_remaining("a", now))
        now += lengths[-1]
        assert not book.is_banned("a", now)
    assert lengths == [600.0, 1200.0, 2400.0, 4800.0, 9600.0, 19200.0, 38400.0, 76800.0, 86400.0, 86400.0]
    assert MAX_BAN == 86400.0
    assert book.ban("b", 0.0) == FIRST_BAN  # another peer starts at the first length
    assert ban_duration(10_000) == MAX_BAN


def test_rule_forget_drops_score_and_buckets_but_keeps_the_ban():
    book = PeerBook()
    book.penalize("a", PeerOffence.INVALID, 0.0)
    for _ in range(16):
        book.allow("a", BLOCK, 0.0)
    assert book.allow("a", BLOCK, 0.0) is False
    book.forget("a")
    assert book.score("a", 0.0) == 0.0
    assert book.allow("a", BLOCK, 0.0) is True  # a fresh, full bucket
    book.penalize("a", PeerOffence.OVERSIZED, 0.0)
    book.forget("a")
    assert book.is_banned("a", 1.0)
    assert book.penalize("a", PeerOffence.OVERSIZED, FIRST_BAN) is True
    assert book.ban_remaining("a", FIRST_BAN) == 2 * FIRST_BAN  # the history survived


def test_rule_token_bucket_allows_the_burst_then_refills_at_the_rate():
    book = PeerBook()
    assert [book.allow("a", BLOCK, 0.0) for _ in range(17)] == [True] * 16 + [False]
    assert book.allow("a", BLOCK, 0.2) is False  # 0.8 of a token at 4/s
    assert book.allow("a", BLOCK, 0.25) is True
    assert book.allow("a", BLOCK, 0.25) is False
    allowed = sum(book.allow("a", BLOCK, 0.25 + i / 100) for i in range(1, 101))  # one second more
    assert allowed == 4
    # A long quiet spell refills up to the burst, never past it.
    assert [book.allow("a", BLOCK, 1000.0) for _ in range(17)] == [True] * 16 + [False]


def test_rule_each_kind_and_each_peer_has_its_own_bucket():
    book = PeerBook()
    for _ in range(16):
        book.allow("a", BLOCK, 0.0)
    assert book.allow("a", BLOCK, 0.0) is False
    assert book.allow("b", BLOCK, 0.0) is True
    for kind in MessageKind:
        if kind is not BLOCK:
            assert sum(book.allow("a", kind, 0.0) for _ in range(RATES[kind].burst + 1)) == RATES[kind].burst


@settings(max_examples=50, deadline=None)
@given(kind=st.sampled_from(list(MessageKind)),
       gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300))
def test_rule_no_peer_gets_more_than_burst_plus_rate_times_span(kind, gaps):
    book, now, allowed = PeerBook(), 0.0, 0
    for gap in gaps:
        now += gap
        allowed += book.allow("a", kind, now)
    rate = RATES[kind]
    assert allowed <= rate.burst + rate.per_second * now + 1e-9


def test_time_going_back_counts_as_no_time():
    book = PeerBook()
    for _ in range(16):
        book.allow("a", BLOCK, 10.0)
    assert book.allow("a", BLOCK, 5.0) is False
    assert book.allow("a", BLOCK, 10.25) is True  # refilled from 10.0, not from 5.0
    book.penalize("b", PeerOffence.INVALID, 100.0)
    assert book.score("b", 40.0) == -20.0


def test_memory_is_bounded_under_100k_peer_ids():
    book = PeerBook()
    for i in range(100_000):
        book.allow(i, BLOCK, i / 1000)
        if i % 100 == 0:
            book.reward("honest", i / 1000)  # a connected peer, seen all along
    assert book.tracked_peers == MAX_TRACKED_PEERS
    assert book.score("honest", 100.0) > 0.0
    assert book.score(0, 100.0) == 0.0  # the least recently seen went first
    for i in range(100_000):
        assert book.penalize(i, PeerOffence.OVERSIZED, 100.0 + i / 1000) is True
    assert book.ban_records == MAX_BAN_RECORDS
    assert book.is_banned(99_999, 200.0)
    assert not book.is_banned(0, 200.0)  # the least recently banned went first
    assert book.tracked_peers <= MAX_TRACKED_PEERS


def test_small_caps_evict_in_order():
    book = PeerBook(max_peers=2, max_bans=2)
    book.reward("a", 0.0)
    book.reward("b", 0.0)
    book.reward("a", 1.0)  # seen again: "b" is now the oldest
    book.reward("c", 2.0)
    assert book.score("b", 2.0) == 0.0 and book.score("a", 2.0) > 0.0 and book.score("c", 2.0) > 0.0
    for peer in ("x", "y", "z"):
        book.ban(peer, 0.0)
    assert [book.is_banned(p, 1.0) for p in ("x", "y", "z")] == [False, True, True]


def test_bad_input_is_refused_and_changes_nothing():
    book = PeerBook()
    with pytest.raises(TypeError):
        book.allow("a", "block", 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        book.penalize("a", "invalid", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        book.penalize("a", PeerOffence.INVALID, float("nan"))
    with pytest.raises(ValueError):
        book.reward("a", float("inf"))
    assert book.tracked_peers == 0 and book.ban_records == 0
    with pytest.raises(ValueError):
        ban_duration(0)
    with pytest.raises(ValueError):
        PeerBook(max_peers=0)
