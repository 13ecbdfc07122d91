"""The provider's datadir (votes and checkpoints kept across a restart, deleted once a task ends)
and the scopes that let the service cancel one task's work."""

from __future__ import annotations

import trio

from ogpu_node.apps.provider.concurrency import Scopes, blocking
from ogpu_node.apps.provider.store import ProviderFiles, Vote


def test_a_vote_and_a_checkpoint_survive_a_restart(tmp_path):
    files = ProviderFiles(tmp_path)
    vote = Vote(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    files.save_vote(4, 1, 0, vote)
    files.save_checkpoint(4, 1, b"ckpt")
    again = ProviderFiles(tmp_path)
    assert again.load_vote(4, 1, 0) == vote and again.load_checkpoint(4, 1) == b"ckpt"
    assert again.load_vote(4, 1, 1) is None and again.load_checkpoint(4, 2) is None
    assert files.vote_path(4, 1, 0) == tmp_path / "votes" / "4-1-0.json"
    assert files.checkpoint_path(4, 1) == tmp_path / "tasks" / "4" / "ckpt-1.safetensors"


def test_a_damaged_vote_reads_as_none(tmp_path):
    files = ProviderFiles(tmp_path)
    files.vote_path(1, 1, 0).parent.mkdir(parents=True)
    files.vote_path(1, 1, 0).write_text('{"result": "zz"}')
    assert files.load_vote(1, 1, 0) is None


def test_an_ended_task_forgets_its_files_and_only_its_own(tmp_path):
    files = ProviderFiles(tmp_path)
    files.save_checkpoint(4, 1, b"a")
    files.save_checkpoint(40, 1, b"b")
    for task in (4, 40):
        files.save_vote(task, 1, 0, Vote(b"\x00" * 32, b"\x00" * 32, b"\x00" * 32))
    files.forget(4)
    assert not (tmp_path / "tasks" / "4").exists() and files.load_checkpoint(40, 1) == b"b"
    assert sorted(p.name for p in (tmp_path / "votes").iterdir()) == ["40-1-0.json"]
    files.forget(5)  # nothing kept: nothing to do


async def test_cancelling_a_key_ends_all_its_work_and_only_it():
    scopes = Scopes()
    ended: list[str] = []

    async def work(key: tuple, name: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with scopes.open(key):
            task_status.started()
            await trio.sleep_forever()
        ended.append(name)

    async with trio.open_nursery() as nursery:
        await nursery.start(work, ("exec", 1), "train")
        await nursery.start(work, ("exec", 1), "commit")
        await nursery.start(work, ("seat", 1), "seat")
        assert scopes.cancel(("exec", 1)) == 2
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(ended) == ["commit", "train"] and scopes.count(("seat", 1)) == 1
        assert scopes.cancel(("exec", 1)) == 0
        scopes.cancel(("seat", 1))
    assert sorted(ended) == ["commit", "seat", "train"] and scopes.count(("seat", 1)) == 0


async def test_blocking_work_runs_beside_the_loop():
    assert await blocking(sum, [1, 2, 3]) == 6
    assert await blocking(int, "ff", base=16) == 255
