"""The protocol's constants, in one table: every layer (contracts, apps, CLI, prescription, tests) imports them.

Numbers here are consensus: they are stored in contract storage, emitted in events and returned by views,
so changing one is a hard fork. A test (tests/unit/types/test_protocol.py) fails if any of these names
is assigned anywhere else in the package.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from eth_hash.auto import keccak

# -- limits (checked by contracts and by the prescription parser alike) ---------------------------------

BPS = 10_000  # basis points in one whole
MAX_UINT256 = 2**256 - 1
MAX_COUNCIL = 100  # members of one council
MAX_CHECKPOINTS = 1_000  # checkpoints K of one batch task
MAX_WINDOW = 10 * 365 * 24 * 3600  # seconds: the longest window any deadline may be set at
MAX_ENDPOINT_BYTES = 256  # a provider's registered endpoint
MAX_PROFILES = 16  # numeric profiles one provider registers (Stake.setProfiles)
ECRECOVER_GAS = 3_000  # what a native contract charges per signature it recovers, as the ecrecover precompile


class TaskKind(IntEnum):
    BATCH = 0
    STREAM = 1


class TaskState(IntEnum):
    """A task's state in Task's storage (batch 1-6, stream 6-10; 0 is a task that does not exist)."""

    NONE = 0
    BIDDING = 1
    RUNNING = 2
    CANCELLED = 3
    AWAITING_CONFIRMATION = 4
    DISPUTED = 5
    SETTLED = 6
    FORMING = 7
    ACTIVE = 8
    INTERRUPTED = 9
    CLOSING = 10

    @property
    def label(self) -> str:
        return "".join(word.capitalize() for word in self.name.split("_"))


class Phase(IntEnum):
    """Where checkpoint k of a batch task stands."""

    NONE = 0
    COMMITTED = 1  # the executor committed; the council is not drawn yet
    COUNCIL_COMMIT = 2  # the council is drawn and commits
    REVEAL = 3  # reveals are open
    ACCEPTED = 4
    JUDGE = 5  # allclose: members judge each other's published results

    @property
    def sitting(self) -> bool:
        """A council is drawn and has not been tallied: its seats are locked."""
        return self in (Phase.COUNCIL_COMMIT, Phase.REVEAL, Phase.JUDGE)

    @property
    def label(self) -> str:
        return "".join(word.capitalize() for word in self.name.split("_"))


class DeadlineKind(IntEnum):
    """The time-triggered steps the start-of-block system call runs from Task's deadline queue."""

    CLOSE_BIDDING = 1
    DRAW_COUNCIL = 2
    CLOSE_COMMITS = 3
    CLOSE_REVEALS = 4
    EXPIRE_CHECKPOINT = 5
    AUTO_CONFIRM = 6
    CLOSE_STREAM = 7
    CLOSE_JUDGING = 8


class CancelReason(IntEnum):
    TOO_FEW_BIDS = 1
    TOO_FEW_CANDIDATES = 2
    INCONCLUSIVE = 3
    NO_REPLACEMENT = 4

    @property
    def text(self) -> str:
        return _CANCEL_TEXT[self]


_CANCEL_TEXT = {
    CancelReason.TOO_FEW_BIDS: "too few bids",
    CancelReason.TOO_FEW_CANDIDATES: "too few council candidates",
    CancelReason.INCONCLUSIVE: "too many inconclusive rounds",
    CancelReason.NO_REPLACEMENT: "no bidder left to replace the executor",
}


class Outcome(IntEnum):
    """How a batch task settled."""

    CONFIRMED = 1
    EXECUTOR_LOST = 2
    CLIENT_LOST = 3

    @property
    def text(self) -> str:
        return _OUTCOME_TEXT[self]


_OUTCOME_TEXT = {
    Outcome.CONFIRMED: "confirmed",
    Outcome.EXECUTOR_LOST: "the executor lost the dispute",
    Outcome.CLIENT_LOST: "the client lost the dispute",
}


class Penalty(IntEnum):
    """Computation penalties recorded through Slashing."""

    REJECTED = 1
    MISSED_CHECKPOINT = 2
    MISSED_VOTE = 3
    LAZY_MEMBER = 4  # allclose: marked not-allclose by two thirds of the other members


class Offence(IntEnum):
    """Consensus offences Slashing accepts evidence of."""

    DOUBLE_PROPOSAL = 1
    DOUBLE_VOTE = 2
    SURROUND_VOTE = 3


class Role(IntFlag):
    """Stake's role bits."""

    VALIDATOR = 1
    PROVIDER = 2


ALL_ROLES = Role.VALIDATOR | Role.PROVIDER


class ValidatorStatus(IntEnum):
    """Where an account stands in Stake's validator lifecycle (docs/consensus.md, "Validator set")."""

    NONE = 0
    PENDING = 1  # in the activation queue
    ACTIVE = 2
    EXITING = 3  # in the exit queue: still validates until an epoch boundary takes it out


# Rewards and penalties (docs/consensus.md, "Rewards and penalties"): Altair's weights, in 64ths of a
# validator's base reward per epoch.
SOURCE_WEIGHT = 14
TARGET_WEIGHT = 26
HEAD_WEIGHT = 14
PROPOSER_WEIGHT = 8
WEIGHT_DENOMINATOR = 64
INACTIVITY_GRACE_EPOCHS = 4  # epochs without finality before the inactivity leak starts

# Slashing's correlation penalty (docs/consensus.md, "Slashing"): offenders punished within this many
# seconds of each other weigh together, and a third of the stake slashed together loses all of it.
SLASHING_WINDOW = 7 * 24 * 3600
PROPORTIONAL_SLASHING_MULTIPLIER = 3

# Queue entries one epoch boundary looks at, per queue: bounds the system call's work, whatever the
# churn limit and however many entries were left stale by accounts that changed their mind.
MAX_VALIDATOR_QUEUE_POPS = 256


class Equivalence(IntEnum):
    """Terms.equivalence on chain: exact (members commit first) or anything else (the executor reveals first)."""

    EXACT = 0
    ALLCLOSE = 1


EQUIVALENCE_KINDS = ("exact", "allclose", "tokens", "possible")  # the prescription's `e`
BATCH_EQUIVALENCES = ("exact", "allclose")  # tokens/possible compare generated outputs: streams only


class DeviceKind(IntEnum):
    """A provider's device kind; bit i of a task's deviceMask allows kind i."""

    CPU = 0
    CUDA = 1
    ROCM = 2
    MPS = 3


DEVICE_KINDS = tuple(kind.name.lower() for kind in DeviceKind)


class ResponseMethod(IntEnum):
    """How a stream's council answer is completed."""

    OPTIMISTIC = 0
    WEIGHTED = 1
    UNANIMOUS = 2


RESPONSE_METHODS = tuple(method.name.lower() for method in ResponseMethod)

FAULT_KINDS = ("perturb", "skip-steps", "reorder-data", "copy-weights")  # dishonest executors, for testing only

DEFAULT_PROFILE = "cpu-avx2-1t"  # the numeric profile a CPU provider trains and verifies under
NO_PROFILE = bytes(32)  # a task's numericProfile when any provider may serve it


def profile_id(name: str) -> bytes:
    """A numeric profile's id on chain (Stake.setProfiles, a task's numericProfile): keccak(name, UTF-8)."""
    return keccak(name.encode())
