"""Stream tasks, the provider's decisions (docs/streams.md), sans-IO: whether a stream can be served
(`stream_infeasible`) and pays (`stream_unprofitable`: the price per output token against our cost of
one, measured by a generation in the stream's worker), how members sample, and `StreamCore` (Task's
events in, actions out: consider a new stream, settle now, stop serving, forget). The service that
carries the actions out is `streams.StreamService`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.strategy import BidStrategy, Resources
from ogpu_node.types.prescription import Prescription
from ogpu_node.types.protocol import TaskKind, TaskState

OPEN = (TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)  # states that take subscribers
EQUIVALENCES = ("tokens", "possible")

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


__all__ = [
    "EQUIVALENCES", "OPEN", "ConsiderStream", "ForgetStream", "SettleNow", "StopServing", "StreamAction", "StreamCore",
    "StreamOffer", "sampling_params", "stream_infeasible", "stream_unprofitable", "token_cost",
]
