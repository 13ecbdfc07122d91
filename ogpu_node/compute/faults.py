"""Fault injection: a dishonest executor's checkpoints, for the provider's `--fault` option and the
fault-matrix tests. Each fault yields a well-formed checkpoint that loads and claims the task's
seed, step and data cursor, but is not the honest state, so the council must catch it:

- `perturb`: honest training, then `magnitude` added to every element of the first weight tensor
  (1e-6 fails `exact`; a magnitude above the tolerance fails `allclose`);
- `skip-steps`: one update fewer, with step counter and data cursor written as if all ran;
- `reorder-data`: the batches drawn in another seed's data order;
- `copy-weights`: the state reached with another seed (`other_seed`, default seed + 1), as if
  copied from an earlier task with the same prescription but another assignment seed, stamped with
  the claimed seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ogpu_node.compute import checkpoint
from ogpu_node.compute.errors import InvalidTrainSpec
from ogpu_node.compute.trainer import SegmentResult, TrainSpec, derive_seed, run_segment
from ogpu_node.types.protocol import FAULT_KINDS


@dataclass(frozen=True)
class Fault:
    kind: str
    magnitude: float = 1e-6  # perturb only
    other_seed: int | None = None  # copy-weights only (None: the claimed seed + 1)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault: {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """From a command-line value: `perturb`, `perturb:1e-3`, `copy-weights:42`, `skip-steps`."""
        kind, _, arg = text.partition(":")
        if not arg:
            return cls(kind)
        try:
            if kind == "perturb":
                return cls(kind, magnitude=float(arg))
            if kind == "copy-weights":
                return cls(kind, other_seed=int(arg))
        except ValueError:
            raise ValueError(f"fault: bad argument {arg!r} for {kind}") from None
        raise ValueError(f"fault: {kind!r} takes no argument" if kind in FAULT_KINDS else
                         f"fault: {kind!r} is not one of {', '.join(FAULT_KINDS)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fault:
        return cls(**d)


def _restamp(data: bytes, **changes: Any) -> bytes:
    """The checkpoint with some TrainState fields rewritten (the lie), re-saved canonically."""
    model, optimizer, state = checkpoint.load(data)
    return checkpoint.save(model, optimizer, dataclasses.replace(state, **changes))


def _perturbed(data: bytes, magnitude: float) -> bytes:
    model, optimizer, state = checkpoint.load(data)
    with torch.no_grad():
        next(t for t in model.state_dict().values() if t.is_floating_point()).add_(magnitude)
    return checkpoint.save(model, optimizer, state)


def train_faulty(spec: TrainSpec, start: bytes | None, steps: int, fault: Fault) -> SegmentResult:
    """What a dishonest executor running `fault` returns instead of train_segment's result.
    `state_hashes` are not asked for: the executor commits only the checkpoint's hash."""
    if fault.kind == "perturb":
        honest = run_segment(spec, start, steps)
        return SegmentResult(_perturbed(honest.checkpoint, fault.magnitude), honest.losses, {})
    if fault.kind == "skip-steps":
        if steps < 1:
            raise InvalidTrainSpec("skip-steps: needs a segment of at least one step")
        return run_segment(spec, start, steps, updates=steps - 1)
    if fault.kind == "reorder-data":
        return run_segment(spec, start, steps, data_seed=derive_seed(spec.seed, "reorder-data"))
    # copy-weights: the other task's run reached the same step from its own step 0.
    other = (spec.seed + 1) % 2**256 if fault.other_seed is None else fault.other_seed
    first = 0 if start is None else int(checkpoint.read_metadata(start)["step"])
    copied = run_segment(dataclasses.replace(spec, seed=other), None, first + steps)
    return SegmentResult(_restamp(copied.checkpoint, seed=spec.seed), copied.losses[first:], {})
