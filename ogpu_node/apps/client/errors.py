"""The client app's errors: one type per way a request to a node can fail, each a one-line message.

Callers decide by type (`except Reverted`, `except NodeUnreachable`), never by reading the message;
the CLI prints `str(exc)` as its one error line. `translate` is the one place where web3 and requests
exceptions become these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

T = TypeVar("T")

RECEIPT_TIMEOUT_S = 60.0  # how long `send` waits for a transaction's receipt


class ClientError(Exception):
    """A one-line, user-facing failure of a request to a node."""


class KeyRequired(ClientError):
    """A transaction was asked of a client built without a private key."""


class NodeUnreachable(ClientError):
    """No connection to the node's endpoint."""


class NodeTimeout(ClientError):
    """The node accepted the connection but did not answer in time."""


class NodeError(ClientError):
    """The node answered with an error that is not a revert (bad request, HTTP failure, JSON-RPC error)."""


class Reverted(ClientError):
    """A call or transaction the contract refused; ``reason`` is its `Error(string)` reason."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: reverted: {reason}")
        self.what = what
        self.reason = reason


class NotMined(ClientError):
    """A sent transaction had no receipt within `RECEIPT_TIMEOUT_S`."""


class TransactionFailed(ClientError):
    """A transaction was mined with status 0 (it ran out of gas or reverted after its estimate passed)."""

    def __init__(self, what: str, tx_hash: bytes) -> None:
        super().__init__(f"{what}: transaction 0x{tx_hash.hex()} reverted")
        self.what = what
        self.tx_hash = tx_hash


class TaskNotFound(ClientError):
    """No task with this id on the chain."""

    def __init__(self, task_id: int, count: int) -> None:
        super().__init__(f"task {task_id} does not exist (tasks: {count})")
        self.task_id = task_id
        self.count = count


class BlobNotFound(ClientError):
    """The node does not hold the blob."""

    def __init__(self, blob_hash: bytes, rpc_url: str) -> None:
        super().__init__(f"blob 0x{blob_hash.hex()} is not on the node at {rpc_url}")
        self.blob_hash = blob_hash


class BlobRejected(ClientError):
    """A downloaded blob that is not what its name promises (wrong hash, larger than allowed): refused."""


class UploadRefused(ClientError):
    """The node refused an upload, or stored something other than what was sent."""


class BadCheckpoint(ClientError):
    """A checkpoint file that is not a safetensors file, or holds no weights."""


class NoResult(ClientError):
    """The task has no result: not yet, or never (cancelled, or its final checkpoint lost a dispute)."""


class WaitTimeout(ClientError):
    """A wait for the chain to reach some state ran out of time."""


def translate(what: str, rpc_url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, with transport and node failures raised as the typed errors above."""
    try:
        return fn(*args, **kwargs)
    except ContractLogicError as exc:
        raise Reverted(what, reason(exc)) from None
    except requests.ConnectionError:
        raise NodeUnreachable(f"cannot reach the node at {rpc_url}") from None
    except requests.Timeout:
        raise NodeTimeout(f"{what}: the node at {rpc_url} did not answer in time") from None
    except requests.RequestException as exc:
        raise NodeError(f"{what}: {exc}") from None
    except TimeExhausted:
        raise NotMined(f"{what}: not mined within {RECEIPT_TIMEOUT_S:g}s") from None
    except (Web3Exception, ValueError) as exc:
        raise NodeError(f"{what}: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    """The revert reason or node message of a web3 error, on one line."""
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else str(exc))
    if isinstance(message, dict):
        message = message.get("message", str(message))
    return " ".join(str(message).removeprefix("execution reverted: ").split())


__all__ = [
    "RECEIPT_TIMEOUT_S", "BadCheckpoint", "BlobNotFound", "BlobRejected", "ClientError", "KeyRequired",
    "NoResult", "NodeError", "NodeTimeout", "NodeUnreachable", "NotMined", "Reverted", "TaskNotFound",
    "TransactionFailed", "UploadRefused", "WaitTimeout", "reason", "translate",
]
