"""Serving a trained char-transformer: load its weights, generate, check another member's response.

A stream request (docs/streams.md) is answered by each council member with `generate`; when their
response hashes differ, each checks the others' with `check` under the stream's equivalence:

- `tokens`: the response must equal the checker's own generation (same seed, same sampling);
- `possible`: every response token must lie in the checker's truncated set at its step, read from
  one teacher-forced forward pass over prompt ‖ response (batched windows past `block_size`).

Sampling, per step: logits (float64) ÷ temperature, then the truncated set — the intersection of
the top-k tokens and the smallest top-p nucleus of the whole tempered distribution (ties at its
weakest logit are all kept) — then one uniform u from a `torch.Generator` seeded with the request's
seed, picked by inverse CDF over the kept tokens in descending-logit order (a multinomial draw whose
result does not depend on torch's multinomial kernel). Temperature 0 is greedy: the argmax, ties to
the lowest id, no draw. Tokens are bytes (vocab 256), so a response is its `bytes`.

The same model, inputs and numeric environment give the same bytes. A `possible` check widens the
truncated set by `margin` on the tempered logits, so the small differences between the generation's
step-by-step forward passes and the check's single pass do not flip a verdict.

Importing this module does not load torch (the provider app builds `Sampling` on its event loop and
hands it to a worker process); torch loads with the first model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ogpu_node.types.streams import MAX_PROMPT_BYTES, MAX_RESPONSE_TOKENS

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["KINDS", "MAX_PROMPT_BYTES", "MAX_RESPONSE_TOKENS", "Sampling", "check", "generate", "generate_iter",
           "load_served_model"]

KINDS = ("tokens", "possible")  # the equivalences `check` applies
VOCAB = 256  # byte-level: a token is a byte
MAX_SEED = 2**64 - 1  # a request's seed is a uint64
WINDOW_TOKENS = 8_192  # tokens per batched forward pass of a `possible` check past block_size
WEIGHTS_PREFIX = "model/"  # a whole checkpoint's weights (checkpoint.py); a plain weights file has none


@dataclass(frozen=True)
class Sampling:
    """How members generate: `temperature` 0 is greedy; above 0, sampling from the top_k / top_p
    truncated tempered distribution. `margin`: the logit slack a `possible` check allows."""

    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    margin: float = 1e-3

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ValueError(f"sampling.temperature: expected a finite number >= 0, got {t!r:.40}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"sampling.top_k: expected a positive integer or None, got {k!r:.40}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0):
            raise ValueError(f"sampling.top_p: expected a number in (0, 1] or None, got {p!r:.40}")
        m = self.margin
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m < 0:
            raise ValueError(f"sampling.margin: expected a finite number >= 0, got {m!r:.40}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "margin": self.margin}

    @classmethod
    def from_json(cls, doc: Any) -> Sampling:
        if not isinstance(doc, dict) or set(doc) != {"temperature", "top_k", "top_p", "margin"}:
            raise ValueError(f"sampling: expected temperature, top_k, top_p and margin, got {doc!r:.80}")
        return cls(**doc)


# -- loading --


def load_served_model(family: str, hparams: dict[str, Any], weights: bytes) -> nn.Module:
    """The model `family(hparams)` holding `weights`, in eval mode with gradients off.

    `weights` is a whole checkpoint (checkpoint.py: its `model/…` tensors are taken, the optimizer's
    ignored) or a plain safetensors file of the model's state_dict. Every tensor must match the
    model's by name, shape and dtype and be finite. Raises InvalidModelSpec (family, hparams) or
    InvalidCheckpoint (weights), both ValueErrors; nothing is unpickled."""
    import torch

    from ogpu_node.compute.checkpoint import read_tensors
    from ogpu_node.compute.errors import InvalidCheckpoint, InvalidModelSpec
    from ogpu_node.compute.models import build_model, config_from_hparams
    from ogpu_node.compute.prescription import GENERATIVE_FAMILIES

    if family not in GENERATIVE_FAMILIES:
        raise InvalidModelSpec(f"served model: {family!r:.60} does not generate (needs {', '.join(GENERATIVE_FAMILIES)})")
    cfg = config_from_hparams(family, hparams)
    if cfg.vocab_size != VOCAB:
        raise InvalidModelSpec(f"{family}.vocab_size: a served model's tokens are bytes: needs {VOCAB}, got {cfg.vocab_size}")
    tensors = read_tensors(weights)  # bounded header, then safetensors' own checks: InvalidCheckpoint
    prefix = WEIGHTS_PREFIX if any(name.startswith(WEIGHTS_PREFIX) for name in tensors) else ""
    state = {name.removeprefix(prefix): t for name, t in tensors.items() if name.startswith(prefix)}
    with torch.device("meta"):
        expected = build_model(family, hparams).state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r:.80}"
        raise InvalidCheckpoint(f"served weights: {what} for {family} {_shape_words(hparams)}")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InvalidCheckpoint(f"served weights: {name} is {got.dtype} {tuple(got.shape)}, "
                                    f"{family} {_shape_words(hparams)} needs {want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise InvalidCheckpoint(f"served weights: {name} holds NaN or infinite values")
    with torch.random.fork_rng(devices=[]):  # construction draws an init we overwrite: leave the global RNG be
        model = build_model(family, hparams)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def _shape_words(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))


# -- generation --


def _check_request(model: nn.Module, prompt: bytes, max_tokens: int, seed: int, sampling: Sampling) -> None:
    if not isinstance(prompt, bytes | bytearray) or not 1 <= len(prompt) <= MAX_PROMPT_BYTES:
        raise ValueError(f"prompt: expected 1 to {MAX_PROMPT_BYTES} bytes, got {_length(prompt)}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens <= MAX_RESPONSE_TOKENS:
        raise ValueError(f"max_tokens: expected 0 to {MAX_RESPONSE_TOKENS}, got {max_tokens!r:.40}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: expected an integer in [0, 2**64), got {seed!r:.40}")
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling: expected a Sampling, got {type(sampling).__name__}")
    if getattr(getattr(model, "config", None), "vocab_size", None) != VOCAB:
        raise ValueError("model: expected a byte-level char-transformer (load_served_model)")


def _length(value: Any) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__


def _ids(*parts: bytes) -> torch.Tensor:
    import torch

    return torch.tensor(list(b"".join(parts)), dtype=torch.long)


def _kept(scaled: torch.Tensor, top_k: int | None, top_p: float | None, margin: float) -> torch.Tensor:
    """Rows of tempered logits (N, V) → the mask of each row's truncated set: the top-k ∩ the smallest
    top-p nucleus, widened to every token within `margin` of the set's weakest logit (ties kept)."""
    import torch

    values = torch.sort(scaled, dim=-1, descending=True, stable=True).values
    rows, vocab = values.shape
    size = torch.full((rows,), vocab, dtype=torch.long)
    if top_k is not None:
        size.clamp_(max=top_k)
    if top_p is not None:
        cumulative = torch.cumsum(torch.softmax(values, dim=-1), dim=-1)
        nucleus = torch.searchsorted(cumulative, torch.full((rows, 1), top_p, dtype=cumulative.dtype)).squeeze(-1) + 1
        size = torch.minimum(size, nucleus)  # cumulative may round below top_p = 1: size stays <= vocab
    weakest = values.gather(-1, (size - 1).unsqueeze(-1))
    return scaled >= weakest - margin


def _pick(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator) -> int:
    """The next token from one row of float64 logits (V,)."""
    import torch

    if sampling.greedy:
        return int(torch.argmax(logits))  # the first of equal maxima: the lowest id
    scaled = logits / sampling.temperature
    keep = _kept(scaled.unsqueeze(0), sampling.top_k, sampling.top_p, 0.0)[0]
    order = torch.argsort(scaled, descending=True, stable=True)
    probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)[order]
    cdf = torch.cumsum(probs, dim=0)
    u = torch.rand((), generator=gen, dtype=torch.float64)
    i = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return int(order[min(i, int(keep.sum()) - 1)])  # rounding must not reach a dropped token


def generate_iter(model: nn.Module, prompt: bytes, max_tokens: int, seed: int, sampling: Sampling) -> Iterator[int]:
    """`generate`'s tokens (byte values) one by one, as each is decided. Bad inputs raise here, not
    at the first token."""
    _check_request(model, prompt, max_tokens, seed, sampling)
    return _tokens(model, bytes(prompt), max_tokens, seed, sampling)


def _tokens(model: nn.Module, prompt: bytes, max_tokens: int, seed: int, sampling: Sampling) -> Iterator[int]:
    import torch

    block = model.config.block_size
    ids = torch.empty(len(prompt) + max_tokens, dtype=torch.long)
    ids[:len(prompt)] = _ids(prompt)
    gen = torch.Generator().manual_seed(seed)
    n = len(prompt)
    for _ in range(max_tokens):
        with torch.inference_mode():  # per step: the caller's code runs between yields
            logits = model(ids[max(0, n - block):n].unsqueeze(0))[0, -1].to(torch.float64)
            token = _pick(logits, sampling, gen)
        ids[n] = token
        n += 1
        yield token


def generate(model: nn.Module, prompt: bytes, max_tokens: int, seed: int, sampling: Sampling) -> bytes:
    """`max_tokens` bytes after `prompt`, each step from the model's last `block_size` window of
    context. Deterministic: the same inputs in the same numeric environment give the same bytes."""
    return bytes(generate_iter(model, prompt, max_tokens, seed, sampling))


# -- checks --


def check(
    model: nn.Module,
    prompt: bytes,
    response: bytes,
    seed: int,
    sampling: Sampling,
    kind: str,
    max_tokens: int | None = None,
) -> bool:
    """Does `response` to (prompt, seed) pass equivalence `kind` ("tokens" or "possible") against
    `model`? With `max_tokens` (the request's), a response of another length fails. Raises
    ValueError for a kind it does not know, untruncated sampling under `possible`, or inputs past
    MAX_PROMPT_BYTES / MAX_RESPONSE_TOKENS."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r:.40}")
    if not isinstance(response, bytes | bytearray) or len(response) > MAX_RESPONSE_TOKENS:
        raise ValueError(f"response: expected at most {MAX_RESPONSE_TOKENS} bytes, got {_length(response)}")
    _check_request(model, prompt, len(response), seed, sampling)
    if max_tokens is not None and len(response) != max_tokens:
        return False
    if kind == "tokens":
        return generate(model, prompt, len(response), seed, sampling) == bytes(response)
    if not sampling.greedy and sampling.top_k is None and sampling.top_p is None:
        raise ValueError("possible: needs top_k or top_p (untruncated sampling can produce any token)")
    return _possible(model, bytes(prompt), bytes(response), sampling)


def _possible(model: nn.Module, prompt: bytes, response: bytes, sampling: Sampling) -> bool:
    import torch

    if not response:
        return True
    block = model.config.block_size
    seq = _ids(prompt, response)
    start, end = len(prompt), len(seq)  # predicted positions: seq[start:end]
    # The generation predicted position i from seq[max(0, i - block):i]. Positions i <= block share
    # the window's start 0: one pass over seq[:block] gives them all. Each later one has its own
    # window, ending at i: batched, WINDOW_TOKENS tokens per pass.
    rows = []
    with torch.inference_mode():
        if start <= block:
            first = min(end - 1, block)
            rows.append(model(seq[:first].unsqueeze(0))[0, start - 1:first])
        later = torch.arange(max(start, block + 1), max(end, block + 1))
        if len(later):
            windows = seq.unfold(0, block, 1)  # a view: windows[i - block] is seq[i - block:i]
            chunk = max(1, WINDOW_TOKENS // block)
            rows += [model(windows[later[j:j + chunk] - block])[:, -1] for j in range(0, len(later), chunk)]
        logits = torch.cat(rows).to(torch.float64)
        if sampling.greedy:  # greedy is top-1 of the raw logits
            keep = _kept(logits, 1, None, sampling.margin)
        else:
            keep = _kept(logits / sampling.temperature, sampling.top_k, sampling.top_p, sampling.margin)
        return bool(keep.gather(-1, seq[start:end].unsqueeze(-1)).all())
