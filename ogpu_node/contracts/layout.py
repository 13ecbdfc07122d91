"""The storage layout of the native contracts: every stored record, declared once.

Each class names the fields of one record and the storage name each lives under; `storage.StoredRecord`
maps them onto slots (keccak(name ‖ keys), or keccak(prefix ‖ keys ‖ keccak(name)) for a record with a
prefix), one word per field, so reading one field costs one SLOAD. The names are consensus: they fix
the slots, and so the state root; rename an attribute freely, never its storage name.

A view returns the `ogpu_node.types.records` record of the same fields (`StoredRecord.load`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ogpu_node.contracts.storage import Address, Bytes32, Flag, StoredRecord, Text, Uint

# -- Task --


class TaskCounter(StoredRecord):
    """Task's one global: the number of tasks ever submitted (ids run from 1)."""

    count = Uint()


class TaskEntry(StoredRecord):
    """A task (batch or stream) at its id: who pays, what it holds, who runs it (Task.getTask)."""

    client = Address()
    kind = Uint()  # protocol.TaskKind
    state = Uint()  # protocol.TaskState
    prescription_hash = Bytes32("prescription")
    escrow = Uint()  # what is left of maxPayment (batch) or of the budget and top-ups (stream)
    deposit = Uint()  # the client's safety deposit
    executor = Address()
    price = Uint()  # the executor's bid
    seed = Bytes32()  # fixed at assignment from the block's RANDAO mix
    bid_deadline = Uint("bidDeadline")
    assigned_at = Uint("assignedAt")
    collateral = Uint()  # the executor's locked pledge


class ProgressEntry(StoredRecord):
    """How far a batch task got (Task.getProgress); a stream task keeps only `paid`."""

    accepted = Uint()  # checkpoints accepted (and paid)
    committed = Uint()  # checkpoints committed by the current executor
    paid = Uint()
    run_start = Uint("runStart")  # when the current executor's run began
    run_base = Uint("runBase")  # checkpoints accepted when it began
    generation = Uint()  # executors replaced so far: stale expiry deadlines carry an older one
    confirm_deadline = Uint("confirmDeadline")


class TermsEntry(StoredRecord, prefix="terms"):
    """A batch task's terms (Task.getTerms), one slot per field of TermsRecord, under its field name.
    Declared field by field, as `fields_of` gives every field a Uint and numericProfile is a bytes32."""

    max_payment = Uint()
    council_size = Uint()
    council_share_bps = Uint()
    checkpoints = Uint()
    segment_window = Uint()
    bid_window = Uint()
    first_n = Uint()
    min_bids = Uint()
    lateness_bps_per_second = Uint()
    confirm_window = Uint()
    response_method = Uint()
    response_weight = Uint()
    equivalence = Uint()
    min_memory_mib = Uint()
    device_mask = Uint()
    numeric_profile = Bytes32()


class CheckpointEntry(StoredRecord, prefix="ck"):
    """Checkpoint k of a batch task (Task.getCheckpoint, with its sitting council)."""

    phase = Uint()  # protocol.Phase
    round = Uint()  # councils drawn for it so far: stale council deadlines carry an older one
    commitment = Bytes32()  # the executor's checkpoint_commitment
    checkpoint_hash = Bytes32("hash")  # revealed by the executor
    revealed = Flag()
    phase_ends = Uint("phaseEnds")
    step_index = Uint("step")  # the step whose state hash exact councils report
    committed_at = Uint("committedAt")
    commits = Uint()  # council commitments in this round
    reveals = Uint()  # council reveals in this round
    inconclusive = Uint()  # inconclusive rounds so far
    judgements = Uint()  # allclose: members that judged in this round


class VoteEntry(StoredRecord, prefix="vote"):
    """A council member's vote on checkpoint k in one round."""

    commitment = Bytes32()
    revealed = Flag()
    verdict = Flag()
    step_hash = Bytes32("step")
    fetched = Flag()  # the member attests it fetched the checkpoint
    judged = Flag()  # allclose: it judged the others' results
    marks = Uint()  # allclose: members that judged its result not allclose to theirs


@dataclass(frozen=True)
class StreamTerms:
    """The terms of Task.submitStream, in ABI order."""

    budget: int
    council_size: int
    price_per_unit: int
    response_method: int
    response_weight: int
    max_response_time: int
    settle_window: int
    min_memory_mib: int
    device_mask: int
    numeric_profile: bytes  # protocol.profile_id of the profile subscribers must have registered; zero: any


class StreamEntry(StoredRecord, prefix="stream"):
    """A stream task's terms as submitted (StreamTerms, under their field names), its current terms
    version and its closing."""

    budget = Uint()
    council_size = Uint()
    price_per_unit = Uint()
    response_method = Uint()
    response_weight = Uint()
    max_response_time = Uint()
    settle_window = Uint()
    min_memory_mib = Uint()
    device_mask = Uint()
    numeric_profile = Bytes32()
    version = Uint()
    request_key = Address("requestKey")
    close_deadline = Uint("closeDeadline")


class StreamVersion(StoredRecord, prefix="streamTerms"):
    """The price and response method of one terms version of a stream."""

    price = Uint()
    method = Uint()
    weight = Uint()


class SettledUnits(StoredRecord):
    """Units settled for one provider of a stream under one terms version (cumulative)."""

    units = Uint("settled")


# -- Stake --


class StakeTotal(StoredRecord):
    total = Uint()  # Σ staked


class StakeEntry(StoredRecord):
    """An account's stake (Stake.stakeOf)."""

    staked = Uint()
    locked = Uint()  # the part of `staked` pledged to bids and council seats
    unbonding = Uint()
    release_time = Uint("release")
    roles = Uint()  # protocol.Role bits


class ValidatorEntry(StoredRecord, prefix="validator"):
    """An account's validator registration and lifecycle (Stake.validatorOf)."""

    randao_tip = Bytes32("tip")  # H^N(secret) of its RANDAO hash chain; fixed once set
    status = Uint()  # protocol.ValidatorStatus
    activation_epoch = Uint("activation")  # the epoch boundary that activated it
    exit_epoch = Uint("exit")  # the epoch boundary that took it out
    queued = Uint()  # _IN_ACTIVATIONS | _IN_EXITS | _IN_EJECTIONS: which queues hold an entry for it


class ValidatorEpoch(StoredRecord):
    """Stake's epoch clock: the last epoch whose boundary applied the validator queues."""

    epoch = Uint("validatorEpoch")


class ResourcesEntry(StoredRecord):
    """What a provider registered (Stake.resourcesOf)."""

    device_kind = Uint("device")  # protocol.DeviceKind
    memory_mib = Uint("memory")
    throughput_score = Uint("score")
    endpoint = Text()


class ProfileCount(StoredRecord, prefix="profiles"):
    """How many numeric profiles an account registered (Stake.setProfiles): ProfileItem 1..count."""

    count = Uint()


class ProfileItem(StoredRecord, prefix="profileItem"):
    """The i-th numeric profile an account registered (keys: account, i)."""

    profile = Bytes32()


class ProfileFlag(StoredRecord, prefix="honours"):
    """Whether an account registered a numeric profile (keys: account, profile id): one read per check."""

    registered = Flag()


# -- Bid --


class BidSequence(StoredRecord):
    sequence = Uint()  # bids placed so far: orders ties by time


class BidEntry(StoredRecord):
    """A provider's live bid on a task."""

    price = Uint()
    collateral = Uint()
    order = Uint()


# -- Slashing --


class EvidenceEntry(StoredRecord):
    punished = Flag()  # the offence with this evidence id was punished


class SlashedWindow(StoredRecord):
    """The exposure of offenders punished in the current and the previous SLASHING_WINDOW: what the
    correlation penalty weighs (docs/consensus.md, "Slashing")."""

    window = Uint("slashedWindow")  # timestamp // SLASHING_WINDOW of `current`
    current = Uint("slashedCurrent")
    previous = Uint("slashedPrevious")


# -- the deadline queue (scheduler.py) --


class QueueHeader(StoredRecord, prefix="queue"):
    """The deadline heap's size and the sequence number of the last entry scheduled; the heap's words
    are at keccak("queue" ‖ index)."""

    size = Uint()
    sequence = Uint()
