"""The client's typed chain views and typed errors, against a fake node: a web3 provider that answers
eth_call with ABI-encoded outputs (so the decoding web3 does on a real node is exercised), raises a
revert, or fails like a dropped connection. No network."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from eth_abi import decode, encode
from eth_utils import to_checksum_address
from web3.providers.base import BaseProvider

from ogpu_node.apps.client import (
    Client,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoResult,
    Reverted,
    TaskNotFound,
    decode_view,
)
from ogpu_node.apps.provider.chain import ChainClient
from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import load_abi
from ogpu_node.types import records as rec
from ogpu_node.types.protocol import Phase, Role, TaskKind, TaskState

A = to_checksum_address("0x" + "aa" * 20)
B = to_checksum_address("0x" + "bb" * 20)
ZERO = "0x" + "00" * 20
H = b"\x11" * 32
CONTRACTS = {to_checksum_address(addresses.TASK): "Task", to_checksum_address(addresses.STAKE): "Stake",
             to_checksum_address(addresses.BID): "Bid"}
ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)

TASK = (A, 0, TaskState.RUNNING, H, 1000, 100, B, 900, b"\x22" * 32, 1_700_000_000, 1_700_000_010)
TERMS = (1000, 3, 1000, 4, 60, 8, 3, 1, 0, 600, 0, 0, 0, 2048, 1, bytes(32))
PROGRESS = (1, 2, 300, 1_700_000_010, 0, 0, 0)
CHECKPOINT = (Phase.REVEAL, 1, b"\x33" * 32, b"\x44" * 32, 1_700_000_100, [A, B], 40)
STREAM = (1, 5, 0, 0, 2, A, 0)
STAKE = (10**18, 10**17, 0, 0, Role.PROVIDER)
RESOURCES = (0, 4096, 7, "http://p")
PARAMS = (32 * 10**18, 10**18, 86_400)


VIEWS = {
    "taskCount": 3, "getTask": TASK, "getTerms": (TERMS,), "getProgress": PROGRESS, "getCheckpoint": CHECKPOINT,
    "getStream": STREAM, "bidsOf": ([A, B], [900, 950]), "stakeOf": STAKE, "resourcesOf": RESOURCES,
    "params": PARAMS, "providers": ([A, B],),
}


class Revert(Exception):
    """What the fake chain answers for a call that reverts."""


def answer(views: dict[str, Any], name: str, args: tuple[Any, ...]) -> Any:
    """The fake chain: task 9 does not exist, minimumDeposit is 10% of the amount, the rest from ``views``."""
    if name == "minimumDeposit":
        return args[0] * 1000 // 10_000
    if name.startswith("get") and args[0] == 9:
        return Revert("Task: no task 9")
    return views[name]


class FakeNode(BaseProvider):
    """Answers eth_call for the native contracts from ``answers``; ``fail`` replaces every answer."""

    def __init__(self, fail: BaseException | None = None, error: dict[str, Any] | None = None,
                 **views: Any) -> None:
        super().__init__()
        self.fail, self.error, self.views = fail, error, {**VIEWS, **views}
        self.calls: list[str] = []

    def make_request(self, method: str, params: Any) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        if self.error is not None:
            return {"jsonrpc": "2.0", "id": 1, "error": self.error}
        if method == "eth_chainId":
            return {"jsonrpc": "2.0", "id": 1, "result": "0x539"}
        assert method == "eth_call", method
        tx = params[0]
        abi = load_abi(CONTRACTS[to_checksum_address(tx["to"])])
        data = bytes.fromhex(tx["data"][2:])
        fn = abi.functions[data[:4]]
        args = tuple(decode(list(fn.inputs), data[4:]))
        self.calls.append(fn.name)
        value = answer(self.views, fn.name, args)
        if isinstance(value, Revert):
            payload = ERROR_SELECTOR + encode(["string"], [str(value)])
            return {"jsonrpc": "2.0", "id": 1, "error": {"code": 3, "message": f"execution reverted: {value}",
                                                          "data": "0x" + payload.hex()}}
        outputs = list(fn.outputs)
        if len(outputs) == 1 and not isinstance(value, tuple):
            value = (value,)
        return {"jsonrpc": "2.0", "id": 1, "result": "0x" + encode(outputs, list(value)).hex()}


def client(node: FakeNode | None = None) -> Client:
    c = Client("http://127.0.0.1:1")
    c.w3.provider = node or FakeNode()
    return c


def test_each_view_decodes_into_its_record():
    views = client().views
    assert views.task(1) == rec.TaskRecord(A, 0, 2, H, 1000, 100, B, 900, b"\x22" * 32, 1_700_000_000, 1_700_000_010)
    task = views.task(1)
    assert task.task_state is TaskState.RUNNING and task.task_kind is TaskKind.BATCH
    assert type(task.prescription_hash) is bytes and type(task.seed) is bytes  # not HexBytes
    assert views.terms(1) == rec.TermsRecord(*TERMS)
    assert views.terms(1).checkpoints == 4 and views.terms(1).min_memory_mib == 2048
    assert views.progress(1) == rec.ProgressRecord(*PROGRESS)
    ck = views.checkpoint(1, 2)
    assert ck == rec.CheckpointRecord(3, 1, b"\x33" * 32, b"\x44" * 32, 1_700_000_100, [A, B], 40)
    assert ck.checkpoint_phase is Phase.REVEAL and type(ck.checkpoint_hash) is bytes
    assert views.stream(1) == rec.StreamRecord(*STREAM)
    assert views.bids(1) == rec.BidsRecord([A, B], [900, 950])
    assert views.stake_of(A) == rec.StakeRecord(10**18, 10**17, 0, 0, 2)
    assert views.stake_of(A).role_flags is Role.PROVIDER
    assert views.resources_of(A) == rec.ResourcesRecord(0, 4096, 7, "http://p")
    assert views.stake_params() == rec.StakeParamsRecord(32 * 10**18, 10**18, 86_400)
    assert views.providers() == [A, B]
    assert views.task_count() == 3


def test_minimum_deposit_is_the_view_of_the_amount():
    node = FakeNode()
    assert client(node).views.minimum_deposit(12_345) == 1234
    assert node.calls == ["minimumDeposit"]


def test_decode_view_checks_the_arity():
    with pytest.raises(ValueError, match="ProgressRecord: expected 7 values, got 6"):
        decode_view(rec.ProgressRecord, PROGRESS[:6])


def test_a_revert_is_typed_with_its_reason():
    with pytest.raises(Reverted) as caught:
        client().views.task(9)
    assert caught.value.reason == "Task: no task 9" and caught.value.what == "getTask"
    assert str(caught.value) == "getTask: reverted: Task: no task 9"


def test_a_missing_task_is_task_not_found():
    views = client().views
    views.require_task(3)
    for task_id in (0, 4):
        with pytest.raises(TaskNotFound) as caught:
            views.require_task(task_id)
        assert (caught.value.task_id, caught.value.count) == (task_id, 3)
        assert str(caught.value) == f"task {task_id} does not exist (tasks: 3)"
    with pytest.raises(TaskNotFound):
        client().status(4)


def test_transport_failures_are_typed():
    with pytest.raises(NodeUnreachable, match=r"^cannot reach the node at http://127.0.0.1:1$"):
        client(FakeNode(fail=requests.ConnectionError("refused"))).views.task_count()
    with pytest.raises(NodeTimeout, match="^taskCount: the node at http://127.0.0.1:1 did not answer in time$"):
        client(FakeNode(fail=requests.Timeout())).views.task_count()
    with pytest.raises(NodeError, match="^taskCount: "):
        client(FakeNode(error={"code": -32601, "message": "the method eth_call does not exist"})).views.task_count()


def test_status_reads_the_records_by_name():
    s = client().status(1)
    assert (s.state, s.state_code, s.client, s.executor, s.escrow, s.deposit, s.price) == (
        "Running", 2, A, B, 1000, 100, 900)
    assert (s.checkpoints, s.accepted, s.committed, s.paid) == (4, 1, 2, 300)
    assert s.bids == ((A, 900), (B, 950))
    assert s.checkpoint is not None
    assert (s.checkpoint.k, s.checkpoint.phase, s.checkpoint.round, s.checkpoint.council) == (2, "Reveal", 1, (A, B))
    assert not s.result_ready()


def test_status_of_a_task_without_executor_and_an_unknown_state():
    unknown = (A, 0, 42, H, 1000, 100, ZERO, 0, b"\0" * 32, 5, 0)  # a state a newer chain might add
    s = client(FakeNode(getTask=unknown)).status(1)
    assert (s.state, s.executor) == ("42", None)


def test_a_cancelled_task_has_no_result(tmp_path):
    cancelled = (A, 0, TaskState.CANCELLED, H, 0, 0, ZERO, 0, b"\0" * 32, 5, 0)
    c = client(FakeNode(getTask=cancelled, getProgress=(0, 0, 0, 0, 0, 0, 0)))
    with pytest.raises(NoResult, match="^task 1 was cancelled with 0/4 checkpoints accepted: it has no result$"):
        c.result(1, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_the_provider_reads_the_same_records():
    chain = ChainClient("http://127.0.0.1:1", b"\x01" * 32)
    chain.w3.provider = FakeNode()
    assert chain.task_record(1).executor == B
    assert chain.checkpoint(1, 2).phase_ends == 1_700_000_100
    assert chain.progress(1).committed == 2 and chain.terms(1).checkpoints == 4
    assert chain.bids(1).prices == [900, 950] and chain.task_count() == 3
    assert chain.stake_of().roles == Role.PROVIDER and chain.resources_of(B).memory_mib == 4096
    with pytest.raises(Reverted, match="Task: no task 9"):
        chain.progress(9)
