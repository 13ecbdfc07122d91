"""Stream tasks, the provider's side (docs/streams.md): which streams to subscribe to, serving their
requests through the node, and being paid for it.

- the decisions, sans-IO, are `stream_decisions` (`StreamCore`: Task's events in, actions out);
- the receipts held and settled are `stream_receipts.ReceiptBook`;
- `StreamService`: the trio service the provider app starts beside its batch work. It considers
  streams (from events, and at start the open ones of the last RECOVER_TASKS tasks), loads each
  served model into a stream worker per numeric profile (never the council worker: serving goes
  on while a seat re-trains), subscribes, stays logged in at the node's WebSocket (`stream_ws`),
  reports faults it is handed, settles receipts every SETTLE_EVERY_S (at once when a stream is
  Closing), and unsubscribes when a stream closes or the service ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider.chain import ChainClient, Event
from ogpu_node.apps.provider.concurrency import blocking, close_shielded
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.apps.provider.stream_decisions import (
    OPEN,
    ConsiderStream,
    ForgetStream,
    SettleNow,
    StopServing,
    StreamAction,
    StreamCore,
    StreamOffer,
    sampling_params,
    stream_infeasible,
    stream_unprofitable,
    token_cost,
)
from ogpu_node.apps.provider.stream_receipts import Held, ReceiptBook, receipt_signer
from ogpu_node.apps.provider.stream_ws import FaultEvidence, Receipt, Served, Signer, StreamWork, serve_node
from ogpu_node.compute.errors import ComputeError
from ogpu_node.crypto import Keypair
from ogpu_node.files import atomic_write
from ogpu_node.types.prescription import MAX_PRESCRIPTION_BYTES, InvalidPrescription, Prescription
from ogpu_node.types.protocol import DEFAULT_PROFILE, TaskKind, TaskState

log = logging.getLogger("ogpu.provider")

RECOVER_TASKS = 1_000  # how far back a starting provider looks for open streams
MAX_WEIGHTS_BYTES = 1 << 30
SETTLE_EVERY_S = 10.0
SETTLE_RETRY_S = 60.0  # a receipt the chain refused is tried again after this
SHUTDOWN_S = 30.0  # for the unsubscribes of a service that ends
MEASURE_PROMPT = b"The measure of a model: "
MEASURE_TOKENS = 32



def measure_generation(worker: Any, key: str, sampling: Any) -> float:
    """Seconds per output token of `key`'s model in `worker`, after a short warm-up generation."""
    worker.generate(key, MEASURE_PROMPT, 4, 0, sampling)
    began = time.perf_counter()
    out = worker.generate(key, MEASURE_PROMPT, MEASURE_TOKENS, 0, sampling)
    return (time.perf_counter() - began) / max(1, len(out))


def make_sampling(p: Prescription) -> Any:
    """compute.generate.Sampling for the prescription (imported here: the compute layer loads late)."""
    from ogpu_node.compute.generate import Sampling

    temperature, top_k, top_p, margin = sampling_params(p)
    if margin is None:
        return Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, margin=margin)


# -- the service --

STREAM_EVENTS = ("TaskSubmitted", "StreamStateChanged", "TermsUpdated", "RequestKeySet", "TaskSettled", "TaskCancelled")
INBOX = 1_024


class StreamService:
    """The provider's stream work, as a trio service: `await service.run(resources)`; Task's events
    reach it through `feed` (the provider app follows the chain once for both kinds of task)."""

    def __init__(self, chain: ChainClient, private_key: bytes, datadir: Path, ws_url: str, strategy: BidStrategy,
                 worker_factory: Callable[[str], Any], *, fault: str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.chain, self.key = chain, Keypair.from_private_key(private_key)
        self.me = chain.address.lower()
        self.core = StreamCore(self.me, strategy)
        self.book = ReceiptBook(datadir / "streams" / "receipts.json")
        self.ws_url, self.strategy, self.fault, self.wall_clock = ws_url, strategy, fault, wall_clock
        self.worker_factory = worker_factory
        self.signer: Signer | None = None
        self.work: StreamWork | None = None
        self.resources: Resources | None = None
        self._workers: dict[str, tuple[Any, trio.CapacityLimiter]] = {}  # numeric profile → worker, its turns
        self._loaded: dict[int, str] = {}  # task → the profile whose worker holds its model
        self._subscribed: set[int] = set()
        self._signers: dict[int, set[bytes]] = {}  # task → who may sign its receipts (client, request key)
        self._reported: set[tuple[int, bytes, bytes]] = set()
        self._book_turns = trio.CapacityLimiter(1)  # book writes in order, off the loop
        self._settle_now = trio.Event()
        self._send, self._events = trio.open_memory_channel[Event](INBOX)
        self._nursery: trio.Nursery | None = None

    async def feed(self, event: Event) -> None:
        if event.name in STREAM_EVENTS:
            await self._send.send(event)

    async def run(self, resources: Resources, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.resources = resources
        try:
            self.signer = await self._signer()
            self.work = StreamWork(self.signer, fault=self.fault, on_fault=self._report_fault,
                                   on_receipt=self._receipt)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._spawn("stream events", self._decide)
                self._spawn("stream settlement", self._settle_loop)
                task_status.started()
                # The streams we already sit on get their models loaded before we log in: once logged
                # in, our councils' requests come to us, and one we could not answer counts as missed.
                try:
                    await self._recover()
                except (ClientError, OSError) as exc:
                    log.warning("open streams at start: %s", exc)
                nursery.start_soon(serve_node, self.ws_url, self.signer, self.work)
        finally:
            with trio.move_on_after(SHUTDOWN_S) as scope:
                scope.shield = True  # a stopping provider gives its seats back, within a bound
                async with trio.open_nursery() as nursery:
                    for task_id in sorted(self._subscribed):
                        nursery.start_soon(self._unsubscribe, task_id, "the provider stops")
            for worker, _ in self._workers.values():
                await close_shielded(worker)

    async def _signer(self) -> Signer:
        """The provider's key under the node's chain id and genesis hash, asked until the node answers."""
        delay = 1.0
        while True:
            try:
                chain_id = await blocking(self.chain.chain_id)
                return Signer(self.key, chain_id, await blocking(self.chain.genesis_hash))
            except ClientError as exc:
                log.warning("streams: cannot read the chain id and genesis hash: %s", exc)
            await trio.sleep(delay)
            delay = min(2 * delay, 30.0)

    def _spawn(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the service's nursery; its failure is logged, the service goes on."""
        async def guarded() -> None:
            try:
                await fn(*args)
            except (ClientError, OSError) as exc:
                log.warning("%s: %s", what, exc)
            except Exception:
                log.exception("%s failed", what)

        assert self._nursery is not None
        self._nursery.start_soon(guarded)

    # -- decisions into actions --

    async def _decide(self) -> None:
        async for event in self._events:
            task_id = event.args.get("taskId")
            if event.name == "RequestKeySet" and task_id in self._signers:
                self._spawn(f"stream {task_id}: its request key", self._refresh_signers, task_id)
            for action in self.core.event(event):
                self._perform(action)

    def _perform(self, action: StreamAction) -> None:
        task = f"stream {action.task_id}"
        if isinstance(action, ConsiderStream):
            self._spawn(task, self._consider, action)
        elif isinstance(action, SettleNow):
            self._settle_now.set()
        elif isinstance(action, StopServing):
            self._spawn(task, self._stop_serving, action)
        elif isinstance(action, ForgetStream):
            self._signers.pop(action.task_id, None)
            self._spawn(task, self._book, self.book.forget(action.task_id))
        else:
            raise TypeError(f"unknown action {action!r}")

    async def _book(self, changed: bool) -> bool:
        """Write the book if it `changed`: encoded here, written in a thread, writes in order."""
        if changed:
            await blocking(atomic_write, self.book.path, self.book.encode(), limiter=self._book_turns)
        return changed

    async def _recover(self) -> None:
        """At start: the open streams of the last RECOVER_TASKS tasks (some we may be subscribed to),
        and the receipts of streams that ended while we were away dropped."""
        count = await blocking(self.chain.task_count)
        held = {t for t, _ in self.book.held}
        for task_id in range(max(1, count - RECOVER_TASKS + 1), count + 1):
            task = await blocking(self.chain.task_record, task_id)
            if task.kind != TaskKind.STREAM or str(task.client).lower() == self.me:
                continue
            if task.state in OPEN:
                for action in self.core.consider(task_id, resume=True):
                    if isinstance(action, ConsiderStream):
                        await self._consider(action)
                    else:
                        self._perform(action)
            elif task_id in held and task.state != TaskState.CLOSING:
                await self._book(self.book.forget(task_id))

    # -- considering a stream: documents, feasibility, the model, its cost, the subscription --

    async def _consider(self, action: ConsiderStream) -> None:
        task_id = action.task_id
        try:
            why = await self._try_subscribe(task_id)
        except (ClientError, InvalidPrescription, ComputeError, ImportError) as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 — one stream's failure is logged; the others go on
            log.exception("stream %d: considering it failed", task_id)
            why = str(exc)
        if why is not None:
            log.info("stream %d: not subscribing: %s", task_id, why)
            await self._unload(task_id)
            if action.resume and task_id not in self._subscribed:  # found subscribed at start: give the seat back
                try:
                    sitting = self.me in await blocking(self.chain.subscribers, task_id)
                except ClientError:
                    sitting = False
                if sitting:
                    await self._unsubscribe(task_id, why)

    async def _try_subscribe(self, task_id: int) -> str | None:
        """Subscribe to the stream if we can serve it at a profit; why not, otherwise."""
        assert self.resources is not None and self.work is not None
        task = await blocking(self.chain.task_record, task_id)
        if task.kind != TaskKind.STREAM or task.state not in OPEN:
            return f"it is {TaskState(task.state).label}"
        raw = await blocking(self.chain.get_blob, bytes(task.prescription_hash), MAX_PRESCRIPTION_BYTES)
        p = await blocking(Prescription.from_json, raw)
        if p.kind != "stream":
            return "its prescription is not a stream's"
        offer = StreamOffer.of(task_id, p)
        if (why := stream_infeasible(offer, self.resources)) is not None:
            return why
        await self._refresh_signers(task_id, task.client)
        assert p.M.initial_weights is not None
        weights = await blocking(self.chain.get_blob, p.M.initial_weights, MAX_WEIGHTS_BYTES)
        profile = offer.numeric_profile or DEFAULT_PROFILE
        worker, turns = self._worker(profile)
        key, sampling = f"stream-{task_id}", make_sampling(p)
        self._loaded[task_id] = profile
        await blocking(worker.load_served, key, p.M.family, p.M.hparams, weights, limiter=turns)
        seconds = await blocking(measure_generation, worker, key, sampling, limiter=turns)
        price = (await blocking(self.chain.stream, task_id)).price_per_unit  # the current terms version's
        if (why := stream_unprofitable(price, seconds, self.strategy)) is not None:
            return why
        if self.me not in await blocking(self.chain.subscribers, task_id):
            await blocking(self.chain.send, f"stream {task_id}: subscribe", self.chain.bid.functions.subscribe(task_id))
            resumed = ""
        else:
            resumed = " (already subscribed)"
        self._subscribed.add(task_id)
        if not self.core.subscribed(task_id, seconds):  # it closed or ended while we loaded
            await self._unsubscribe(task_id, "the stream closed meanwhile")
            return "the stream closed meanwhile"
        self.work.served[task_id] = Served(task_id, key, p.e.kind, sampling, offer.max_response_ms, worker, turns)
        log.info("stream %d: subscribed%s: %s model, e %s, %.1f ms per token, %d wei per token (our floor %d)",
                 task_id, resumed, p.M.family, p.e.kind, seconds * 1000, price, token_cost(seconds, self.strategy))
        return None

    def _worker(self, profile: str) -> tuple[Any, trio.CapacityLimiter]:
        if profile not in self._workers:
            self._workers[profile] = (self.worker_factory(profile), trio.CapacityLimiter(1))
        return self._workers[profile]

    async def _unload(self, task_id: int) -> None:
        """Close a profile's worker once none of its models is served (it may hold large weights)."""
        profile = self._loaded.pop(task_id, None)
        if profile is None or profile in self._loaded.values() or profile not in self._workers:
            return
        worker, _ = self._workers.pop(profile)
        await close_shielded(worker)

    async def _stop_serving(self, action: StopServing) -> None:
        assert self.work is not None
        self.work.served.pop(action.task_id, None)
        log.info("stream %d: serving ends: %s", action.task_id, action.why)
        if action.unsubscribe and action.task_id in self._subscribed:
            await self._unsubscribe(action.task_id, action.why)
        self._subscribed.discard(action.task_id)
        await self._unload(action.task_id)

    async def _unsubscribe(self, task_id: int, why: str) -> None:
        what = f"stream {task_id}: unsubscribe"
        try:
            await blocking(self.chain.send, what, self.chain.bid.functions.unsubscribe(task_id))
        except ClientError as exc:
            log.warning("%s: %s", what, exc)
        else:
            log.info("stream %d: unsubscribed (%s)", task_id, why)
        finally:
            self._subscribed.discard(task_id)

    # -- faults --

    async def _report_fault(self, evidence: FaultEvidence) -> None:
        ident = (evidence.task_id, evidence.request_id, evidence.offender)
        if ident in self._reported:
            return
        self._reported.add(ident)
        what = (f"stream {evidence.task_id}: reportStreamFault against 0x{evidence.offender.hex()} on request "
                f"0x{evidence.request_id.hex()[:12]}")
        try:
            call = self.chain.slashing.functions.reportStreamFault(evidence.request, evidence.response,
                                                                   evidence.verdicts)
            await blocking(self.chain.send, what, call)
        except ClientError as exc:  # refused by its estimate, or mined after another member's report
            try:
                punished = await blocking(self.chain.fault_punished, *ident)
            except ClientError:
                punished = False
            if punished:  # every member that signed against it got the evidence: one report is taken
                log.info("%s: already punished (another member reported it first)", what)
            else:
                log.warning("%s: %s", what, exc)
        except Exception as exc:  # noqa: BLE001 — e.g. a node whose Slashing ABI has no reportStreamFault
            log.warning("%s: cannot send: %s", what, exc)
        else:
            log.info("%s: reported", what)

    # -- receipts and settlement --

    async def _refresh_signers(self, task_id: int, client: Any = None) -> None:
        """The accounts whose receipts for `task_id` the chain pays: its client and its request key."""
        if client is None:
            client = (await blocking(self.chain.task_record, task_id)).client
        key = _address((await blocking(self.chain.stream, task_id)).request_key)
        self._signers[task_id] = {_address(client)} | ({key} if key != bytes(20) else set())

    async def _receipt(self, receipt: Receipt) -> None:
        assert self.signer is not None
        me = bytes.fromhex(self.me.removeprefix("0x"))
        signer = receipt_signer(receipt, me, self.signer.chain_id, self.signer.genesis_hash)
        if signer not in self._signers.get(receipt.task_id, ()):
            try:
                await self._refresh_signers(receipt.task_id)  # a request key set since, or a restart
            except ClientError as exc:
                log.warning("stream %d: receipt not checked: %s", receipt.task_id, exc)
                return
            if signer not in self._signers[receipt.task_id]:
                log.warning("stream %d: a receipt for %d units is not signed by the client or its request key",
                            receipt.task_id, receipt.units)
                return
        if await self._book(self.book.offer(receipt.task_id, receipt.version, receipt.units, receipt.signature)):
            log.debug("stream %d: receipt for %d units (terms version %d)", receipt.task_id, receipt.units,
                      receipt.version)
            if receipt.task_id in self.core.closing:
                self._settle_now.set()

    async def _settle_loop(self) -> None:
        while True:
            with trio.move_on_after(SETTLE_EVERY_S):
                await self._settle_now.wait()
            self._settle_now = trio.Event()
            await self._check_seats()
            for task_id, version, held in self.book.due(time.monotonic()):
                try:
                    await self._settle(task_id, version, held)
                except OSError as exc:  # the book could not be written: the next round tries again
                    log.error("stream %d: receipt book: %s", task_id, exc)

    async def _check_seats(self) -> None:
        """Seats can be taken from us without an event of Task's (Slashing.reportStreamFault): look."""
        for task_id in sorted(self._subscribed):
            try:
                sitting = self.me in await blocking(self.chain.subscribers, task_id)
            except ClientError:
                continue
            if not sitting and task_id in self._subscribed:
                for action in self.core.seat_lost(task_id):
                    self._perform(action)

    async def _settle(self, task_id: int, version: int, held: Held) -> None:
        units, what = held.units, f"stream {task_id}: settle {held.units} units of terms version {version}"
        try:
            receipt = await blocking(self.chain.send, what, self.chain.task.functions.settle(
                task_id, self.chain.address, units, version, held.signature))
        except ClientError as exc:
            try:  # the chain may have paid it already (a settlement sent before a restart)
                on_chain = await blocking(self.chain.settled_units, task_id, version)
            except ClientError:
                on_chain = 0
            await self._book(self.book.settled(task_id, version, on_chain))
            if on_chain < units:
                self.book.hold_back(task_id, version, time.monotonic() + SETTLE_RETRY_S)
                log.warning("%s: %s", what, exc)
            return
        await self._book(self.book.settled(task_id, version, units))
        log.info("stream %d: settled %d units of terms version %d: paid %d wei", task_id, units, version,
                 self.chain.receipt_paid(receipt))


def _address(value: Any) -> bytes:
    """20 bytes from web3's checksummed text (or bytes)."""
    return bytes(value) if isinstance(value, bytes | bytearray) else bytes.fromhex(str(value).removeprefix("0x"))


__all__ = ["StreamService", "make_sampling", "measure_generation"]
