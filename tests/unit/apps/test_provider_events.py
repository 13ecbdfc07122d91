"""The provider's event loop in process: which Task event starts which work (no node, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ogpu_node.apps.provider import Provider, ProviderConfig
from ogpu_node.apps.provider.chain import Event
from ogpu_node.crypto import derive_dev_accounts

ME = derive_dev_accounts(2)[1]
OTHER = "0x" + "ab" * 20


@pytest.fixture
def provider(tmp_path, monkeypatch):
    app = Provider(ProviderConfig(rpc_url="http://127.0.0.1:9", private_key=ME.private_key, datadir=tmp_path))
    app.spawned = []
    monkeypatch.setattr(app, "_spawn", lambda name, target, *args: app.spawned.append((target.__name__, args)))
    yield app
    app.close()


def event(name: str, block: int = 1, **args) -> Event:
    return Event(name, args, block, 0)


class FakeJob:
    def __init__(self, exact: bool) -> None:
        self.ctx = SimpleNamespace(exact=exact)
        self.revealed: list[int] = []
        self.stopped = False

    def reveal(self, k: int) -> None:
        self.revealed.append(k)

    def stop(self) -> None:
        self.stopped = True


def test_a_batch_task_of_another_client_is_considered(provider):
    provider.handle(event("TaskSubmitted", taskId=1, client=OTHER, kind=0, prescriptionHash=b"\x01" * 32))
    provider.handle(event("TaskSubmitted", taskId=2, client=provider.chain.address, kind=0, prescriptionHash=b"\x02" * 32))
    provider.handle(event("TaskSubmitted", taskId=3, client=OTHER, kind=1, prescriptionHash=b"\x03" * 32))
    assert provider.spawned == [("consider", (1, b"\x01" * 32))]


def test_an_auction_won_starts_the_executor_and_moves_the_margin(provider):
    provider.bids = {5: 100, 6: 100}
    margin = provider.strategy.margin
    provider.handle(event("TaskAssigned", taskId=5, executor=provider.chain.address, price=100, seed=b"\x00" * 32))
    assert provider.strategy.margin > margin and 5 not in provider.bids
    assert [name for name, _ in provider.spawned] == ["execute"]
    provider.handle(event("TaskAssigned", taskId=6, executor=OTHER, price=90, seed=b"\x00" * 32))
    assert [name for name, _ in provider.spawned] == ["execute"]  # lost: nothing to run
    assert provider.strategy.win_rate == 0.5


def test_a_council_seat_is_served_and_the_executor_reveals_in_its_order(provider):
    provider.handle(event("CouncilDrawn", taskId=7, k=2, round=1, members=[OTHER, provider.chain.address],
                          commitDeadline=0, stepIndex=99))
    assert provider.spawned == [("serve", (7, 2, 1, 99))]
    exact, allclose = FakeJob(exact=True), FakeJob(exact=False)
    provider.jobs = {8: exact, 9: allclose}
    for task in (8, 9):
        provider.handle(event("CouncilDrawn", taskId=task, k=1, round=0, members=[OTHER], commitDeadline=0, stepIndex=1))
        provider.handle(event("RevealPhase", taskId=task, k=1, round=0, revealDeadline=0))
    assert exact.revealed == [1] and allclose.revealed == [1]  # exact: at the reveal phase; allclose: at the draw


def test_an_ended_task_stops_its_job_and_forgets_its_files(provider, tmp_path):
    job = FakeJob(exact=True)
    provider.jobs = {4: job}
    (tmp_path / "tasks" / "4").mkdir(parents=True)
    (tmp_path / "votes").mkdir()
    (tmp_path / "votes" / "4-1-0.json").write_text("{}")
    (tmp_path / "votes" / "40-1-0.json").write_text("{}")
    provider.handle(event("TaskCancelled", taskId=4, reason=4, refund=1))
    assert 4 in provider.ended and 4 not in provider.jobs
    assert not (tmp_path / "tasks" / "4").exists()
    assert sorted(p.name for p in (tmp_path / "votes").iterdir()) == ["40-1-0.json"]


def test_a_bad_event_is_logged_and_the_loop_goes_on(provider, monkeypatch, caplog):
    events = [event("TaskSubmitted", block=3, taskId=1), event("TaskSubmitted", block=4, taskId=2, client=OTHER,
                                                                kind=0, prescriptionHash=b"\x02" * 32)]
    monkeypatch.setattr(provider.chain, "task_events", lambda first, last: events)
    provider.last_block = 2
    provider.follow(4)
    assert provider.last_block == 4
    assert provider.spawned == [("consider", (2, b"\x02" * 32))]
    assert "event TaskSubmitted at block 3" in caplog.text
