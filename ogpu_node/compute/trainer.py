"""Deterministic training in segments.

Everything random derives from the task seed:
- initial weights from (seed, "init");
- data order: epoch e is a permutation drawn from (seed, "data", e); the data stream is the
  concatenation of the epochs, and a checkpoint's `data_cursor` is the position in it;
- per-step randomness (dropout) from (seed, "step", step), set before every step.
With `torch.use_deterministic_algorithms(True)` and a fixed numeric profile (see profile.py),
training N steps, saving, loading and training N more gives the same bytes as 2N straight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ogpu_node.compute import checkpoint
from ogpu_node.compute.checkpoint import TrainState, canonical_json, recent_losses
from ogpu_node.compute.data import Dataset, TensorDataset, TextDataset
from ogpu_node.compute.errors import InvalidCheckpoint, InvalidTrainSpec
from ogpu_node.compute.models import MLPConfig, build_model, canonical_hparams, config_from_hparams
from ogpu_node.compute.optim import OptimizerSpec, lr_at, make_optimizer
from ogpu_node.compute.tensorfile import MAX_HEADER, TensorFileError, read_header, read_metadata
from ogpu_node.crypto import keccak
from ogpu_node.jsontext import JsonBoundsError, loads_bounded

SPEC_KEY = "spec"  # an encoded spec's metadata entry: canonical JSON of everything but the tensors


@dataclass(frozen=True, eq=False)
class TrainSpec:
    family: str
    hparams: dict[str, Any]
    optimizer: OptimizerSpec
    dataset: Dataset
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise InvalidTrainSpec(f"batch_size: expected a positive integer, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**256:
            raise InvalidTrainSpec(f"seed: expected an integer in [0, 2**256), got {self.seed!r}")
        cfg = config_from_hparams(self.family, self.hparams)
        ds = self.dataset
        if isinstance(ds, TextDataset):
            if self.family != "char-transformer":
                raise InvalidTrainSpec(f"dataset: a text corpus needs char-transformer, not {self.family}")
            if ds.block_size != cfg.block_size:
                raise InvalidTrainSpec(
                    f"dataset: block_size {ds.block_size} != model block_size {cfg.block_size}"
                )
            if int(ds.ids.max()) >= cfg.vocab_size:
                raise InvalidTrainSpec(
                    f"char-transformer.vocab_size: {cfg.vocab_size} too small for the corpus"
                )
        elif isinstance(ds, TensorDataset):
            n_classes = getattr(cfg, "out_dim", getattr(cfg, "n_classes", None))
            if n_classes is None:
                raise InvalidTrainSpec(f"dataset: {self.family} trains on a text corpus")
            if int(ds.labels.min()) < 0 or int(ds.labels.max()) >= n_classes:
                raise InvalidTrainSpec(f"dataset: labels outside [0, {n_classes})")
            sample = tuple(ds.features.shape[1:])
            if isinstance(cfg, MLPConfig):  # the MLP flattens each sample
                fits, needs = math.prod(sample) == cfg.in_dim, f"{cfg.in_dim} values"
            else:
                shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
                fits, needs = sample == shape, f"shape {shape}"
            if not fits:
                raise InvalidTrainSpec(f"dataset: samples of shape {sample}, {self.family} needs {needs}")
        else:
            raise InvalidTrainSpec(f"dataset: unsupported type {type(ds).__name__}")


class SegmentResult(NamedTuple):
    checkpoint: bytes  # canonical checkpoint after the segment
    losses: list[float]  # training loss of each step in the segment
    state_hashes: dict[int, bytes]  # step s -> H(checkpoint at step s), for each requested s
    states: dict[int, bytes] | None = None  # step s -> the checkpoint at step s, when kept


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit torch seed from the task seed and a label, e.g. ("step", 12)."""
    label = canonical_json([str(seed), *[str(p) for p in parts]]).encode()
    return int.from_bytes(keccak(label)[:8], "big") >> 1


def batch_indices(seed: int, n: int, cursor: int, count: int,
                  perms: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Sample indices at positions cursor … cursor+count-1 of the seed's data stream. `perms` caches
    the epochs' permutations across calls (a segment draws from one or two epochs at a time)."""
    perms = {} if perms is None else perms
    parts = []
    pos, end = cursor, cursor + count
    while pos < end:
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            for old in [e for e in perms if e < epoch - 1]:
                del perms[old]
            gen = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
            perms[epoch] = torch.randperm(n, generator=gen)
        take = min(n - offset, end - pos)
        parts.append(perms[epoch][offset : offset + take])
        pos += take
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels on, and the caller's global RNG state left untouched."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def initial_state(spec: TrainSpec) -> tuple[nn.Module, torch.optim.Optimizer, TrainState]:
    torch.manual_seed(derive_seed(spec.seed, "init"))
    model = build_model(spec.family, spec.hparams)
    state = TrainState(
        spec.family, canonical_hparams(spec.family, spec.hparams), spec.optimizer, spec.seed, 0, 0
    )
    return model, make_optimizer(spec.optimizer, model), state


def _resume(spec: TrainSpec, data: bytes) -> tuple[nn.Module, torch.optim.Optimizer, TrainState]:
    model, optimizer, state = checkpoint.load(data)
    expected = (spec.family, canonical_hparams(spec.family, spec.hparams), spec.optimizer, spec.seed)
    if (state.family, state.hparams, state.optimizer, state.seed) != expected:
        raise InvalidCheckpoint("checkpoint belongs to a different task (family, hparams, optimizer or seed)")
    return model, optimizer, state


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def check_initial_weights(spec: TrainSpec, weights: bytes) -> None:
    """Raise InvalidTrainSpec unless `weights` (M.initial_weights, someone else's file) is a sound
    safetensors file holding exactly the tensors of `spec`'s model, by name, shape and dtype.

    Read from the header alone against the model built on the meta device: nothing is allocated,
    so a provider checks this before it bids (`initial_checkpoint` checks the same when it loads)."""
    try:
        declared = read_header(weights)
    except TensorFileError as e:
        raise InvalidTrainSpec(f"initial_weights: not a safetensors file: {e}") from None
    with torch.device("meta"):
        expected = build_model(spec.family, spec.hparams).state_dict()
    missing, unexpected = sorted(expected.keys() - declared.keys()), sorted(declared.keys() - expected.keys())
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise InvalidTrainSpec(f"initial_weights: {what} for {spec.family}")
    for name, t in expected.items():
        got = declared[name]
        if got.shape != tuple(t.shape) or got.dtype != _SAFETENSORS_DTYPES.get(t.dtype):
            dtype = next((str(d) for d, label in _SAFETENSORS_DTYPES.items() if label == got.dtype), got.dtype)
            raise InvalidTrainSpec(
                f"initial_weights: {name} is {dtype} {got.shape}, {spec.family} needs {t.dtype} {tuple(t.shape)}"
            )


def initial_checkpoint(spec: TrainSpec, weights: bytes) -> bytes:
    """The step-0 checkpoint of `spec` with the client's initial weights (a prescription's
    M.initial_weights: a safetensors file of the model's state_dict) in place of the seeded init.

    Every tensor must match the model's by name, shape and dtype (`check_initial_weights`); the
    optimizer state is fresh and the data cursor 0, so training from it is like training from any
    checkpoint.
    """
    check_initial_weights(spec, weights)
    try:
        tensors = st_load(weights)
    except SafetensorError as e:
        raise InvalidTrainSpec(f"initial_weights: not a safetensors file: {e}") from None
    with deterministic():
        model, optimizer, state = initial_state(spec)
        model.load_state_dict(tensors, strict=True)
        return checkpoint.save(model, optimizer, state)


def train_segment(
    spec: TrainSpec, start: bytes | None, steps: int, hash_steps: Iterable[int] = (), keep_states: bool = False,
) -> SegmentResult:
    """Train `steps` updates from `start` (None: fresh weights from the seed).

    `hash_steps` are global step numbers in [start step, end step] whose state hash is wanted;
    `keep_states` also returns those states (an allclose council member publishes its own).
    """
    return run_segment(spec, start, steps, hash_steps, keep_states=keep_states)


def run_segment(
    spec: TrainSpec,
    start: bytes | None,
    steps: int,
    hash_steps: Iterable[int] = (),
    data_seed: int | None = None,
    updates: int | None = None,
    keep_states: bool = False,
) -> SegmentResult:
    """train_segment, with the knobs faults.py turns to play a dishonest executor: `data_seed`
    draws the data order from another seed, and only the first `updates` steps update the model
    (the rest still advance the step counter and data cursor)."""
    if steps < 0:
        raise InvalidTrainSpec(f"steps: must be non-negative, got {steps}")
    with deterministic():
        model, optimizer, state = initial_state(spec) if start is None else _resume(spec, start)
        first, last = state.step, state.step + steps
        wanted = set(hash_steps)
        outside = sorted(s for s in wanted if not first <= s <= last)
        if outside:
            raise InvalidTrainSpec(f"hash step {outside[0]} is outside this segment [{first}, {last}]")
        hashes: dict[int, bytes] = {}
        states: dict[int, bytes] = {}
        losses: list[float] = []
        cursor = state.data_cursor
        order_seed = spec.seed if data_seed is None else data_seed
        perms: dict[int, torch.Tensor] = {}
        model.train()
        for step in range(first, last + 1):
            if step in wanted:
                recent = recent_losses(state.recent_losses, losses)
                now = TrainState(state.family, state.hparams, state.optimizer, state.seed, step, cursor, recent)
                saved = checkpoint.save(model, optimizer, now)
                hashes[step] = checkpoint.checkpoint_hash(saved)
                if keep_states:
                    states[step] = saved
            if step == last:
                break
            if updates is not None and step - first >= updates:
                cursor += spec.batch_size
                continue
            # The CPU generator only: torch.manual_seed also seeds lazy CUDA/XPU/MTIA state, capturing
            # a stack trace each time (measured: a third of a small model's step time).
            torch.default_generator.manual_seed(derive_seed(spec.seed, "step", step))
            x, y = spec.dataset.batch(batch_indices(order_seed, len(spec.dataset), cursor, spec.batch_size, perms))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(spec.optimizer, step)
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(x, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            cursor += spec.batch_size
        recent = recent_losses(state.recent_losses, losses)
        final = TrainState(state.family, state.hparams, state.optimizer, state.seed, last, cursor, recent)
        return SegmentResult(checkpoint.save(model, optimizer, final), losses, hashes, states if keep_states else None)


# --- a spec as bytes, to hand to a worker process without pickle ---------------------------------


def encode_spec(spec: TrainSpec) -> bytes:
    ds = spec.dataset
    meta = {
        "family": spec.family,
        "hparams": canonical_hparams(spec.family, spec.hparams),
        "optimizer": spec.optimizer.to_json(),
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "dataset": "text" if isinstance(ds, TextDataset) else "tensors",
        "block_size": ds.block_size if isinstance(ds, TextDataset) else None,
    }
    return st_save(
        {k: v.contiguous() for k, v in ds.tensors().items()}, metadata={SPEC_KEY: canonical_json(meta)}
    )


def decode_spec(data: bytes) -> TrainSpec:
    """The spec `encode_spec` wrote (InvalidTrainSpec for anything else)."""
    try:
        meta = loads_bounded(read_metadata(data)[SPEC_KEY], max_bytes=MAX_HEADER)
        tensors = st_load(data)
    except (TensorFileError, KeyError, JsonBoundsError, SafetensorError) as e:
        raise InvalidTrainSpec(f"not an encoded training spec: {e}") from None
    if meta["dataset"] == "text":
        dataset: Dataset = TextDataset(tensors["text"], meta["block_size"])
    else:
        dataset = TensorDataset(tensors["features"], tensors["labels"])
    return TrainSpec(
        family=meta["family"],
        hparams=meta["hparams"],
        optimizer=OptimizerSpec.from_json(meta["optimizer"]),
        dataset=dataset,
        batch_size=meta["batch_size"],
        seed=meta["seed"],
    )
