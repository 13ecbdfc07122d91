"""The stream task lifecycle (DESIGN.md §6, "Stream task"), as a part of Task.

Providers subscribe through Bid with locked stake; with at least c subscribers the stream is Active,
below c (or after a reported consensus failure, until membership changes) it is Interrupted. The
client can change the price and response method at any time (a new terms version) and register a
request key. Providers are paid by `settle` with receipts signed by the client or its request key over
(task, provider, cumulative units, terms version): only the increase over the last settled receipt of
that version is paid, at that version's price. `retract` opens a settle window, after which the
remaining escrow and the deposit go back to the client.
"""

from __future__ import annotations

from ogpu_node.contracts.addresses import TASK
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.storage import Storage
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
from ogpu_node.types.signing import StreamReceipt

STREAM_TERMS = (
    "budget", "council_size", "price_per_unit", "response_method", "response_weight", "max_response_time",
    "settle_window", "min_memory_mib", "device_mask",
)


class StreamProtocol:
    """Mixed into Task; uses its storage, queue, stake, bid and chain identity."""

    def _stream(self, host: Host, task_id: int, *states: int) -> Storage:
        store = self._existing(host, task_id)
        if store.get("kind", task_id) != TaskKind.STREAM:
            raise Revert("Task: not a stream task")
        if states and store.get("state", task_id) not in states:
            raise Revert("Task: stream is not in a state that allows this")
        return store

    def _client_stream(self, host: Host, task_id: int, *states: int) -> Storage:
        store = self._stream(host, task_id, *states)
        if host.caller != store.get_address("client", task_id):
            raise Revert("Task: caller is not the client")
        return store

    def submitStream(self, host: Host, prescription_hash: bytes, raw_terms: tuple) -> int:
        terms = dict(zip(STREAM_TERMS, raw_terms, strict=True))
        if terms["budget"] == 0:
            raise Revert("Task: budget is zero")
        if not 1 <= terms["council_size"] <= MAX_COUNCIL:
            raise Revert(f"Task: councilSize must be between 1 and {MAX_COUNCIL}")
        if terms["price_per_unit"] == 0:
            raise Revert("Task: pricePerUnit is zero")
        self._check_method(terms["response_method"], terms["response_weight"])
        if not 0 < terms["settle_window"] <= MAX_WINDOW:
            raise Revert(f"Task: settleWindow must be between 1 and {MAX_WINDOW} seconds")
        minimum_deposit = self.minimumDeposit(host, terms["budget"])
        if host.value < terms["budget"] + minimum_deposit:
            raise Revert(f"Task: value must cover the budget plus a safety deposit of at least {minimum_deposit} wei")
        store = self.storage(host)
        task_id = store.add("count", delta=1)
        deposit = host.value - terms["budget"]
        store.set_address("client", task_id, value=host.caller)
        store.set("kind", task_id, value=TaskKind.STREAM)
        store.set("state", task_id, value=TaskState.FORMING)
        store.set("prescription", task_id, value=int.from_bytes(prescription_hash, "big"))
        store.set("escrow", task_id, value=terms["budget"])
        store.set("deposit", task_id, value=deposit)
        for name, value in terms.items():
            store.set("stream", task_id, name, value=value)
        self._new_version(host, store, task_id, terms["price_per_unit"], terms["response_method"], terms["response_weight"])
        self.emit(
            host, "TaskSubmitted", taskId=task_id, client=host.caller, prescriptionHash=prescription_hash,
            kind=TaskKind.STREAM, maxPayment=terms["budget"], deposit=deposit, bidDeadline=0,
        )
        return task_id

    @staticmethod
    def _check_method(method: int, weight: int) -> None:
        if method >= len(ResponseMethod):
            raise Revert("Task: unknown responseMethod")
        if weight > BPS:
            raise Revert("Task: responseWeight above 10000")

    def _new_version(self, host: Host, store: Storage, task_id: int, price: int, method: int, weight: int) -> int:
        version = store.add("stream", task_id, "version", delta=1)
        store.set("streamTerms", task_id, version, "price", value=price)
        store.set("streamTerms", task_id, version, "method", value=method)
        store.set("streamTerms", task_id, version, "weight", value=weight)
        self.emit(host, "TermsUpdated", taskId=task_id, version=version, pricePerUnit=price, responseMethod=method,
                  responseWeight=weight)
        return version

    def updateTerms(self, host: Host, task_id: int, price: int, method: int, weight: int) -> int:
        store = self._client_stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)
        if price == 0:
            raise Revert("Task: pricePerUnit is zero")
        self._check_method(method, weight)
        return self._new_version(host, store, task_id, price, method, weight)

    def setRequestKey(self, host: Host, task_id: int, key: bytes) -> None:
        store = self._client_stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)
        store.set_address("stream", task_id, "requestKey", value=key)
        self.emit(host, "RequestKeySet", taskId=task_id, key=key)

    def topUp(self, host: Host, task_id: int) -> None:
        store = self._stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)
        if host.value == 0:
            raise Revert("Task: no value sent")
        escrow = store.add("escrow", task_id, delta=host.value)
        self.emit(host, "ToppedUp", taskId=task_id, amount=host.value, escrow=escrow)

    def reportConsensusFailure(self, host: Host, task_id: int) -> None:
        store = self._client_stream(host, task_id, TaskState.ACTIVE)
        self._set_stream_state(host, store, task_id, TaskState.INTERRUPTED)

    def retract(self, host: Host, task_id: int) -> None:
        store = self._client_stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)
        deadline = host.timestamp + store.get("stream", task_id, "settle_window")
        store.set("stream", task_id, "closeDeadline", value=deadline)
        self._set_stream_state(host, store, task_id, TaskState.CLOSING)
        self.queue(host).schedule(deadline, DeadlineKind.CLOSE_STREAM, task_id << 24)

    def settle(
        self, host: Host, task_id: int, provider: bytes, cumulative_units: int, version: int, signature: bytes
    ) -> int:
        store = self._stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED, TaskState.CLOSING)
        if store.get("state", task_id) == TaskState.CLOSING and host.timestamp >= store.get(
            "stream", task_id, "closeDeadline"
        ):
            raise Revert("Task: the settle window has closed")  # even if the queue has not closed it yet
        if not 1 <= version <= store.get("stream", task_id, "version"):
            raise Revert("Task: unknown terms version")
        receipt = StreamReceipt(task_id, provider, cumulative_units, version)
        host.charge(ECRECOVER_GAS)
        try:
            signer = recover_signer(receipt.signing_root(self.slashing.chain_id, self.slashing.genesis_hash), signature)
        except InvalidSignature as exc:
            raise Revert(f"Task: bad receipt signature: {exc}") from None
        key = store.get_address("stream", task_id, "requestKey")
        if signer != store.get_address("client", task_id) and (key == b"\x00" * 20 or signer != key):
            raise Revert("Task: receipt is not signed by the client or its request key")
        settled = store.get("settled", task_id, provider, version)
        if cumulative_units <= settled:
            raise Revert("Task: receipt adds no units over what was settled")
        units = cumulative_units - settled
        amount = units * store.get("streamTerms", task_id, version, "price")
        escrow = store.get("escrow", task_id)
        if amount > escrow:
            raise Revert("Task: stream budget exhausted; the client must top up")
        store.set("settled", task_id, provider, version, value=cumulative_units)
        store.set("escrow", task_id, value=escrow - amount)
        store.add("paid", task_id, delta=amount)
        host.transfer(TASK, provider, amount)
        self.emit(host, "ReceiptSettled", taskId=task_id, provider=provider, termsVersion=version, units=units,
                  amount=amount)
        return amount

    def getStream(self, host: Host, task_id: int) -> tuple:
        store = self._stream(host, task_id)
        version = store.get("stream", task_id, "version")
        return (
            version, store.get("streamTerms", task_id, version, "price"),
            store.get("streamTerms", task_id, version, "method"), store.get("streamTerms", task_id, version, "weight"),
            len(self.bid.subscribers(host, task_id)), store.get_address("stream", task_id, "requestKey"),
            store.get("stream", task_id, "closeDeadline"),
        )

    def settledUnits(self, host: Host, task_id: int, provider: bytes, version: int) -> int:
        return self._stream(host, task_id).get("settled", task_id, provider, version)

    # -- internal, for Bid and the system call --

    def open_for_subscription(self, host: Host, task_id: int) -> tuple[bytes, int, int]:
        """(client, minMemoryMiB, deviceMask) of a stream that accepts subscribers."""
        store = self._stream(host, task_id, TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)
        return (
            store.get_address("client", task_id), store.get("stream", task_id, "min_memory_mib"),
            store.get("stream", task_id, "device_mask"),
        )

    def membership_changed(self, host: Host, task_id: int) -> None:
        """After a subscribe or unsubscribe: Active with ≥ c subscribers (a re-formed council also
        ends an interruption), otherwise Interrupted (or still Forming)."""
        store = self.storage(host)
        count = len(self.bid.subscribers(host, task_id))
        state = store.get("state", task_id)
        if state not in (TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED):
            return
        if count >= store.get("stream", task_id, "council_size"):
            target = TaskState.ACTIVE
        else:
            target = TaskState.FORMING if state == TaskState.FORMING else TaskState.INTERRUPTED
        if target != state:
            self._set_stream_state(host, store, task_id, target)

    def _set_stream_state(self, host: Host, store: Storage, task_id: int, state: int) -> None:
        store.set("state", task_id, value=state)
        self.emit(host, "StreamStateChanged", taskId=task_id, state=state,
                  subscribers=len(self.bid.subscribers(host, task_id)))

    def close_stream(self, host: Host, task_id: int) -> None:
        store = self.storage(host)
        if store.get("state", task_id) != TaskState.CLOSING:
            return
        self.bid.release_subscribers(host, task_id)
        refund = store.get("escrow", task_id) + store.get("deposit", task_id)
        store.set("escrow", task_id, value=0)
        store.set("deposit", task_id, value=0)
        store.set("state", task_id, value=TaskState.SETTLED)
        host.transfer(TASK, store.get_address("client", task_id), refund)
        self.emit(host, "TaskSettled", taskId=task_id, outcome=Outcome.CONFIRMED, refund=refund, paid=store.get("paid", task_id))
