"""`persist`: the provider's retry rule for protocol steps (until the chain's deadline, or until the
chain shows the step done)."""

from __future__ import annotations

import pytest

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider import jobs
from ogpu_node.apps.provider.jobs import persist


class FakeChain:
    """A chain clock that advances one second per query."""

    def __init__(self, now: int = 100) -> None:
        self.now = now

    def timestamp(self) -> int:
        self.now += 1
        return self.now


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(jobs.time, "sleep", lambda _s: None)


def flaky(failures: int, error: str = "cannot reach the node at http://x"):
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= failures:
            raise ClientError(error)
        return "receipt"

    return attempt, calls


def test_retries_a_transient_failure_until_it_succeeds():
    attempt, calls = flaky(3)
    assert persist(FakeChain(), "commit", attempt, deadline=lambda: 1_000) == "receipt"
    assert len(calls) == 4


def test_gives_up_once_the_chain_passes_the_deadline():
    attempt, calls = flaky(100)
    with pytest.raises(ClientError, match="cannot reach"):
        persist(FakeChain(now=100), "commit", attempt, deadline=lambda: 105)
    assert 1 < len(calls) < 10


def test_a_step_the_chain_already_shows_is_done():
    attempt, calls = flaky(100, "commitCheckpoint: not mined within 60s")
    assert persist(FakeChain(), "commit", attempt, deadline=lambda: 1_000, done=lambda: len(calls) >= 2) is None
    assert len(calls) == 2


def test_a_revert_saying_already_is_done():
    attempt, calls = flaky(100, "revealCheckpoint: reverted: Task: checkpoint already revealed")
    assert persist(FakeChain(), "reveal", attempt, deadline=lambda: 1_000) is None
    assert len(calls) == 1


def test_an_unreachable_node_does_not_count_as_past_the_deadline():
    class Down(FakeChain):
        def timestamp(self) -> int:
            raise ClientError("cannot reach the node")

    attempt, calls = flaky(5)
    assert persist(Down(), "commit", attempt, deadline=lambda: 0) == "receipt"
    assert len(calls) == 6
