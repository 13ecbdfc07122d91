"""`persist`: the provider's retry rule for protocol steps (until the chain's deadline, or until the
chain shows the step done), on trio's autojump clock: the backoff's sleeps take no real time."""

from __future__ import annotations

import pytest
import trio

from ogpu_node.apps.client import ClientError, NodeUnreachable, NotMined, Reverted
from ogpu_node.apps.provider.retry import MAX_RETRY_DELAY_S, persist


class FakeChain:
    """A chain clock that advances one second per query."""

    def __init__(self, now: int = 100) -> None:
        self.now = now

    async def timestamp(self) -> int:
        self.now += 1
        return self.now


def flaky(failures: int, error: ClientError | None = None):
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(trio.current_time())
        if len(calls) <= failures:
            raise error or NodeUnreachable("cannot reach the node at http://x")
        return "receipt"

    return attempt, calls


def at(value: int):
    async def deadline() -> int:
        return value

    return deadline


async def test_retries_a_transient_failure_until_it_succeeds(autojump_clock):
    attempt, calls = flaky(3)
    assert await persist("commit", attempt, now=FakeChain().timestamp, deadline=at(1_000)) == "receipt"
    assert len(calls) == 4
    assert [round(b - a) for a, b in zip(calls, calls[1:], strict=False)] == [1, 2, 4]  # backoff


async def test_the_backoff_stops_growing(autojump_clock):
    attempt, calls = flaky(6)
    await persist("commit", attempt, now=FakeChain().timestamp, deadline=at(1_000))
    assert max(b - a for a, b in zip(calls, calls[1:], strict=False)) == pytest.approx(MAX_RETRY_DELAY_S)


async def test_gives_up_once_the_chain_passes_the_deadline(autojump_clock):
    attempt, calls = flaky(100)
    with pytest.raises(ClientError, match="cannot reach"):
        await persist("commit", attempt, now=FakeChain(now=100).timestamp, deadline=at(105))
    assert 1 < len(calls) < 10


async def test_a_step_the_chain_already_shows_is_done(autojump_clock):
    attempt, calls = flaky(100, NotMined("commitCheckpoint: not mined within 60s"))

    async def done() -> bool:
        return len(calls) >= 2

    assert await persist("commit", attempt, now=FakeChain().timestamp, deadline=at(1_000), done=done) is None
    assert len(calls) == 2


async def test_a_revert_is_done_only_when_the_chain_shows_the_step(autojump_clock):
    """The revert's text is not read: "already revealed" with nothing on chain is retried to the deadline."""
    attempt, calls = flaky(100, Reverted("revealCheckpoint", "Task: checkpoint already revealed"))

    async def not_done() -> bool:
        return False

    with pytest.raises(Reverted):
        await persist("reveal", attempt, now=FakeChain(now=100).timestamp, deadline=at(105), done=not_done)
    assert 1 < len(calls) < 10


async def test_an_unreachable_node_does_not_count_as_past_the_deadline(autojump_clock):
    async def down() -> int:
        raise NodeUnreachable("cannot reach the node")

    async def done() -> bool:
        raise NodeUnreachable("cannot reach the node")

    attempt, calls = flaky(5)
    assert await persist("commit", attempt, now=down, deadline=at(0), done=done) == "receipt"
    assert len(calls) == 6
