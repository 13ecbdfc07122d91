"""A provider's files in its datadir, so that a provider killed at any moment and started again
picks up what it owes (docs/tasks.md, "Restart"):

- ``tasks/<id>/ckpt-<k>.safetensors``: the checkpoints it trained as executor;
- ``votes/<task>-<k>-<round>.json``: a council vote, written before its commitment is sent;
- ``votes/<task>-<k>-<round>.result`` and ``.state``: under allclose, the result and state it
  committed to, published after the commit window (a re-run could differ in its last bits).

Every file is written whole (`files.atomic_write`); files of ended tasks are deleted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ogpu_node.files import atomic_write
from ogpu_node.jsontext import loads_bounded

MAX_VOTE_BYTES = 4096  # a vote file is three hex hashes, about 220 bytes


@dataclass(frozen=True)
class Vote:
    """What a council member commits to: H(its result), H(state at the drawn step), the salt."""

    result: bytes
    step: bytes
    salt: bytes


class ProviderFiles:
    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir

    def checkpoint_path(self, task_id: int, k: int) -> Path:
        return self.datadir / "tasks" / str(task_id) / f"ckpt-{k}.safetensors"

    def save_checkpoint(self, task_id: int, k: int, data: bytes) -> None:
        atomic_write(self.checkpoint_path(task_id, k), data)

    def load_checkpoint(self, task_id: int, k: int) -> bytes | None:
        try:
            return self.checkpoint_path(task_id, k).read_bytes()
        except OSError:
            return None

    def vote_path(self, task_id: int, k: int, round_: int) -> Path:
        return self.datadir / "votes" / f"{task_id}-{k}-{round_}.json"

    def save_vote(self, task_id: int, k: int, round_: int, vote: Vote) -> None:
        doc = {"result": vote.result.hex(), "step": vote.step.hex(), "salt": vote.salt.hex()}
        atomic_write(self.vote_path(task_id, k, round_), json.dumps(doc).encode())

    def load_vote(self, task_id: int, k: int, round_: int) -> Vote | None:
        """The vote saved for this seat; None when there is none or the file is not one (a damaged
        file is read no further than MAX_VOTE_BYTES and parsed only within jsontext's bounds)."""
        try:
            with open(self.vote_path(task_id, k, round_), "rb") as f:
                doc = loads_bounded(f.read(MAX_VOTE_BYTES + 1), max_bytes=MAX_VOTE_BYTES)
            return Vote(bytes.fromhex(doc["result"]), bytes.fromhex(doc["step"]), bytes.fromhex(doc["salt"]))
        except (OSError, ValueError, KeyError, TypeError):  # JsonBoundsError is a ValueError
            return None

    def save_committed(self, task_id: int, k: int, round_: int, result: bytes, state: bytes) -> None:
        path = self.vote_path(task_id, k, round_)
        atomic_write(path.with_suffix(".result"), result)
        atomic_write(path.with_suffix(".state"), state)

    def load_committed(self, task_id: int, k: int, round_: int) -> tuple[bytes, bytes] | None:
        path = self.vote_path(task_id, k, round_)
        try:
            return path.with_suffix(".result").read_bytes(), path.with_suffix(".state").read_bytes()
        except OSError:
            return None

    def forget(self, task_id: int) -> None:
        """A task that ended needs none of our files: its checkpoints live on as blobs."""
        shutil.rmtree(self.datadir / "tasks" / str(task_id), ignore_errors=True)
        for vote in (self.datadir / "votes").glob(f"{task_id}-*"):
            vote.unlink(missing_ok=True)


__all__ = ["ProviderFiles", "Vote"]
