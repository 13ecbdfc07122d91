"""What the provider's decision core (`core.ProviderCore`) is told, and what it asks for.

Inputs are the chain's Task events (`chain.Event`, as the node logged them) and the observations
below, which the service reports as its own work progresses. Outputs are actions: plain records
the service carries out (a transaction, a training job, a file deletion). Neither side holds I/O,
so tests feed the core by hand and compare the actions with `==`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ogpu_node.apps.provider.strategy import Job
from ogpu_node.types.protocol import Phase

# -- observations: the service's own work, reported back ------------------------------------------


@dataclass(frozen=True)
class Assessed:
    """The task's documents were fetched and estimated: ``job`` is what the strategy needs."""

    task_id: int
    job: Job


@dataclass(frozen=True)
class BidFailed:
    """The bid transaction failed: the task no longer holds one of our job slots."""

    task_id: int


@dataclass(frozen=True)
class ExecutorStarted:
    """The executor job has its prescription and worker: reveals can be ordered by its equivalence."""

    task_id: int
    exact: bool


@dataclass(frozen=True)
class CheckpointTrained:
    """ckpt_k is written to the datadir (trained now, or kept from before a restart)."""

    task_id: int
    k: int
    digest: bytes  # H(ckpt_k)


@dataclass(frozen=True)
class TrainingEnded:
    """The executor's training stopped: every segment trained, or ``error``."""

    task_id: int
    error: str | None = None


@dataclass(frozen=True)
class Committed:
    task_id: int
    k: int


@dataclass(frozen=True)
class CommitFailed:
    """A commit that failed for good (its deadline passed): later checkpoints cannot follow it."""

    task_id: int
    k: int


@dataclass(frozen=True)
class Revealed:
    task_id: int
    k: int


@dataclass(frozen=True)
class RevealFailed:
    """A reveal that failed for good; a later trigger (a fresh council) may try again."""

    task_id: int
    k: int


@dataclass(frozen=True)
class ExecutorOwed:
    """Found at restart: this provider executes a running task and had committed ``committed``
    checkpoints; ``phase`` is where checkpoint accepted + 1 stands."""

    task_id: int
    accepted: int
    committed: int
    phase: Phase


@dataclass(frozen=True)
class SeatOwed:
    """Found at restart: this provider sits on a council now; ``committed``/``revealed`` say which
    of its votes the chain's logs already show for this round."""

    task_id: int
    k: int
    round: int
    step_index: int
    committed: bool = False
    revealed: bool = False


@dataclass(frozen=True)
class SeatEnded:
    task_id: int
    k: int
    round: int


Observation = (Assessed | BidFailed | ExecutorStarted | CheckpointTrained | TrainingEnded | Committed | CommitFailed
               | Revealed | RevealFailed | ExecutorOwed | SeatOwed | SeatEnded)

# -- actions: what the service carries out --------------------------------------------------------


@dataclass(frozen=True)
class Consider:
    """Fetch the prescription and data of a new batch task and estimate it."""

    task_id: int
    prescription_hash: bytes


@dataclass(frozen=True)
class PlaceBid:
    task_id: int
    price: int
    reason: str


@dataclass(frozen=True)
class StartExecutor:
    """Train the task from checkpoint ``resume_from``; ``committed`` checkpoints were committed
    before a restart (reloaded from the datadir, not committed again)."""

    task_id: int
    resume_from: int = 0
    committed: int = 0
    resuming: bool = False


@dataclass(frozen=True)
class StopTraining:
    """Train no further (a commit failed for good); reveals owed for committed checkpoints go on."""

    task_id: int


@dataclass(frozen=True)
class StopExecutor:
    """Abandon the task as executor: training, commits and reveals (replaced, cancelled, settled)."""

    task_id: int
    why: str


@dataclass(frozen=True)
class Commit:
    task_id: int
    k: int
    digest: bytes


@dataclass(frozen=True)
class Reveal:
    """Publish ckpt_k and reveal its hash."""

    task_id: int
    k: int
    digest: bytes


@dataclass(frozen=True)
class ServeSeat:
    """Sit on checkpoint k's council in ``round``: re-run, commit, reveal."""

    task_id: int
    k: int
    round: int
    step_index: int
    resuming: bool = False


@dataclass(frozen=True)
class EndSeats:
    """The task ended: abandon every council seat on it."""

    task_id: int


@dataclass(frozen=True)
class ForgetTask:
    """The task ended: drop its documents and delete its files (its checkpoints live on as blobs)."""

    task_id: int


Action = Consider | PlaceBid | StartExecutor | StopTraining | StopExecutor | Commit | Reveal | ServeSeat | EndSeats | ForgetTask

__all__ = [
    "Action", "Assessed", "BidFailed", "CheckpointTrained", "Commit", "CommitFailed", "Committed", "Consider",
    "EndSeats", "ExecutorOwed", "ExecutorStarted", "ForgetTask", "Observation", "PlaceBid", "Reveal", "RevealFailed",
    "Revealed", "SeatEnded", "SeatOwed", "ServeSeat", "StartExecutor", "StopExecutor", "StopTraining", "TrainingEnded",
]
