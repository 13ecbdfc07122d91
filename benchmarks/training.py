"""Executor and council cost of a batch task, beside plain PyTorch, in one run.

1. Executor wall time on a dev node: a real `ogpu-node run --dev --block-time 1`, one in-process
   provider app as the executor, one idle registered provider so a council of 1 can be drawn (it
   never votes: the council stays idle and takes no CPU from the executor). Measured from the task's
   assignment, as the provider sees it, to the receipt of its last checkpoint commit: training in its
   numeric-profile worker, canonical checkpoints, hashing, files and transactions.
   Baseline: the same model, data, batch size and number of steps as a plain PyTorch loop (Adam, no
   determinism switches, no checkpoints) in a fresh process under the same profile (1 thread, same
   instruction set), run once just before and once just after ours, their mean taken. Reported as steps/s, so ours/baseline = plain time ÷ executor time (target ≥
   1/1.3, i.e. the executor at most 1.3× plain PyTorch).
2. Council CPU per checkpoint: one member's re-run of each segment from the previous checkpoint with
   the state hash at a drawn step (what a council seat runs, apps/provider/council.py), in its worker, against the executor's
   CPU for the same segment. Reported as executor CPU ÷ member CPU (target ≥ 1/1.1); the whole
   council's CPU (c members) is in the note.

Sizes: BENCH_TRAIN_STEPS (default 8000: segments of seconds, as tasks have), BENCH_TRAIN_CHECKPOINTS (4), BENCH_TRAIN_HIDDEN (256).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import trio
from safetensors.numpy import save_file

from benchmarks import Result, env_int
from benchmarks.rpc_throughput import Process, free_port
from ogpu_node.apps.client import Client
from ogpu_node.apps.provider import Provider, ProviderConfig
from ogpu_node.compute import Worker, spec_from_prescription
from ogpu_node.compute.profile import worker_env
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, drawn_step, segment_bounds, training_seed
from ogpu_node.types.protocol import DEFAULT_PROFILE

ROOT = Path(__file__).resolve().parents[1]
PROFILE = DEFAULT_PROFILE
COUNCIL_SIZE = 3  # the council whose whole cost the note reports


def _dataset(path: Path, in_dim: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, in_dim)).astype(np.float32)
    save_file({"features": x, "labels": x[:, :4].argmax(axis=1).astype(np.int64)}, str(path))


def _doc(data: Path, steps: int, checkpoints: int, hidden: int) -> dict:
    return {
        "kind": "batch", "D": {"blob": "0x" + merkle_root(data.read_bytes()).hex(), "format": "tensors"},
        "M": {"family": "mlp", "hparams": {"in_dim": 32, "out_dim": 4, "hidden": [hidden, hidden]}},
        "I": {"steps": steps, "checkpoints": checkpoints, "segment_window_s": 3600, "batch_size": 64,
              "optimizer": {"name": "adam", "lr": 0.001}, "hardware": {"min_memory_mib": 64, "devices": ["cpu"]},
              "numeric_profile": PROFILE, "max_payment": str(10**18), "council_size": 1, "confirm_window_s": 3600},
        "f": {"kind": "per-checkpoint", "council_share_bps": 1000, "lateness_bps_per_second": 0},
        "e": {"kind": "exact"}, "H": {"bid_window_s": 60, "first_n": 1, "min_bids": 1},
    }


# The baseline: the same MLP and steps in plain PyTorch, in a fresh interpreter whose environment is the
# profile's from exec (as the provider's workers get theirs), so this process's os.environ is never written.
_PLAIN = """
import sys, time
import torch
from safetensors.torch import load_file

hidden, steps, data = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
tensors = load_file(data)
x, y = tensors["features"], tensors["labels"]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                            torch.nn.ReLU(), torch.nn.Linear(hidden, 4))
opt = torch.optim.Adam(model.parameters(), lr=0.001)
started = time.perf_counter()
for _ in range(steps):
    idx = torch.randint(0, len(y), (64,))
    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
print(time.perf_counter() - started)
"""


def plain_pytorch_seconds(hidden: int, steps: int, data: Path) -> float:
    done = subprocess.run([sys.executable, "-c", _PLAIN, str(hidden), str(steps), str(data)],
                          env=worker_env(PROFILE), capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def executor_on_dev_node(work: Path, p: Prescription, data: Path) -> tuple[float, object, bytes]:
    """(seconds from assignment to the last commit, the finished job, the assignment seed)."""
    accounts = derive_dev_accounts(4)
    port = free_port()
    node = Process("ogpu-node", [sys.executable, "-m", "ogpu_node.cli.main", "run", "--dev", "--datadir",
                                 str(work / "node"), "--http.port", str(port), "--no-ws", "--block-time", "1"], work)
    url = f"http://127.0.0.1:{port}"
    provider = None
    try:
        Client(url, accounts[2].private_key).register_provider("cpu", 1 << 20, 1, profiles=(DEFAULT_PROFILE,))  # idle: never bids
        provider = Provider(ProviderConfig(rpc_url=url, private_key=accounts[1].private_key,
                                           datadir=work / "provider", cost_per_second=10**9))
        thread = threading.Thread(target=trio.run, args=(provider.run,), daemon=True)
        thread.start()
        while provider.last_block < 0 or provider._spare is None:  # registered, spare worker warm
            time.sleep(0.1)
        client = Client(url, accounts[3].private_key)
        client.upload_blob(data)
        task_id, _ = client.submit_task(p)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            job = provider.jobs.get(task_id)
            if job is not None and len(job.committed_at) == p.I.checkpoints:
                seed = client.views.task(task_id).seed
                marks = ", ".join(f"{k}: {t - job.started_at:.2f}s" for k, t in sorted(job.committed_at.items()))
                print(f"commit receipts after assignment: {marks}", flush=True)
                return max(job.committed_at.values()) - job.started_at, job, seed
            if job is not None and job.error:
                raise RuntimeError(job.error)
            time.sleep(0.2)
        raise RuntimeError("the executor did not finish")
    finally:
        if provider is not None:
            provider.stop()
        node.stop()


def main(argv: list[str]) -> Result:
    steps = env_int("BENCH_TRAIN_STEPS", 8000)
    checkpoints = env_int("BENCH_TRAIN_CHECKPOINTS", 4)
    hidden = env_int("BENCH_TRAIN_HIDDEN", 256)
    with tempfile.TemporaryDirectory(prefix="ogpu-bench-train-") as tmp:
        work = Path(tmp)
        data = work / "data.safetensors"
        _dataset(data, 32)
        p = Prescription.from_json(json.dumps(_doc(data, steps, checkpoints, hidden)))
        # This machine's speed drifts by tens of percent over minutes (other tenants): the baseline is
        # measured just before and just after our run, and their mean taken, so drift cancels.
        before = plain_pytorch_seconds(hidden, steps, data)
        ours, job, seed = executor_on_dev_node(work, p, data)
        after = plain_pytorch_seconds(hidden, steps, data)
        plain = (before + after) / 2
        print(f"plain PyTorch: {steps} steps in {before:.2f}s before, {after:.2f}s after our run "
              f"(1 thread, profile {PROFILE})", flush=True)
        print(f"executor on a dev node: assignment to last commit {ours:.2f}s "
              f"(training in the worker {sum(r.wall_s for r in job.segments):.2f}s)", flush=True)

        # One council member's re-run of each segment, as a council seat (apps/provider/council.py) runs it.
        spec = spec_from_prescription(p, data.read_bytes(), training_seed(p, seed))
        member_cpu, state = [], None
        with Worker(PROFILE) as worker:
            worker.measure_throughput(1.0)  # as a provider's council worker, warmed at registration
            for k in range(1, checkpoints + 1):
                first, last = segment_bounds(p, k)
                at = drawn_step(p, k, int.from_bytes(os.urandom(8), "big"))
                run = worker.train(spec, state, last - first, hash_steps=[at])
                member_cpu.append(run.cpu_s)
                state = run.checkpoint
                ckpt = (work / "provider" / "tasks").glob(f"*/ckpt-{k}.safetensors")
                assert merkle_root(next(ckpt).read_bytes()) == merkle_root(state), "the re-run must match"
        executor_cpu = [r.cpu_s for r in job.segments]
    council = sum(member_cpu) / checkpoints
    executor = sum(executor_cpu) / checkpoints
    print(f"per checkpoint: executor CPU {executor:.3f}s, one member {council:.3f}s, "
          f"a council of {COUNCIL_SIZE} {COUNCIL_SIZE * council:.3f}s", flush=True)
    return [
        Result(name="executor vs plain PyTorch", unit="steps/s", ours=steps / ours, baseline=steps / plain,
               baseline_name="plain PyTorch", target=1 / 1.3,
               note=f"executor wall ÷ plain = {ours / plain:.2f} (target ≤ 1.3): {ours:.1f}s vs {plain:.1f}s for "
                    f"{steps} steps in {checkpoints} checkpoints"),
        Result(name="council member vs executor", unit="1/s CPU per checkpoint", ours=1 / council,
               baseline=1 / executor, baseline_name="executor", target=1 / 1.1,
               note=f"member CPU ÷ executor CPU = {council / executor:.2f} (target ≤ 1.1); a whole council of "
                    f"{COUNCIL_SIZE} costs {COUNCIL_SIZE * council:.2f}s CPU per checkpoint vs the executor's "
                    f"{executor:.2f}s"),
    ]


if __name__ == "__main__":
    for r in main(sys.argv[1:]):
        print(r.line())
