"""Stream tasks, the provider's side (docs/streams.md): which streams to subscribe to, serving their
requests through the node, and being paid for it.

- Decisions, sans-IO: `stream_infeasible` and `stream_unprofitable` (the price per output token
  against our cost of one, measured by a generation in the stream's worker), `StreamCore` (Task's
  events in, actions out: consider a new stream, settle now, stop serving, forget);
- `ReceiptBook`: the highest receipt per (task, terms version) and what of it is settled, in the
  datadir (`streams/receipts.json`, written whole), so a receipt is settled once, even across restarts;
- `StreamService`: the trio service the provider app starts beside its batch work. It considers
  streams (from events, and at start the open ones of the last RECOVER_TASKS tasks), loads each
  served model into a stream worker per numeric profile (never the council worker: serving goes
  on while a seat re-trains), subscribes, stays logged in at the node's WebSocket (`stream_ws`),
  reports faults it is handed, settles receipts every SETTLE_EVERY_S (at once when a stream is
  Closing), and unsubscribes when a stream closes or the service ends.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ogpu_node.apps.client import ClientError
from ogpu_node.apps.provider.chain import ChainClient, Event
from ogpu_node.apps.provider.concurrency import blocking, close_shielded
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.apps.provider.stream_ws import FaultEvidence, Receipt, Served, Signer, StreamWork, serve_node
from ogpu_node.compute.errors import ComputeError
from ogpu_node.crypto import Keypair
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.files import atomic_write
from ogpu_node.jsontext import loads_bounded
from ogpu_node.types.prescription import MAX_PRESCRIPTION_BYTES, InvalidPrescription, Prescription
from ogpu_node.types.protocol import DEFAULT_PROFILE, TaskKind, TaskState
from ogpu_node.types.signing import StreamReceipt

log = logging.getLogger("ogpu.provider")

OPEN = (TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)  # states that take subscribers
EQUIVALENCES = ("tokens", "possible")
RECOVER_TASKS = 1_000  # how far back a starting provider looks for open streams
MAX_WEIGHTS_BYTES = 1 << 30
SETTLE_EVERY_S = 10.0
SETTLE_RETRY_S = 60.0  # a receipt the chain refused is tried again after this
SHUTDOWN_S = 30.0  # for the unsubscribes of a service that ends
MEASURE_PROMPT = b"The measure of a model: "
MEASURE_TOKENS = 32
MAX_BOOK_BYTES = 16 << 20


# -- decisions --


@dataclass(frozen=True)
class StreamOffer:
    """What the decisions need of a stream prescription."""

    task_id: int
    family: str
    devices: tuple[str, ...]
    min_memory_mib: int
    numeric_profile: str | None
    equivalence: str
    price_per_unit: int
    max_response_ms: int
    has_weights: bool

    @classmethod
    def of(cls, task_id: int, p: Prescription) -> StreamOffer:
        i = p.I
        assert i.price_per_unit is not None and i.max_response_ms is not None  # a stream prescription has them
        return cls(task_id, p.M.family, i.hardware.devices, i.hardware.min_memory_mib, i.numeric_profile, p.e.kind,
                   i.price_per_unit, i.max_response_ms, p.M.initial_weights is not None)


def stream_infeasible(offer: StreamOffer, res: Resources) -> str | None:
    """Why this provider cannot serve the stream, before loading its model; None if it can try.
    (An unknown model family or weights that do not load are found by loading them.)"""
    if not offer.has_weights:
        return "the prescription names no weights to serve (M.initial_weights)"
    if offer.equivalence not in EQUIVALENCES:
        return f"equivalence {offer.equivalence!r} is not one a stream member can check ({', '.join(EQUIVALENCES)})"
    if res.device not in offer.devices:
        return f"needs a device in {', '.join(offer.devices)}, this provider has {res.device}"
    if offer.numeric_profile is not None and offer.numeric_profile not in res.profiles:
        return f"numeric profile {offer.numeric_profile} is not available here"
    if offer.min_memory_mib > res.memory_mib:
        return f"needs {offer.min_memory_mib} MiB, this provider has {res.memory_mib} MiB"
    return None


def token_cost(seconds_per_token: float, strategy: BidStrategy) -> int:
    """Our price floor for one output token: its measured seconds × cost per second × (1 + margin)."""
    return max(1, math.ceil(seconds_per_token * strategy.cost_per_second * (1.0 + strategy.margin)))


def stream_unprofitable(price_per_unit: int, seconds_per_token: float, strategy: BidStrategy) -> str | None:
    cost = token_cost(seconds_per_token, strategy)
    if price_per_unit < cost:
        return (f"unprofitable: {price_per_unit} wei per token is below our {cost} wei "
                f"({seconds_per_token * 1000:.1f} ms per token, margin {strategy.margin:.0%})")
    return None


def sampling_params(p: Prescription) -> tuple[float, int | None, float | None, float | None]:
    """(temperature, top_k, top_p, margin) members generate with: greedy under `tokens`; under
    `possible`, the prescription's temperature (1.0 when e names none) and truncation."""
    e = p.e
    if e.kind == "tokens":
        return 0.0, None, None, None
    temperature = getattr(e, "temperature", None)
    return (1.0 if temperature is None else float(temperature)), e.top_k, e.top_p, e.margin


# -- the decision core --


@dataclass(frozen=True)
class ConsiderStream:
    """Fetch, check, load, measure, and subscribe if it pays (`resume`: we may be subscribed already)."""

    task_id: int
    resume: bool = False


@dataclass(frozen=True)
class SettleNow:
    task_id: int


@dataclass(frozen=True)
class StopServing:
    """Serve the stream no more; `unsubscribe` while its subscription still holds our seat stake."""

    task_id: int
    why: str
    unsubscribe: bool


@dataclass(frozen=True)
class ForgetStream:
    """The stream is over: its receipts can no longer be settled."""

    task_id: int


StreamAction = ConsiderStream | SettleNow | StopServing | ForgetStream


class StreamCore:
    """Which streams to consider and when to stop, from Task's events and what the service reports."""

    def __init__(self, me: str, strategy: BidStrategy) -> None:
        self.me = "0x" + me.lower().removeprefix("0x")
        self.strategy = strategy
        self.seen: set[int] = set()  # considered once: a declined stream is not fetched again
        self.serving: dict[int, float] = {}  # task → measured seconds per output token
        self.closing: set[int] = set()
        self.ended: set[int] = set()

    def event(self, event: Event) -> list[StreamAction]:
        a, name = event.args, event.name
        task_id = a.get("taskId")
        if name == "TaskSubmitted":
            if a["kind"] != TaskKind.STREAM or str(a["client"]).lower() == self.me:
                return []
            return self.consider(task_id)
        if name == "StreamStateChanged" and a["state"] == TaskState.CLOSING and task_id in self.seen:
            self.closing.add(task_id)
            out: list[StreamAction] = [SettleNow(task_id)]
            if self.serving.pop(task_id, None) is not None:
                out.append(StopServing(task_id, "the stream is closing", unsubscribe=True))
            return out
        if name == "TermsUpdated" and task_id in self.serving:
            why = stream_unprofitable(a["pricePerUnit"], self.serving[task_id], self.strategy)
            if why is not None:
                del self.serving[task_id]
                return [StopServing(task_id, f"terms version {a['version']}: {why}", unsubscribe=True)]
            return []
        if name in ("TaskSettled", "TaskCancelled") and task_id in self.seen and task_id not in self.ended:
            self.ended.add(task_id)
            self.closing.discard(task_id)
            out = [ForgetStream(task_id)]
            if self.serving.pop(task_id, None) is not None:  # its subscribers were released with it
                out.insert(0, StopServing(task_id, "the stream has ended", unsubscribe=False))
            return out
        return []

    def consider(self, task_id: int, resume: bool = False) -> list[StreamAction]:
        if task_id in self.seen or task_id in self.ended:
            return []
        self.seen.add(task_id)
        return [ConsiderStream(task_id, resume)]

    def seat_lost(self, task_id: int) -> list[StreamAction]:
        """The chain no longer lists us among the stream's subscribers (a fault proved against us took
        the seat): stop serving it; it is not considered again."""
        if self.serving.pop(task_id, None) is None:
            return []
        return [StopServing(task_id, "our seat is gone (a fault was proved against us)", unsubscribe=False)]

    def subscribed(self, task_id: int, seconds_per_token: float) -> bool:
        """The service subscribed (or found itself subscribed); False if the stream ended meanwhile."""
        if task_id in self.ended or task_id in self.closing:
            return False
        self.serving[task_id] = seconds_per_token
        return True


# -- receipts --


@dataclass
class Held:
    units: int  # the highest cumulative units received
    signature: bytes
    settled: int = 0  # what the chain has paid up to
    retry_at: float = 0.0  # monotonic; not kept across restarts


class ReceiptBook:
    """The highest receipt per (task, terms version) and the units settled of it, read from `path`.
    Changes are in memory until `save` (or `encode`, for a caller that writes off its event loop);
    each method that changes something says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[tuple[int, int], Held] = {}
        try:
            with open(path, "rb") as f:
                doc = loads_bounded(f.read(MAX_BOOK_BYTES + 1), max_bytes=MAX_BOOK_BYTES)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # a damaged book: the chain's settledUnits still bounds payment
            log.error("receipt book %s is unreadable (%s): starting empty", path, exc)
            return
        for entry in doc.get("receipts", []):
            try:
                key = (int(entry["task"]), int(entry["version"]))
                self.held[key] = Held(int(entry["units"]), bytes.fromhex(entry["signature"]), int(entry["settled"]))
            except (KeyError, ValueError, TypeError):
                log.error("receipt book %s: skipping a malformed entry", path)

    def offer(self, task_id: int, version: int, units: int, signature: bytes) -> bool:
        """Keep the receipt if it is higher than the one held; whether it was kept."""
        held = self.held.get((task_id, version))
        if held is not None and units <= held.units:
            return False
        settled = 0 if held is None else held.settled
        self.held[(task_id, version)] = Held(units, signature, settled)
        return True

    def due(self, now: float, tasks: set[int] | None = None) -> list[tuple[int, int, Held]]:
        """(task, version, receipt) whose units exceed what is settled, not held back; of `tasks` if given."""
        return [(t, v, h) for (t, v), h in sorted(self.held.items())
                if h.units > h.settled and h.retry_at <= now and (tasks is None or t in tasks)]

    def settled(self, task_id: int, version: int, units: int) -> bool:
        held = self.held.get((task_id, version))
        if held is None or units <= held.settled:
            return False
        held.settled = units
        return True

    def hold_back(self, task_id: int, version: int, until: float) -> None:
        held = self.held.get((task_id, version))
        if held is not None:
            held.retry_at = until

    def forget(self, task_id: int) -> bool:
        if not any(t == task_id for t, _ in self.held):
            return False
        self.held = {key: h for key, h in self.held.items() if key[0] != task_id}
        return True

    def encode(self) -> bytes:
        doc = {"receipts": [{"task": t, "version": v, "units": h.units, "signature": h.signature.hex(),
                             "settled": h.settled} for (t, v), h in sorted(self.held.items())]}
        return json.dumps(doc).encode()

    def save(self) -> None:
        atomic_write(self.path, self.encode())


def receipt_signer(receipt: Receipt, provider: bytes, chain_id: int, genesis_hash: bytes) -> bytes | None:
    """Who signed the receipt for `provider` (None if the signature does not recover)."""
    message = StreamReceipt(receipt.task_id, provider, receipt.units, receipt.version)
    try:
        return recover_signer(message.signing_root(chain_id, genesis_hash), receipt.signature)
    except InvalidSignature:
        return None


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


__all__ = [
    "ConsiderStream", "ForgetStream", "Held", "ReceiptBook", "SettleNow", "StopServing", "StreamAction", "StreamCore",
    "StreamOffer", "StreamService", "make_sampling", "measure_generation", "receipt_signer", "sampling_params",
    "stream_infeasible", "stream_unprofitable", "token_cost",
]
