"""The worker process: the side of worker.py's pipe that trains, and serves stream models.

`Worker` runs `python -c BOOT <package root> <fd> <profile> <threads>` with the profile's
environment given at exec (`profile.worker_env`), so nothing here, nor in the modules it imports
before `apply_profile`, may import torch: the bootstrap reaches this module through the lazy
`ogpu_node.compute` package, the leaf `profile` module and the torch-free `errors`. torch loads in
`apply_profile`, after the environment has been checked.

Protocol (see worker.py): a request is a JSON header `{"op": …, "payloads": n}` + n byte payloads;
a reply is `{"ok": true, …}` + one payload, or `{"ok": false, "error": …, "type": …}`. The first
reply, sent unasked, says whether the profile holds.

Ops: `train`, `describe`, `measure`; for streams `load_served` (a model kept under a key, at most
SERVED_MODELS, the parent naming which to evict), `generate` and `check` (generate.py).
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ogpu_node.compute.profile import NUMERIC_VARS, apply_profile

if TYPE_CHECKING:
    from torch import nn

    from ogpu_node.compute.trainer import TrainSpec

# What Worker runs with `python -c`: find this package where the parent found it, then serve.
BOOT = (
    "import sys\n"
    "if sys.argv[1] not in sys.path: sys.path.insert(0, sys.argv[1])\n"
    "from ogpu_node.compute.serve import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
REFERENCE_MLP = {"in_dim": 256, "out_dim": 10, "hidden": [256, 256]}  # measure_throughput's model
REFERENCE_BATCH = 64
SERVED_MODELS = 4  # stream models a worker keeps loaded (the parent mirrors which)


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
        result = train_segment(spec, start, header["steps"], header["hash_steps"], header.get("keep_states", False))
    else:
        result = train_faulty(spec, start, header["steps"], Fault.from_json(header["fault"]))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    hashes = {str(s): h.hex() for s, h in result.state_hashes.items()}
    reply = {"losses": result.losses, "state_hashes": hashes, "cpu_s": cpu, "wall_s": wall}
    kept = sorted((result.states or {}).items())
    # Kept states travel in the one reply payload after the checkpoint, cut by their lengths.
    reply["states"] = [[s, len(data)] for s, data in kept]
    return reply, b"".join([result.checkpoint, *(data for _, data in kept)])


def _load_served(header: dict[str, Any], payloads: list[bytes], served: OrderedDict[str, nn.Module]) -> None:
    from ogpu_node.compute.generate import load_served_model

    for key in header["evict"]:
        served.pop(key, None)
    served.pop(header["key"], None)  # a failed reload leaves no stale model under the key
    served[header["key"]] = load_served_model(header["family"], header["hparams"], payloads[0])


def _served_model(header: dict[str, Any], served: OrderedDict[str, nn.Module]) -> nn.Module:
    model = served.get(header["key"])
    if model is None:
        raise LookupError(f"no served model {header['key']!r:.80} in this worker")
    return model


def _generate(header: dict[str, Any], payloads: list[bytes], served: OrderedDict[str, nn.Module],
              conn: Connection) -> bytes:
    """The whole response; with `partial_every` = n > 0, each n tokens also go out as they are decided,
    in interim replies ({"ok", "partial": offset}, the tokens) before the final one."""
    from ogpu_node.compute.generate import Sampling, generate_iter

    model = _served_model(header, served)
    every = int(header.get("partial_every") or 0)
    out = bytearray()
    sent = 0
    for token in generate_iter(model, payloads[0], header["max_tokens"], header["seed"],
                               Sampling.from_json(header["sampling"])):
        out.append(token)
        if every and len(out) - sent >= every and len(out) < header["max_tokens"]:
            conn.send_bytes(json.dumps({"ok": True, "partial": sent}).encode())
            conn.send_bytes(bytes(out[sent:]))
            sent = len(out)
    return bytes(out)


def _check(header: dict[str, Any], payloads: list[bytes], served: OrderedDict[str, nn.Module]) -> bool:
    from ogpu_node.compute.generate import Sampling, check

    model = _served_model(header, served)
    return check(model, payloads[0], payloads[1], header["seed"], Sampling.from_json(header["sampling"]),
                 header["kind"], header["max_tokens"])


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


def _describe() -> dict[str, Any]:
    """What this process trains under: its numeric variables and what torch made of them."""
    import torch

    return {
        "env": {k: os.environ.get(k) for k in NUMERIC_VARS},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def serve(profile: str | None, threads: int, conn: Connection) -> None:
    """Check the profile, report ready, then answer requests until the parent closes the pipe."""
    try:
        if profile is not None:
            apply_profile(profile)
        else:
            import torch

            torch.set_num_threads(threads)
        import ogpu_node.compute.trainer  # noqa: F401 - pay the imports before reporting ready
    except Exception as e:
        conn.send_bytes(_error(e))
        return
    conn.send_bytes(json.dumps({"ok": True}).encode())  # ready: a reply like any other
    conn.send_bytes(b"")
    specs: dict[str, TrainSpec] = {}
    served: OrderedDict[str, nn.Module] = OrderedDict()
    while True:
        try:
            header = json.loads(conn.recv_bytes())
            payloads = [conn.recv_bytes() for _ in range(header["payloads"])]
        except EOFError:  # the parent closed the pipe: shut down
            return
        try:
            if header["op"] == "train":
                reply, blob = _train(header, payloads, specs)
            elif header["op"] == "describe":
                reply, blob = _describe(), b""
            elif header["op"] == "measure":
                reply, blob = {"flops_per_s": _throughput(header["seconds"])}, b""
            elif header["op"] == "load_served":
                _load_served(header, payloads, served)
                reply, blob = {}, b""
            elif header["op"] == "generate":
                reply, blob = {}, _generate(header, payloads, served, conn)
            elif header["op"] == "check":
                reply, blob = {"agrees": _check(header, payloads, served)}, b""
            else:
                raise ValueError(f"unknown op {header['op']!r}")
        except Exception as e:  # reported to the parent as one line; the worker lives on
            conn.send_bytes(_error(e))
            continue
        conn.send_bytes(json.dumps({"ok": True, **reply}).encode())
        conn.send_bytes(blob)


def main(argv: list[str]) -> int:
    """`<fd> <profile or ""> <threads>`: serve on the inherited socket `fd`."""
    fd, profile, threads = int(argv[0]), argv[1] or None, int(argv[2])
    conn = Connection(fd)
    try:
        serve(profile, threads, conn)
    except (BrokenPipeError, ConnectionResetError):  # the parent went away mid-reply
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    finally:
        conn.close()
    return 0
