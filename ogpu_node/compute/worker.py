"""A persistent worker: one process under one numeric profile, many jobs (training, and serving streams).

torch reads its numeric environment once, when it loads (profile.py), so a profile needs its own
process; starting one and importing torch costs seconds, so the process is kept and fed jobs.
The process is a fresh interpreter running serve.py, its environment handed to it at exec
(`subprocess.Popen(env=…)`): this process's `os.environ` is never written, so other threads may
read it at any time. Messages over the socket are a JSON header followed by raw byte payloads
(specs, checkpoints as safetensors), never pickled tensors. A request is `{"op": …, "payloads": n}`
+ n payloads; a reply is `{"ok": true, …}` + one payload, or `{"ok": false, "error": …, "type": …}`.

The worker keeps the last SPEC_CACHE decoded specs, keyed by the keccak of their encoded bytes: the
parent mirrors that cache and sends a spec (with its dataset) only when the worker lacks it, so the
segments of one task do not resend the dataset.

For streams it keeps up to SERVED_MODELS models by key (`load_served`, oldest loaded evicted) and
generates and checks with them (`generate`, `check`: generate.py), so torch never runs in the
caller. The parent keeps each served model's weights too: a worker that died and restarted gets
its models reloaded before the next generation, without the caller's help.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NamedTuple

import ogpu_node
from ogpu_node.compute.errors import ProfileUnavailable, WorkerFailed
from ogpu_node.compute.profile import get_profile, worker_env
from ogpu_node.compute.serve import BOOT, SERVED_MODELS
from ogpu_node.crypto import keccak

if TYPE_CHECKING:
    from types import TracebackType

    from ogpu_node.compute.faults import Fault
    from ogpu_node.compute.generate import Sampling
    from ogpu_node.compute.trainer import SegmentResult, TrainSpec

SPEC_CACHE = 4  # decoded specs (datasets) a worker keeps
START_TIMEOUT = 300.0  # seconds for a fresh process to import torch and check its profile
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ogpu_node.__file__)))  # the worker imports from here

_LIVE: set[subprocess.Popen] = set()  # started workers not yet reaped: ended when this process exits


@atexit.register
def _end_live() -> None:
    """Workers do not outlive the node (as multiprocessing's daemon processes would not)."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class SegmentRun(NamedTuple):
    checkpoint: bytes
    losses: list[float]
    state_hashes: dict[int, bytes]  # empty for a faulty run
    states: dict[int, bytes]  # the checkpoints at the hash steps, when kept (keep_states)
    cpu_s: float  # process CPU time of the training itself, in the worker
    wall_s: float  # wall time of the training itself, in the worker


class WorkerInfo(NamedTuple):
    """What a worker process trains under, as it sees itself."""

    env: dict[str, str | None]  # profile.NUMERIC_VARS in its environment (None: unset)
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability()
    threads: int  # torch.get_num_threads()


class Worker:
    """A long-lived training process under `profile` (None: this environment, with `threads`
    threads). One job at a time; safe to share between threads. Starts on first use; if the
    process dies, the call that notices raises WorkerFailed and the next one starts a fresh one."""

    def __init__(self, profile: str | None, threads: int = 1) -> None:
        if profile is not None:
            threads = get_profile(profile).threads  # UnknownProfile here, not in the child
        elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads!r}")
        self.profile, self.threads = profile, threads
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._cached: OrderedDict[str, None] = OrderedDict()  # mirrors the worker's spec cache
        self._keys: weakref.WeakKeyDictionary[TrainSpec, str] = weakref.WeakKeyDictionary()
        self._served: OrderedDict[str, tuple[str, dict[str, Any], bytes]] = OrderedDict()  # key -> M, oldest first
        self._loaded: set[str] = set()  # the keys of _served this process holds

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with self._lock:
            self._ensure()

    def close(self) -> None:
        """Stop the process; a job in flight in another thread is aborted (it raises WorkerFailed)."""
        if not self._lock.acquire(blocking=False):
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            self._lock.acquire()
        try:
            self._discard()
        finally:
            self._lock.release()

    def train(
        self,
        spec: TrainSpec,
        start: bytes | None,
        steps: int,
        hash_steps: Iterable[int] = (),
        fault: Fault | None = None,
        timeout: float | None = None,
        keep_states: bool = False,
    ) -> SegmentRun:
        """`train_segment` (or `train_faulty` with `fault`) in the worker."""
        from ogpu_node.compute.trainer import encode_spec

        with self._lock:
            self._ensure()
            encoded = None
            key = self._keys.get(spec)
            if key is None:  # encode once per spec object: it copies the dataset
                encoded = encode_spec(spec)
                key = self._keys[spec] = keccak(encoded).hex()
            has_spec = key not in self._cached
            payloads: list[bytes] = []
            if has_spec:
                payloads.append(encoded if encoded is not None else encode_spec(spec))
            if start is not None:
                payloads.append(start)
            self._cached[key] = None
            self._cached.move_to_end(key)
            evict = [self._cached.popitem(last=False)[0] for _ in range(len(self._cached) - SPEC_CACHE)]
            header = {
                "op": "train", "spec": key, "has_spec": has_spec, "evict": evict, "has_start": start is not None,
                "steps": steps, "hash_steps": sorted(set(hash_steps)),
                "fault": None if fault is None else fault.to_json(), "payloads": len(payloads),
                "keep_states": keep_states,
            }
            try:
                reply, ckpt = self._call(header, payloads, timeout)
            except WorkerFailed:
                self._cached.pop(key, None)  # the worker may not have decoded it: resend next time
                raise
        hashes = {int(s): bytes.fromhex(h) for s, h in reply["state_hashes"].items()}
        states: dict[int, bytes] = {}
        if reply["states"]:  # cut the kept states off the payload (copying only then)
            offset = len(ckpt) - sum(size for _, size in reply["states"])
            body = ckpt[:offset]
            for step, size in reply["states"]:
                states[int(step)] = ckpt[offset:offset + size]
                offset += size
            ckpt = body
        return SegmentRun(ckpt, reply["losses"], hashes, states, reply["cpu_s"], reply["wall_s"])

    def measure_throughput(self, seconds: float = 1.0) -> float:
        """FLOP/s of this worker training a small reference MLP for about `seconds`."""
        with self._lock:
            self._ensure()
            reply, _ = self._call({"op": "measure", "seconds": seconds, "payloads": 0}, [], None)
        return float(reply["flops_per_s"])

    def describe(self) -> WorkerInfo:
        """The worker's numeric environment and the CPU capability and threads torch runs with."""
        with self._lock:
            self._ensure()
            reply, _ = self._call({"op": "describe", "payloads": 0}, [], None)
        return WorkerInfo(reply["env"], reply["cpu_capability"], reply["threads"])

    def load_served(self, key: str, family: str, hparams: dict[str, Any], weights: bytes,
                    timeout: float | None = None) -> None:
        """Load a stream's model (generate.load_served_model: a checkpoint or a weights file) under
        `key`, replacing what the key held; past SERVED_MODELS models the oldest loaded is evicted.
        Bad family, hparams or weights: WorkerFailed naming InvalidModelSpec / InvalidCheckpoint."""
        if not isinstance(key, str) or not isinstance(weights, bytes | bytearray):
            raise TypeError("load_served: key is a str and weights are bytes")
        with self._lock:
            self._ensure()
            self._served.pop(key, None)
            self._loaded.discard(key)
            evict = [self._served.popitem(last=False)[0] for _ in range(len(self._served) + 1 - SERVED_MODELS)]
            self._load(key, (family, hparams, bytes(weights)), evict, timeout)

    def generate(self, key: str, prompt: bytes, max_tokens: int, seed: int, sampling: Sampling,
                 timeout: float | None = None, on_tokens: Callable[[int, bytes], None] | None = None,
                 every: int = 8) -> bytes:
        """generate.generate with `key`'s model: `max_tokens` bytes after `prompt`. With `on_tokens`,
        it is called with (offset, tokens) for each `every` tokens as the worker decides them (from
        this thread, before the whole response returns)."""
        header = {"op": "generate", "key": key, "max_tokens": max_tokens, "seed": seed,
                  "sampling": sampling.to_json(), "payloads": 1,
                  "partial_every": every if on_tokens is not None else 0}
        with self._lock:
            self._ensure_served(key, timeout)
            _, response = self._call(header, [bytes(prompt)], timeout, on_tokens)
        return response

    def check(self, key: str, prompt: bytes, response: bytes, seed: int, sampling: Sampling, kind: str,
              max_tokens: int | None = None, timeout: float | None = None) -> bool:
        """generate.check with `key`'s model: does `response` pass equivalence `kind`?"""
        header = {"op": "check", "key": key, "seed": seed, "sampling": sampling.to_json(), "kind": kind,
                  "max_tokens": max_tokens, "payloads": 2}
        with self._lock:
            self._ensure_served(key, timeout)
            reply, _ = self._call(header, [bytes(prompt), bytes(response)], timeout)
        return bool(reply["agrees"])

    # --- under self._lock ---

    def _load(self, key: str, model: tuple[str, dict[str, Any], bytes], evict: list[str],
              timeout: float | None) -> None:
        family, hparams, weights = model
        self._loaded.difference_update(evict)
        header = {"op": "load_served", "key": key, "family": family, "hparams": hparams, "evict": evict,
                  "payloads": 1}
        self._call(header, [weights], timeout)
        self._served[key] = model
        self._loaded.add(key)

    def _ensure_served(self, key: str, timeout: float | None) -> None:
        """Start the process if need be, and reload `key`'s model into a fresh one."""
        if key not in self._served:
            raise LookupError(f"no served model {key!r:.80}: load_served it first")
        self._ensure()
        if key not in self._loaded:
            self._load(key, self._served[key], [], timeout)


    def _ensure(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            code = self._discard()
            raise WorkerFailed(f"training worker died (exit code {code})")
        ours, theirs = socket.socketpair()
        try:
            args = [sys.executable, "-c", BOOT, PACKAGE_ROOT, str(theirs.fileno()), self.profile or "",
                    str(self.threads)]
            # The environment goes to the child at exec; ours is only read (profile.worker_env).
            proc = subprocess.Popen(args, env=worker_env(self.profile, self.threads),
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise WorkerFailed(f"cannot start a training worker: {e}") from None
        finally:
            theirs.close()  # so that the child's death reads as EOF here
        _LIVE.add(proc)
        self._proc, self._conn = proc, Connection(ours.detach())
        self._cached.clear()
        self._loaded.clear()
        try:
            self._reply(START_TIMEOUT)
        except WorkerFailed as e:
            self._discard(kill=True)
            if e.error_type == ProfileUnavailable.__name__:
                raise ProfileUnavailable(str(e).removeprefix("ProfileUnavailable: ")) from None
            raise

    def _call(self, header: dict[str, Any], payloads: list[bytes], timeout: float | None,
              on_partial: Callable[[int, bytes], None] | None = None) -> tuple[dict, bytes]:
        try:
            self._conn.send_bytes(json.dumps(header).encode())
            for payload in payloads:
                self._conn.send_bytes(payload)
        except OSError:
            code = self._discard(kill=True)
            raise WorkerFailed(f"training worker died (exit code {code})") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            header, blob = self._reply(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if "partial" not in header:
                return header, blob
            if on_partial is not None:
                try:
                    on_partial(int(header["partial"]), blob)
                except Exception:  # noqa: BLE001 — the caller's preview failed; the job and the pipe go on
                    on_partial = None

    def _reply(self, timeout: float | None) -> tuple[dict, bytes]:
        try:
            if not self._conn.poll(timeout):
                self._discard(kill=True)  # mid-job: the pipe is out of step, so the process goes
                raise WorkerFailed(f"training worker timed out after {timeout} s")
            header = json.loads(self._conn.recv_bytes())
            if not header["ok"]:
                raise WorkerFailed(header["error"], header["type"])
            return header, self._conn.recv_bytes()
        except (EOFError, OSError):
            code = self._discard(kill=True)
            raise WorkerFailed(f"training worker died (exit code {code})") from None

    def _discard(self, kill: bool = False) -> int | None:
        """Close the socket and end the process (gracefully unless `kill`); its exit code."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        self._cached.clear()
        self._loaded.clear()
        if conn is not None:
            conn.close()  # an idle worker reads EOF and exits
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _LIVE.discard(proc)
        return proc.returncode


def train_segment_in_profile(
    profile: str,
    spec: TrainSpec,
    start: bytes | None,
    steps: int,
    hash_steps: Iterable[int] = (),
    timeout: float | None = None,
) -> SegmentResult:
    """`train_segment` in a fresh worker process under `profile`; blocks until it finishes.
    (A provider keeps a `Worker` instead, to pay the process start once.)"""
    from ogpu_node.compute.trainer import SegmentResult

    with Worker(profile) as worker:
        run = worker.train(spec, start, steps, hash_steps, timeout=timeout)
    return SegmentResult(run.checkpoint, run.losses, run.state_hashes)
