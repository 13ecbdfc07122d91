"""Typed chain views: the one layer through which the apps read the native contracts.

Each method calls one ABI view and decodes its outputs into the record `types/records.py` declares
for it (`decode_record`), so no app reads a view's result by position. Values arrive as web3 decodes
them, except that bytes are plain `bytes` (web3 may hand out `HexBytes`) and addresses stay
checksummed strings. Failures are the typed errors of `errors.py`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ogpu_node.apps.client.errors import TaskNotFound
from ogpu_node.apps.client.rpc import Rpc
from ogpu_node.types.records import (
    BidsRecord,
    CheckpointRecord,
    ProgressRecord,
    ResourcesRecord,
    StakeParamsRecord,
    StakeRecord,
    StreamRecord,
    TaskRecord,
    TermsRecord,
    decode_record,
)

R = TypeVar("R")


def decode_view(cls: type[R], values: Any) -> R:
    """``cls`` from a web3 call result, bytes normalised to `bytes`."""
    if not isinstance(values, list | tuple):
        values = (values,)
    return decode_record(cls, tuple(bytes(v) if isinstance(v, bytes) else v for v in values))


class ChainViews:
    """Typed reads of Task, Bid and Stake over ``rpc``."""

    def __init__(self, rpc: Rpc) -> None:
        self.rpc = rpc

    def _view(self, cls: type[R], what: str, fn: Any) -> R:
        return decode_view(cls, self.rpc.call(what, fn))

    # -- Task --

    def task_count(self) -> int:
        return int(self.rpc.call("taskCount", self.rpc.task.functions.taskCount()))

    def require_task(self, task_id: int) -> None:
        """TaskNotFound unless task ``task_id`` exists (ids run 1..taskCount)."""
        count = self.task_count()
        if not 1 <= task_id <= count:
            raise TaskNotFound(task_id, count)

    def task(self, task_id: int) -> TaskRecord:
        return self._view(TaskRecord, "getTask", self.rpc.task.functions.getTask(task_id))

    def terms(self, task_id: int) -> TermsRecord:
        return self._view(TermsRecord, "getTerms", self.rpc.task.functions.getTerms(task_id))

    def progress(self, task_id: int) -> ProgressRecord:
        return self._view(ProgressRecord, "getProgress", self.rpc.task.functions.getProgress(task_id))

    def checkpoint(self, task_id: int, k: int) -> CheckpointRecord:
        return self._view(CheckpointRecord, "getCheckpoint", self.rpc.task.functions.getCheckpoint(task_id, k))

    def stream(self, task_id: int) -> StreamRecord:
        return self._view(StreamRecord, "getStream", self.rpc.task.functions.getStream(task_id))

    def minimum_deposit(self, amount: int) -> int:
        """The safety deposit a task escrowing ``amount`` wei must add (Task.minimumDeposit)."""
        return int(self.rpc.call("minimumDeposit", self.rpc.task.functions.minimumDeposit(amount)))

    # -- Bid --

    def bids(self, task_id: int) -> BidsRecord:
        return self._view(BidsRecord, "bidsOf", self.rpc.bid.functions.bidsOf(task_id))

    # -- Stake --

    def stake_of(self, account: str) -> StakeRecord:
        return self._view(StakeRecord, "stakeOf", self.rpc.stake.functions.stakeOf(account))

    def profiles_of(self, account: str) -> list[bytes]:
        """The numeric profile ids ``account`` registered (Stake.setProfiles), in its order."""
        return [bytes(p) for p in self.rpc.call("profilesOf", self.rpc.stake.functions.profilesOf(account))]

    def resources_of(self, account: str) -> ResourcesRecord:
        return self._view(ResourcesRecord, "resourcesOf", self.rpc.stake.functions.resourcesOf(account))

    def stake_params(self) -> StakeParamsRecord:
        return self._view(StakeParamsRecord, "params", self.rpc.stake.functions.params())

    def providers(self) -> list[str]:
        return list(self.rpc.call("providers", self.rpc.stake.functions.providers()))


__all__ = ["ChainViews", "decode_view"]
