"""The stream task lifecycle (DESIGN.md §6, "Stream task"), as step functions over a TaskContext.

Providers subscribe through Bid with locked stake; with at least c subscribers the stream is Active,
below c (or after a reported consensus failure, until membership changes) it is Interrupted. The
client can change the price and response method at any time (a new terms version) and register a
request key. Providers are paid by `settle` with receipts signed by the client or its request key over
(task, provider, cumulative units, terms version): only the increase over the last settled receipt of
that version is paid, at that version's price. `retract` opens a settle window, after which the
remaining escrow and the deposit go back to the client.
"""

from __future__ import annotations

from dataclasses import fields

from ogpu_node.contracts.context import TaskContext, subject
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.layout import SettledUnits, StreamEntry, StreamTerms, StreamVersion
from ogpu_node.contracts.submission import minimum_deposit, open_task
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.types.protocol import (
    BPS,
    ECRECOVER_GAS,
    MAX_COUNCIL,
    MAX_WINDOW,
    DeadlineKind,
    Outcome,
    ResponseMethod,
    TaskKind,
    TaskState,
)
from ogpu_node.types.records import StreamRecord
from ogpu_node.types.signing import StreamReceipt

STREAM_TERMS = tuple(f.name for f in fields(StreamTerms))  # submitStream's terms tuple, in ABI order
OPEN = (TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)  # a stream that takes subscribers and terms


def stream_entry(ctx: TaskContext, task_id: int) -> StreamEntry:
    return StreamEntry(ctx.store, task_id)


def existing_stream(ctx: TaskContext, task_id: int, *states: TaskState) -> None:
    """Revert unless `task_id` is a stream task in one of `states` (any state if none given)."""
    task = ctx.existing(task_id)
    if task.kind != TaskKind.STREAM:
        raise Revert("Task: not a stream task")
    if states and task.state not in states:
        raise Revert("Task: stream is not in a state that allows this")


def client_stream(ctx: TaskContext, task_id: int, *states: TaskState) -> None:
    """As `existing_stream`, and the caller must be the stream's client."""
    existing_stream(ctx, task_id, *states)
    if ctx.host.caller != ctx.task(task_id).client:
        raise Revert("Task: caller is not the client")


def check_method(method: int, weight: int) -> None:
    if method >= len(ResponseMethod):
        raise Revert("Task: unknown responseMethod")
    if weight > BPS:
        raise Revert("Task: responseWeight above 10000")


# -- the client --


def submit_stream(ctx: TaskContext, prescription_hash: bytes, raw_terms: tuple) -> int:
    """A client opens a stream: escrow the budget plus the deposit; it forms as providers subscribe."""
    host = ctx.host
    terms = StreamTerms(*raw_terms)
    if terms.budget == 0:
        raise Revert("Task: budget is zero")
    if not 1 <= terms.council_size <= MAX_COUNCIL:
        raise Revert(f"Task: councilSize must be between 1 and {MAX_COUNCIL}")
    if terms.price_per_unit == 0:
        raise Revert("Task: pricePerUnit is zero")
    check_method(terms.response_method, terms.response_weight)
    if not 0 < terms.settle_window <= MAX_WINDOW:
        raise Revert(f"Task: settleWindow must be between 1 and {MAX_WINDOW} seconds")
    deposit_floor = minimum_deposit(ctx, terms.budget)
    if host.value < terms.budget + deposit_floor:
        raise Revert(f"Task: value must cover the budget plus a safety deposit of at least {deposit_floor} wei")
    task_id = open_task(ctx, TaskKind.STREAM, TaskState.FORMING, prescription_hash, terms.budget).key
    deposit = host.value - terms.budget
    stream_entry(ctx, task_id).write(terms)
    new_version(ctx, task_id, terms.price_per_unit, terms.response_method, terms.response_weight)
    ctx.emit(
        "TaskSubmitted", taskId=task_id, client=host.caller, prescriptionHash=prescription_hash,
        kind=TaskKind.STREAM, maxPayment=terms.budget, deposit=deposit, bidDeadline=0,
    )
    return task_id


def new_version(ctx: TaskContext, task_id: int, price: int, method: int, weight: int) -> int:
    stream = stream_entry(ctx, task_id)
    version = stream.version + 1
    stream.version = version
    terms = StreamVersion(ctx.store, task_id, version)
    terms.price = price
    terms.method = method
    terms.weight = weight
    ctx.emit("TermsUpdated", taskId=task_id, version=version, pricePerUnit=price, responseMethod=method,
             responseWeight=weight)
    return version


def update_terms(ctx: TaskContext, task_id: int, price: int, method: int, weight: int) -> int:
    """The client sets a new price and response method: a new terms version for later receipts."""
    client_stream(ctx, task_id, *OPEN)
    if price == 0:
        raise Revert("Task: pricePerUnit is zero")
    check_method(method, weight)
    return new_version(ctx, task_id, price, method, weight)


def set_request_key(ctx: TaskContext, task_id: int, key: bytes) -> None:
    """The client names a key that may sign requests and receipts on its behalf."""
    client_stream(ctx, task_id, *OPEN)
    stream_entry(ctx, task_id).request_key = key
    ctx.emit("RequestKeySet", taskId=task_id, key=key)


def top_up(ctx: TaskContext, task_id: int) -> None:
    """Anyone adds to a stream's escrow."""
    existing_stream(ctx, task_id, *OPEN)
    if ctx.host.value == 0:
        raise Revert("Task: no value sent")
    task = ctx.task(task_id)
    escrow = task.escrow + ctx.host.value
    task.escrow = escrow
    ctx.emit("ToppedUp", taskId=task_id, amount=ctx.host.value, escrow=escrow)


def report_consensus_failure(ctx: TaskContext, task_id: int) -> None:
    """The client reports that the council failed to answer: Interrupted until membership changes."""
    client_stream(ctx, task_id, TaskState.ACTIVE)
    set_state(ctx, task_id, TaskState.INTERRUPTED)


def retract(ctx: TaskContext, task_id: int) -> None:
    """The client closes the stream: providers have one settle window left for their receipts."""
    client_stream(ctx, task_id, *OPEN)
    stream = stream_entry(ctx, task_id)
    deadline = ctx.host.timestamp + stream.settle_window
    stream.close_deadline = deadline
    set_state(ctx, task_id, TaskState.CLOSING)
    ctx.schedule(deadline, DeadlineKind.CLOSE_STREAM, subject(task_id))


# -- providers' receipts --


def settle(
    ctx: TaskContext, task_id: int, provider: bytes, cumulative_units: int, version: int, signature: bytes
) -> int:
    """Pay `provider` for the units a signed receipt adds over what was settled under `version`."""
    host = ctx.host
    existing_stream(ctx, task_id, *OPEN, TaskState.CLOSING)
    task, stream = ctx.task(task_id), stream_entry(ctx, task_id)
    if task.state == TaskState.CLOSING and host.timestamp >= stream.close_deadline:
        raise Revert("Task: the settle window has closed")  # even if the queue has not closed it yet
    if not 1 <= version <= stream.version:
        raise Revert("Task: unknown terms version")
    receipt = StreamReceipt(task_id, provider, cumulative_units, version)
    host.charge(ECRECOVER_GAS)
    try:
        signer = recover_signer(receipt.signing_root(ctx.slashing.chain_id, ctx.slashing.genesis_hash), signature)
    except InvalidSignature as exc:
        raise Revert(f"Task: bad receipt signature: {exc}") from None
    if not signs_for_client(ctx, task_id, signer):
        raise Revert("Task: receipt is not signed by the client or its request key")
    settled = SettledUnits(ctx.store, task_id, provider, version)
    already = settled.units
    if cumulative_units <= already:
        raise Revert("Task: receipt adds no units over what was settled")
    units = cumulative_units - already
    amount = units * StreamVersion(ctx.store, task_id, version).price
    escrow = task.escrow
    if amount > escrow:
        raise Revert("Task: stream budget exhausted; the client must top up")
    settled.units = cumulative_units
    task.escrow = escrow - amount
    ctx.progress(task_id).paid += amount
    ctx.pay(provider, amount)
    ctx.emit("ReceiptSettled", taskId=task_id, provider=provider, termsVersion=version, units=units, amount=amount)
    return amount


def signs_for_client(ctx: TaskContext, task_id: int, signer: bytes) -> bool:
    """Whether `signer` is the stream's client or the request key it registered: who may sign its
    receipts and requests."""
    key = stream_entry(ctx, task_id).request_key
    return signer == ctx.task(task_id).client or (key != b"\x00" * 20 and signer == key)


# -- views --


def stream_record(ctx: TaskContext, task_id: int) -> StreamRecord:
    existing_stream(ctx, task_id)
    stream = stream_entry(ctx, task_id)
    version = stream.version
    terms = StreamVersion(ctx.store, task_id, version)
    return StreamRecord(
        terms_version=version, price_per_unit=terms.price, response_method=terms.method,
        response_weight=terms.weight, subscribers=len(ctx.bid.subscribers(ctx.host, task_id)),
        request_key=stream.request_key, close_deadline=stream.close_deadline,
    )


def settled_units(ctx: TaskContext, task_id: int, provider: bytes, version: int) -> int:
    existing_stream(ctx, task_id)
    return SettledUnits(ctx.store, task_id, provider, version).units


# -- membership, for Bid, and closing, for the system call --


def open_for_subscription(ctx: TaskContext, task_id: int) -> tuple[bytes, int, int, bytes]:
    """(client, minMemoryMiB, deviceMask, numericProfile) of a stream that accepts subscribers."""
    existing_stream(ctx, task_id, *OPEN)
    stream = stream_entry(ctx, task_id)
    return ctx.task(task_id).client, stream.min_memory_mib, stream.device_mask, stream.numeric_profile


def fault_terms(ctx: TaskContext, task_id: int) -> tuple[bytes, int]:
    """(client, councilSize) of a stream task, for Slashing.reportStreamFault."""
    existing_stream(ctx, task_id)
    return ctx.task(task_id).client, stream_entry(ctx, task_id).council_size


def membership_changed(ctx: TaskContext, task_id: int) -> None:
    """After a subscribe or unsubscribe: Active with ≥ c subscribers (a re-formed council also
    ends an interruption), otherwise Interrupted (or still Forming)."""
    count = len(ctx.bid.subscribers(ctx.host, task_id))
    state = ctx.task(task_id).state
    if state not in OPEN:
        return
    if count >= stream_entry(ctx, task_id).council_size:
        target = TaskState.ACTIVE
    else:
        target = TaskState.FORMING if state == TaskState.FORMING else TaskState.INTERRUPTED
    if target != state:
        set_state(ctx, task_id, target)


def set_state(ctx: TaskContext, task_id: int, state: TaskState) -> None:
    ctx.task(task_id).state = state
    ctx.emit("StreamStateChanged", taskId=task_id, state=state, subscribers=len(ctx.bid.subscribers(ctx.host, task_id)))


def close_stream(ctx: TaskContext, task_id: int) -> None:
    """Deadline: the settle window after `retract` ended: free the subscribers, refund the client."""
    task = ctx.task(task_id)
    if task.state != TaskState.CLOSING:
        return
    ctx.bid.release_subscribers(ctx.host, task_id)
    refund = task.escrow + task.deposit
    task.escrow = 0
    task.deposit = 0
    task.state = TaskState.SETTLED
    ctx.pay(task.client, refund)
    ctx.emit("TaskSettled", taskId=task_id, outcome=Outcome.CONFIRMED, refund=refund, paid=ctx.progress(task_id).paid)
