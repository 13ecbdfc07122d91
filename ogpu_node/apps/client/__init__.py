"""The client app (docs/tasks.md), by concern:

- `rpc`: JSON-RPC to one node, contract handles, locally signed transactions;
- `views`: typed chain views, each ABI view decoded into its `types/records.py` record;
- `errors`: typed, one-line errors (`Reverted`, `NodeUnreachable`, `TaskNotFound` …);
- `blobs`: hash-checked blob uploads and downloads over HTTP;
- `history`: a task's checkpoint history from its events, and its loss curve;
- `results`: checkpoint metadata and the extraction of the final weights;
- `app`: `Client`, which joins them for the CLI, the provider app and tests;
- `streams`: stream tasks: open one, signed requests, checked answers, cumulative receipts.
"""

from __future__ import annotations

from ogpu_node.apps.client.app import CheckpointStatus, Client, TaskStatus, label
from ogpu_node.apps.client.blobs import BlobClient, file_blob_hash
from ogpu_node.apps.client.errors import (
    BadCheckpoint,
    BlobNotFound,
    BlobRejected,
    ClientError,
    KeyRequired,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoResult,
    NotMined,
    Reverted,
    TaskNotFound,
    TransactionFailed,
    UploadRefused,
    WaitTimeout,
)
from ogpu_node.apps.client.history import (
    CheckpointHistory,
    ExecutorChange,
    LossPoint,
    TaskHistory,
    Verdict,
    build_history,
)
from ogpu_node.apps.client.results import checkpoint_metadata, extract_weights, mean_recent_loss
from ogpu_node.apps.client.rpc import (
    BID_ADDRESS,
    SLASHING_ADDRESS,
    STAKE_ADDRESS,
    TASK_ADDRESS,
    Rpc,
    contract_abi,
)
from ogpu_node.apps.client.streams import Answer, ReceiptLedger, StreamClient, StreamRefused
from ogpu_node.apps.client.views import ChainViews, decode_view

__all__ = [
    "BID_ADDRESS", "SLASHING_ADDRESS", "STAKE_ADDRESS", "TASK_ADDRESS", "Answer", "BadCheckpoint", "BlobClient",
    "BlobNotFound", "BlobRejected", "ChainViews", "CheckpointHistory", "CheckpointStatus", "Client", "ClientError",
    "ExecutorChange", "KeyRequired", "LossPoint", "NoResult", "NodeError", "NodeTimeout", "NodeUnreachable",
    "NotMined", "ReceiptLedger", "Reverted", "Rpc", "StreamClient", "StreamRefused", "TaskHistory", "TaskNotFound",
    "TaskStatus", "TransactionFailed", "UploadRefused", "Verdict", "WaitTimeout", "build_history", "checkpoint_metadata", "contract_abi",
    "decode_view", "extract_weights", "file_blob_hash", "label", "mean_recent_loss",
]
