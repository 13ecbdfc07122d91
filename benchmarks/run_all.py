"""Run every benchmark in turn and print a summary table (`make bench`).

Each benchmark measures its own baseline in the same run and reports ours / baseline beside its
target; nothing is asserted, so the exit status is 0 unless a benchmark itself fails to run.
Sizes come from the environment (see each module's docstring): BENCH_BLOCKS, BENCH_TXS_PER_BLOCK,
BENCH_SENDERS, BENCH_REPEAT for block import; BENCH_RPC_TXS, BENCH_RPC_SENDERS,
BENCH_RPC_REPEAT for RPC throughput; BENCH_TRAIN_STEPS, BENCH_TRAIN_CHECKPOINTS, BENCH_TRAIN_HIDDEN
for training (executor and council); BENCH_CONSENSUS_VALIDATORS, BENCH_CONSENSUS_EPOCHS for the
consensus simulation; BENCH_SYNC_BLOCKS, BENCH_SYNC_TXS, BENCH_GOSSIP_MESSAGES for the network (sync
speed and gossip latency); BENCH_STREAM_REQUESTS, BENCH_STREAM_TOKENS, BENCH_STREAM_CLIENTS,
BENCH_STREAM_RPS_REQUESTS for stream serving (a council of three provider processes).
`--only NAME` (repeatable) runs a subset.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections.abc import Callable

from benchmarks import (
    Result,
    block_import,
    consensus,
    network,
    rpc_throughput,
    streams,
    task_lifecycle,
    training,
)

BENCHMARKS: dict[str, Callable[[list[str]], Result | list[Result]]] = {
    "block_import": block_import.main,
    "rpc_throughput": rpc_throughput.main,
    "task_lifecycle": task_lifecycle.main,
    "training": training.main,
    "consensus": consensus.main,
    "network": network.main,
    "streams": streams.main,
}


def table(results: list[Result]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "target", "")
    rows = [header]
    for r in results:
        rows.append((
            r.name,
            f"{r.ours:,.1f} {r.unit}",
            f"{r.baseline:,.1f} {r.unit} ({r.baseline_name})",
            f"{r.ratio:.2f}",
            "-" if r.target is None else f">= {r.target:.2f}",
            {None: "", True: "ok", False: "BELOW"}[r.meets_target],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.note:
            lines.append(f"  {r.name}: {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this one")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    results: list[Result] = []
    failed: list[str] = []
    start = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        gc.collect()
        try:
            figures = BENCHMARKS[name]([])
            results.extend(figures if isinstance(figures, list) else [figures])
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(flush=True)
    print(f"== summary ({time.perf_counter() - start:.0f} s)")
    print(table(results))
    if failed:
        print(f"failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
