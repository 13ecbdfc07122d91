"""A persistent training worker: one spawned process under one numeric profile, many jobs.

torch reads its numeric environment once, when it loads (profile.py), so a profile needs its own
process; starting one and importing torch costs seconds, so the process is kept and fed jobs.
Messages over the pipe are a JSON header followed by raw byte payloads (specs, checkpoints as
safetensors), never pickled tensors. A request is `{"op": …, "payloads": n}` + n payloads; a reply is
`{"ok": true, …}` + one payload, or `{"ok": false, "error": …, "type": …}`.

The worker keeps the last SPEC_CACHE decoded specs, keyed by the keccak of their encoded bytes: the
parent mirrors that cache and sends a spec (with its dataset) only when the worker lacks it, so the
segments of one task do not resend the dataset.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from ogpu_node.compute.errors import ProfileUnavailable, WorkerFailed
from ogpu_node.compute.profile import _ENV_LOCK, _environ, apply_profile, get_profile, profile_env
from ogpu_node.crypto import keccak

if TYPE_CHECKING:
    from types import TracebackType

    from ogpu_node.compute.faults import Fault
    from ogpu_node.compute.trainer import TrainSpec

SPEC_CACHE = 4  # decoded specs (datasets) a worker keeps
START_TIMEOUT = 300.0  # seconds for a fresh process to import torch and check its profile
REFERENCE_MLP = {"in_dim": 256, "out_dim": 10, "hidden": [256, 256]}  # measure_throughput's model
REFERENCE_BATCH = 64


class SegmentRun(NamedTuple):
    checkpoint: bytes
    losses: list[float]
    state_hashes: dict[int, bytes]  # empty for a faulty run
    cpu_s: float  # process CPU time of the training itself, in the worker
    wall_s: float  # wall time of the training itself, in the worker


# --- the worker process ----------------------------------------------------------------------------


def _error(e: BaseException) -> bytes:
    return json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}", "type": type(e).__name__}).encode()


def _train(header: dict[str, Any], payloads: list[bytes], specs: dict[str, TrainSpec]) -> tuple[dict, bytes]:
    from ogpu_node.compute.faults import Fault, train_faulty
    from ogpu_node.compute.trainer import decode_spec, train_segment

    for key in header["evict"]:
        specs.pop(key, None)
    if header["has_spec"]:
        specs[header["spec"]] = decode_spec(payloads.pop(0))
    spec = specs[header["spec"]]
    start = payloads.pop(0) if header["has_start"] else None
    cpu, wall = time.process_time(), time.perf_counter()
    if header["fault"] is None:
        result = train_segment(spec, start, header["steps"], header["hash_steps"])
    else:
        result = train_faulty(spec, start, header["steps"], Fault.from_json(header["fault"]))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    hashes = {str(s): h.hex() for s, h in result.state_hashes.items()}
    reply = {"losses": result.losses, "state_hashes": hashes, "cpu_s": cpu, "wall_s": wall}
    return reply, result.checkpoint


def _throughput(seconds: float) -> float:
    """FLOP/s training REFERENCE_MLP with Adam, FLOPs counted as 6 × params × samples per step."""
    import torch

    from ogpu_node.compute.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("mlp", REFERENCE_MLP)
        optimizer = torch.optim.Adam(model.parameters(), foreach=False)
        x = torch.randn(REFERENCE_BATCH, REFERENCE_MLP["in_dim"])
        y = torch.randint(0, REFERENCE_MLP["out_dim"], (REFERENCE_BATCH,))
        params = sum(p.numel() for p in model.parameters())

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.loss(x, y).backward()
            optimizer.step()

        step()  # warm-up: first-call allocations are not throughput
        n, begin = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - begin) < seconds or n == 0:
            step()
            n += 1
    return 6 * params * REFERENCE_BATCH * n / elapsed


def _serve(profile: str | None, threads: int, conn) -> None:
    try:
        if profile is not None:
            apply_profile(profile)
        else:
            import torch

            torch.set_num_threads(threads)
        import ogpu_node.compute.trainer  # noqa: F401 - pay the imports before reporting ready
    except Exception as e:
        conn.send_bytes(_error(e))
        conn.close()
        return
    conn.send_bytes(json.dumps({"ok": True}).encode())  # ready: a reply like any other
    conn.send_bytes(b"")
    specs: dict[str, TrainSpec] = {}
    while True:
        try:
            header = json.loads(conn.recv_bytes())
            payloads = [conn.recv_bytes() for _ in range(header["payloads"])]
        except EOFError:  # the parent closed the pipe: shut down
            return
        try:
            if header["op"] == "train":
                reply, blob = _train(header, payloads, specs)
            else:
                reply, blob = {"flops_per_s": _throughput(header["seconds"])}, b""
        except Exception as e:  # reported to the parent as one line; the worker lives on
            conn.send_bytes(_error(e))
            continue
        conn.send_bytes(json.dumps({"ok": True, **reply}).encode())
        conn.send_bytes(blob)


# --- the parent's handle ---------------------------------------------------------------------------


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
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Any = None
        self._cached: OrderedDict[str, None] = OrderedDict()  # mirrors the worker's spec cache
        self._keys: weakref.WeakKeyDictionary[TrainSpec, str] = weakref.WeakKeyDictionary()

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
            if proc is not None and proc.is_alive():
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
            }
            try:
                reply, ckpt = self._call(header, payloads, timeout)
            except WorkerFailed:
                self._cached.pop(key, None)  # the worker may not have decoded it: resend next time
                raise
        hashes = {int(s): bytes.fromhex(h) for s, h in reply["state_hashes"].items()}
        return SegmentRun(ckpt, reply["losses"], hashes, reply["cpu_s"], reply["wall_s"])

    def measure_throughput(self, seconds: float = 1.0) -> float:
        """FLOP/s of this worker training a small reference MLP for about `seconds`."""
        with self._lock:
            self._ensure()
            reply, _ = self._call({"op": "measure", "seconds": seconds, "payloads": 0}, [], None)
        return float(reply["flops_per_s"])

    # --- under self._lock ---

    def _ensure(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                return
            code = self._discard()
            raise WorkerFailed(f"training worker died (exit code {code})")
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(self.profile, self.threads, child), daemon=True)
        env = profile_env(self.profile) if self.profile is not None else {
            "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        # The child execs with this process's environment: set it only for that instant.
        with _ENV_LOCK, _environ(env):
            proc.start()
        child.close()  # so that the child's death reads as EOF here
        self._proc, self._conn = proc, parent
        self._cached.clear()
        try:
            self._reply(START_TIMEOUT)
        except WorkerFailed as e:
            self._discard(kill=True)
            if e.error_type == ProfileUnavailable.__name__:
                raise ProfileUnavailable(str(e).removeprefix("ProfileUnavailable: ")) from None
            raise

    def _call(self, header: dict[str, Any], payloads: list[bytes], timeout: float | None) -> tuple[dict, bytes]:
        try:
            self._conn.send_bytes(json.dumps(header).encode())
            for payload in payloads:
                self._conn.send_bytes(payload)
        except OSError:
            code = self._discard(kill=True)
            raise WorkerFailed(f"training worker died (exit code {code})") from None
        return self._reply(timeout)

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
        """Close the pipe and end the process (gracefully unless `kill`); its exit code."""
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        self._cached.clear()
        if conn is not None:
            conn.close()  # an idle worker reads EOF and exits
        if proc is None:
            return None
        if kill and proc.is_alive():
            proc.kill()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        return proc.exitcode
