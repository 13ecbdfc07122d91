"""Stream serving through a council of real providers, beside plain PyTorch generation, in one run.

Ours: a real `ogpu-node run --dev --block-time 1`, three `ogpu-node provider run` processes (dev
accounts 1–3, each with its own stream worker under the numeric profile) and the client app as dev
account 0 (`StreamClient`: upload the weights, `submitStream`, then `request`, which reads the
stream's terms version and the head, signs, and calls `ogpu_streamRequest`). The stream serves a
char-transformer with fresh random weights, council size c = 3, e `possible` (temperature 0.8,
top-p 0.9, seeded: honest members agree byte for byte); every request goes to all three members.
Timed from the client's call to its checked answer (receipts are not paid: not part of an answer).

1. Optimistic latency: the median of N sequential requests (the node answers with the first
   response). Baseline: one plain generation of the same model, prompt, max_tokens and sampling
   (`compute.generate.generate`, a plain torch loop: no node, RPC or council) in a process of its own
   under the same profile (1 thread, as a provider's worker), the median of N.
2. Unanimous latency at c = 3 (terms updated to `unanimous`): the median of N sequential requests.
   Baseline: three such processes generating at once (one per member, as each provider has its own
   worker process), the median of their generations' times.
3. Requests per second at c = 3 (unanimous): BENCH_STREAM_CLIENTS client threads send requests back
   to back, first send to last answer. Baseline: the same three processes generating back to back,
   a request's worth being one generation in each: rounds per second.
Where the three members share fewer than three cores (as on a small machine), the optimistic answer
waits for a generation that runs beside two others: the note gives it ÷ three plain at once as well.
Both latencies are reported as 1 ÷ latency so that ours / baseline reads "higher is better": the
target 1/1.2 means at most 1.2 × the plain time. The requests-per-second ratio has no target.
The speed of a shared machine drifts over minutes, so the baseline's processes stay loaded (idle,
blocked on input, while ours runs) and each latency's baseline and ours alternate in ROUNDS rounds;
the requests-per-second baseline is measured just before and just after ours, the mean taken.

Sizes: BENCH_STREAM_REQUESTS (N, default 8), BENCH_STREAM_TOKENS (max_tokens; default: 64, doubled
until a plain generation takes at least 100 ms), BENCH_STREAM_CLIENTS (3),
BENCH_STREAM_RPS_REQUESTS (12).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import Result, env_int
from ogpu_node.apps.client import Client, StreamClient, file_blob_hash
from ogpu_node.compute.profile import worker_env
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.types.protocol import DEFAULT_PROFILE
from ogpu_node.types.streams import MAX_RESPONSE_TOKENS

ROOT = Path(__file__).resolve().parents[1]
PROFILE = DEFAULT_PROFILE  # the stream's numeric profile: the providers' workers and the baseline run under it
COUNCIL = 3
HPARAMS = {"block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0}
SAMPLING = {"temperature": 0.8, "top_k": None, "top_p": 0.9, "margin": 1e-3}  # compute.generate.Sampling
PROMPT = b"To serve a model through a council, "
MIN_PLAIN_S = 0.1  # the issue's floor for one plain generation
ROUNDS = 4  # the baseline and ours alternate this many times per latency figure
FORM_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 15.0
_WS = re.compile(r"WebSocket on\s+(ws://\S+)")
_HTTP = re.compile(r"Listening on (http://\S+)")


def prescription(weights_hash: bytes) -> dict[str, Any]:
    return {
        "kind": "stream",
        "M": {"family": "char-transformer", "hparams": HPARAMS, "initial_weights": "0x" + weights_hash.hex()},
        "I": {"council_size": COUNCIL, "response_method": "optimistic", "max_response_ms": 60_000,
              "price_per_unit": str(10**12), "max_payment": str(10**18), "settle_window_s": 600,
              "numeric_profile": PROFILE, "hardware": {"min_memory_mib": 256, "devices": ["cpu"]}},
        "f": {"kind": "per-unit", "council_share_bps": 0},
        "e": {"kind": "possible", "temperature": SAMPLING["temperature"], "top_p": SAMPLING["top_p"]},
    }


def write_weights(path: Path) -> None:
    """Fresh random weights of the served model, as `task result --out` writes a weights file."""
    import torch

    from ogpu_node.compute.models import build_model
    from ogpu_node.compute.tensorfile import save_arrays

    torch.manual_seed(0)
    state = build_model("char-transformer", HPARAMS).state_dict()
    save_arrays(path, {name: t.detach().numpy() for name, t in state.items()})


# -- the baseline: plain generation in processes of their own under the profile ----------------------------

# argv: weights, hparams, sampling (JSON), prompt (hex), profile. Loads the model, warms up, prints
# "ready"; then for each line "TOKENS COUNT" on stdin generates COUNT times (seeds counting on) and prints
# {"times": [...], "start": t, "end": t} (time.monotonic: one clock for every process on the machine).
_PLAIN = """
import json, sys, time
from ogpu_node.compute.profile import apply_profile
apply_profile(sys.argv[5])
from ogpu_node.compute.generate import Sampling, generate, load_served_model
weights, hparams, sampling = sys.argv[1], json.loads(sys.argv[2]), Sampling.from_json(json.loads(sys.argv[3]))
prompt = bytes.fromhex(sys.argv[4])
model = load_served_model("char-transformer", hparams, open(weights, "rb").read())
generate(model, prompt, 8, 0, sampling)
print("ready", flush=True)
seed = 0
for line in sys.stdin:
    tokens, count = map(int, line.split())
    times, start = [], time.monotonic()
    for _ in range(count):
        began = time.perf_counter()
        out = generate(model, prompt, tokens, seed, sampling)
        times.append(time.perf_counter() - began)
        assert len(out) == tokens
        seed += 1
    print(json.dumps({"times": times, "start": start, "end": time.monotonic()}), flush=True)
"""


class PlainPool:
    """COUNCIL processes holding the served model, idle (blocked on stdin) until asked to generate: the
    baseline is measured in rounds between ours, so the drift of a shared machine falls on both."""

    def __init__(self, weights: Path) -> None:
        argv = [sys.executable, "-c", _PLAIN, str(weights), json.dumps(HPARAMS), json.dumps(SAMPLING),
                PROMPT.hex(), PROFILE]
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(COUNCIL):
                self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                   cwd=ROOT, env=worker_env(PROFILE)))
            for proc in self.procs:
                if self._line(proc) != "ready":
                    raise RuntimeError(f"a plain generation process failed (exit {proc.wait()})")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def run(self, tokens: int, count: int, processes: int) -> list[dict[str, Any]]:
        """`count` generations in each of the first `processes`, all started at once."""
        for proc in self.procs[:processes]:
            assert proc.stdin is not None
            proc.stdin.write(f"{tokens} {count}\n")
            proc.stdin.flush()
        lines = [self._line(proc) for proc in self.procs[:processes]]
        if not all(lines):
            raise RuntimeError("a plain generation process exited")
        return [json.loads(line) for line in lines]

    def one(self, tokens: int, count: int) -> list[float]:
        """Seconds of each of `count` generations, one process generating alone."""
        return self.run(tokens, count, 1)[0]["times"]

    def three(self, tokens: int, count: int) -> tuple[list[float], float]:
        """(seconds of each generation, rounds per second) with COUNCIL processes generating at once; a
        round is one generation in each process, the work of one request at c = COUNCIL."""
        runs = self.run(tokens, count, COUNCIL)
        span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        return [t for r in runs for t in r["times"]], count / span

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # end of input: the process exits
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- ours: a node, three providers, the client app ---------------------------------------------------------


class Started:
    """A subprocess whose output goes to `work/name.log`."""

    def __init__(self, name: str, argv: list[str], work: Path) -> None:
        self.name = name
        self.log_path = work / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in finish()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name}\n{self.text()[-chars:]}"

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def finish(self, deadline: float) -> None:
        """Wait for it to end until `deadline` (monotonic), then kill it."""
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def stop_all(started: list[Started]) -> None:
    """Providers first (they give their seats back, within a bound), the node last."""
    for group in (started[1:], started[:1]):
        for s in group:
            s.interrupt()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for s in group:
            s.finish(deadline)


class TimedStreamClient(StreamClient):
    """The client app's StreamClient, also timing each `ogpu_streamRequest` call alone (the rest of a
    request is the views it reads first and the ledger it writes)."""

    def __init__(self, client: Client, datadir: Path) -> None:
        super().__init__(client, datadir)
        self.rpc_s: list[float] = []

    def call(self, method: str, params: list[Any], timeout: float | None = None) -> Any:
        began = time.perf_counter()
        try:
            return super().call(method, params, timeout)
        finally:
            if method == "ogpu_streamRequest":
                self.rpc_s.append(time.perf_counter() - began)


def wait_active(streams: StreamClient, task_id: int, method: str, started: list[Started]) -> None:
    """Until the node sees the stream Active under `method` with every member logged in for work."""
    deadline = time.monotonic() + FORM_TIMEOUT_S
    seen: Any = None
    while time.monotonic() < deadline:
        seen = streams.call("ogpu_streamTask", [hex(task_id)])
        if seen["state"] == "Active" and seen["responseMethod"] == method and len(seen["connected"]) >= COUNCIL:
            return
        dead = [s for s in started if s.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with {dead[0].proc.returncode}:\n{dead[0].tail()}")
        time.sleep(0.5)
    logs = "\n".join(s.tail() for s in started[1:])
    raise RuntimeError(f"stream {task_id} not Active ({method}, {COUNCIL} connected) within "
                       f"{FORM_TIMEOUT_S:.0f} s: {seen}\n{logs}")


def ask(streams: StreamClient, task_id: int, tokens: int, seed: int, method: str) -> tuple[float, Any]:
    """One request through the client app, timed from the call to the checked answer."""
    began = time.perf_counter()
    _, answer = streams.request(task_id, PROMPT, tokens, seed=seed, timeout=120)
    elapsed = time.perf_counter() - began
    if answer.status not in ("answered", "validated") or answer.response is None or len(answer.response) != tokens:
        raise RuntimeError(f"request {seed}: {answer.status} {answer.error or ''} ({len(answer.response or b'')} bytes)")
    if method == "unanimous" and len(answer.agreed) != COUNCIL:
        raise RuntimeError(f"request {seed}: a unanimous answer with {len(answer.agreed)} of {COUNCIL} agreeing")
    return elapsed, answer


def latency_rounds(streams: TimedStreamClient, plain: Callable[[int], list[float]], task_id: int, tokens: int,
                   count: int, method: str, first_seed: int) -> dict[str, list[float]]:
    """About `count` sequential requests, after one warm-up, in ROUNDS rounds, each after `plain(n)`
    (the baseline's n generations' seconds): each request's seconds ("ours"), each ogpu_streamRequest
    call's ("rpc"), the node's ms to the response that decided it ("decided"), and "plain"."""
    ask(streams, task_id, tokens, first_seed, method)
    del streams.rpc_s[:]
    out: dict[str, list[float]] = {"ours": [], "decided": [], "plain": []}
    per_round, seed = max(1, -(-count // ROUNDS)), first_seed + 1
    for _ in range(ROUNDS):
        out["plain"] += plain(per_round)
        for _ in range(per_round):
            elapsed, answer = ask(streams, task_id, tokens, seed, method)
            seed += 1
            out["ours"].append(elapsed)
            ms = sorted(_number(r["ms"]) for r in answer.raw.get("responses") or [])
            out["decided"].append(ms[0] if method == "optimistic" else ms[-1])
    out["rpc"] = list(streams.rpc_s)
    return out


def concurrent(rpc: str, key: bytes, datadir: Path, task_id: int, tokens: int, clients: int, total: int,
               method: str) -> tuple[float, list[float]]:
    """(requests per second, each request's seconds): `clients` threads, each its own client app, sending
    `total` requests back to back between them; first send to last answer."""
    next_seed, lock = iter(range(1_000_000, 1_000_000 + total)), threading.Lock()
    times: list[float] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(clients + 1)

    def client() -> None:
        streams = StreamClient(Client(rpc, key, timeout=120), datadir)
        streams.chain()  # read once, before the clock starts
        gate.wait()
        while True:
            with lock:
                seed = next(next_seed, None)
            if seed is None or errors:
                return
            try:
                elapsed, _ = ask(streams, task_id, tokens, seed, method)
            except BaseException as exc:  # noqa: BLE001 — reported by the main thread
                errors.append(exc)
                return
            with lock:
                times.append(elapsed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    span = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a concurrent request failed: {errors[0]}") from errors[0]
    return total / span, times


def served_figures(work: Path, weights: Path, pool: PlainPool, tokens: int, count: int, clients: int,
                   rps_requests: int) -> dict[str, Any]:
    from ogpu_node.compute.prescription import validate  # torch: as `stream submit` loads it

    accounts = derive_dev_accounts(COUNCIL + 1)
    cli = [sys.executable, "-m", "ogpu_node.cli.main"]
    started: list[Started] = []
    try:
        node = Started("node", [*cli, "run", "--dev", "--datadir", str(work / "node"), "--http.port", "0",
                                "--ws.port", "0", "--block-time", "1"], work)
        started.append(node)
        deadline = time.monotonic() + 60
        while not (_HTTP.search(node.text()) and _WS.search(node.text())):
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start:\n{node.tail()}")
            time.sleep(0.05)
        rpc, ws = _HTTP.search(node.text()).group(1), _WS.search(node.text()).group(1)  # type: ignore[union-attr]
        for i, account in enumerate(accounts[1:], 1):
            started.append(Started(f"provider{i}", [
                *cli, "provider", "run", "--rpc-url", rpc, "--ws-url", ws, "--private-key",
                "0x" + account.private_key.hex(), "--datadir", str(work / f"provider{i}"), "--cost-per-second", "1",
            ], work))
        client_key = accounts[0].private_key
        streams = TimedStreamClient(Client(rpc, client_key, timeout=120), work / "client")
        streams.client.upload_blob(weights)
        task_id, _ = streams.submit(validate(prescription(file_blob_hash(weights))))
        formed = time.monotonic()
        wait_active(streams, task_id, "optimistic", started)
        print(f"  stream {task_id} Active with {COUNCIL} members {time.monotonic() - formed:.1f} s after "
              f"submitStream", flush=True)
        optimistic = latency_rounds(streams, lambda n: pool.one(tokens, n), task_id, tokens, count, "optimistic", 0)
        streams.update_terms(task_id, None, "unanimous", None)
        wait_active(streams, task_id, "unanimous", started)
        unanimous = latency_rounds(streams, lambda n: pool.three(tokens, n)[0], task_id, tokens, count,
                                   "unanimous", 100_000)
        plain_rounds = max(2, rps_requests // COUNCIL)
        before = pool.three(tokens, plain_rounds)[1]
        rps, rps_times = concurrent(rpc, client_key, work / "client", task_id, tokens, clients, rps_requests,
                                    "unanimous")
        after = pool.three(tokens, plain_rounds)[1]
        return {"optimistic": optimistic, "unanimous": unanimous, "rps": rps, "rps_times": rps_times,
                "plain_rps": (before, after)}
    finally:
        stop_all(started)


def _number(value: Any) -> int:
    """A JSON-RPC number: a hex quantity (or a plain integer)."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main(argv: list[str]) -> list[Result]:
    argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__).parse_args(argv)
    count = env_int("BENCH_STREAM_REQUESTS", 8)
    clients = env_int("BENCH_STREAM_CLIENTS", 3)
    rps_requests = env_int("BENCH_STREAM_RPS_REQUESTS", 12)
    fixed_tokens = os.environ.get("BENCH_STREAM_TOKENS") not in (None, "")
    tokens = env_int("BENCH_STREAM_TOKENS", 64)
    with tempfile.TemporaryDirectory(prefix="ogpu-bench-streams-") as tmp:
        work = Path(tmp)
        weights = work / "model.safetensors"
        write_weights(weights)
        pool = PlainPool(weights)
        try:
            while not fixed_tokens and statistics.median(pool.one(tokens, 3)) < MIN_PLAIN_S \
                    and tokens < MAX_RESPONSE_TOKENS:
                tokens = min(MAX_RESPONSE_TOKENS, 2 * tokens)  # the issue's model: a plain generation of ≥ 100 ms
            pool.three(tokens, 1)  # warm-up at this size in every process
            ours = served_figures(work, weights, pool, tokens, count, clients, rps_requests)
        finally:
            pool.close()
    opt, una = ours["optimistic"], ours["unanimous"]
    one, three = statistics.median(opt["plain"]), statistics.median(una["plain"])
    ours_opt, ours_una = statistics.median(opt["ours"]), statistics.median(una["ours"])
    rounds = sum(ours["plain_rps"]) / 2
    for name, fig, plain_what, decided in ((f"optimistic ({tokens} tokens)", opt, "one plain", "first"),
                                           ("unanimous", una, "three plain at once", "last")):
        print(f"  {name}: median {_ms(statistics.median(fig['ours']))} per request, ogpu_streamRequest alone "
              f"{_ms(statistics.median(fig['rpc']))}, the node's {decided} response at "
              f"{statistics.median(fig['decided']):.0f} ms; {plain_what} {_ms(statistics.median(fig['plain']))}",
              flush=True)
    print(f"  {clients} clients: {ours['rps']:.2f} requests/s, median {_ms(statistics.median(ours['rps_times']))} "
          f"per request; three plain processes {ours['plain_rps'][0]:.2f} rounds/s before, "
          f"{ours['plain_rps'][1]:.2f} after", flush=True)
    model = f"char-transformer {HPARAMS['n_layer']}x{HPARAMS['n_embd']}, {tokens} tokens, c = {COUNCIL}"
    return [
        Result(name="optimistic request vs one plain generation", unit="/s (1/latency)", ours=1 / ours_opt,
               baseline=1 / one, baseline_name="plain PyTorch", target=1 / 1.2,
               note=f"latency {_ms(ours_opt)} ÷ {_ms(one)} = {ours_opt / one:.2f} (target ≤ 1.2); medians of "
                    f"{len(opt['ours'])} and {len(opt['plain'])}; {model}; the {COUNCIL} members share this "
                    f"machine's {os.cpu_count()} cores, so the first response comes while three generations run "
                    f"at once: ÷ {_ms(three)} = {ours_opt / three:.2f}"),
        Result(name="unanimous request vs three plain at once", unit="/s (1/latency)", ours=1 / ours_una,
               baseline=1 / three, baseline_name="3 plain at once", target=1 / 1.2,
               note=f"latency {_ms(ours_una)} ÷ {_ms(three)} = {ours_una / three:.2f} (target ≤ 1.2); medians of "
                    f"{len(una['ours'])} and {len(una['plain'])}"),
        Result(name="requests/s at c = 3 vs plain", unit="req/s", ours=ours["rps"], baseline=rounds,
               baseline_name="3 plain processes", target=None,
               note=f"{rps_requests} unanimous requests from {clients} client threads; plain: rounds of one "
                    f"generation in each of {COUNCIL} processes, just before and after"),
    ]


if __name__ == "__main__":
    for r in main(sys.argv[1:]):
        print(r.line())
