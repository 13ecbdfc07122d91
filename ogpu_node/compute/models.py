"""Model families a prescription can name: `mlp`, `cnn`, `char-transformer`.

A family is a frozen config dataclass plus an `nn.Module` built from it. Clients never ship code:
they pick a family and give its hyperparameters as a JSON object, which `config_from_hparams`
checks field by field. Every model maps inputs to logits (`forward`) and scores a batch with
`loss(x, y)` (cross-entropy), so the trainer treats all families alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ogpu_node.compute.errors import InvalidModelSpec

# Hyperparameters come from someone else's prescription. A few bytes of JSON must not ask for a
# model whose mere construction takes hours or all memory, even on the meta device (each layer is
# Python objects), nor for sizes whose products overflow torch's int64 storage arithmetic: lists and
# `n_layer` are capped at MAX_LAYERS, every other integer at MAX_SIZE. Real models stay far below.
MAX_LAYERS = 128
MAX_SIZE = 1 << 20

# --- configs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPConfig:
    in_dim: int
    out_dim: int
    hidden: tuple[int, ...] = (32,)


@dataclass(frozen=True)
class CNNConfig:
    n_classes: int
    in_channels: int = 1
    image_size: int = 16
    channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3


@dataclass(frozen=True)
class CharTransformerConfig:
    block_size: int = 32
    vocab_size: int = 256  # byte-level: a text corpus is its bytes
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0


# --- models --------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        dims = [cfg.in_dim, *cfg.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], cfg.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


class CNN(nn.Module):
    """Conv → ReLU → 2×2 max-pool per entry of `channels`, then a linear classifier."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = cfg.in_channels, cfg.image_size
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in, size = c_out, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * size * size, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: CharTransformerConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)  # derived, so not part of a checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: CharTransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CharTransformer(nn.Module):
    """A tiny GPT (nanoGPT's shape) over byte ids; input and output embeddings are not tied,
    so every tensor in a checkpoint is stored once."""

    def __init__(self, cfg: CharTransformerConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) byte ids → (B, T, vocab) logits."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


# --- registry ------------------------------------------------------------------------------------

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "char-transformer": (CharTransformerConfig, CharTransformer),
}


def _check_field(family: str, field: dataclasses.Field, value: Any) -> Any:
    where = f"{family}.{field.name}"
    kind = str(field.type)
    if kind.startswith("tuple"):
        if not isinstance(value, list | tuple) or not value:
            raise InvalidModelSpec(f"{where}: expected a non-empty list of positive integers, got {value!r:.60}")
        if len(value) > MAX_LAYERS:
            raise InvalidModelSpec(f"{where}: at most {MAX_LAYERS} entries, got {len(value)}")
        return tuple(_positive_int(where, v) for v in value)
    if kind == "int":
        return _positive_int(where, value, MAX_LAYERS if field.name == "n_layer" else MAX_SIZE)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise InvalidModelSpec(f"{where}: expected a number in [0, 1), got {value!r:.60}")
        return float(value)
    raise AssertionError(f"unhandled field type {kind}")  # pragma: no cover


def _positive_int(where: str, value: Any, most: int = MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidModelSpec(f"{where}: expected a positive integer, got {value!r:.60}")
    if value > most:
        raise InvalidModelSpec(f"{where}: at most {most}")
    return value


def config_from_hparams(family: str, hparams: dict[str, Any]) -> Any:
    """The family's config dataclass from a JSON object; raises InvalidModelSpec naming the field."""
    if family not in FAMILIES:
        raise InvalidModelSpec(f"unknown model family {family!r:.60} (known: {', '.join(sorted(FAMILIES))})")
    if not isinstance(hparams, dict):
        raise InvalidModelSpec(f"{family}: hyperparameters must be a JSON object")
    config_cls = FAMILIES[family][0]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(hparams) - set(fields))
    if unknown:
        raise InvalidModelSpec(f"{family}.{unknown[0]:.60}: unknown hyperparameter")
    values = {}
    for name, field in fields.items():
        if name in hparams:
            values[name] = _check_field(family, field, hparams[name])
        elif field.default is dataclasses.MISSING:
            raise InvalidModelSpec(f"{family}.{name}: required hyperparameter missing")
    cfg = config_cls(**values)
    if isinstance(cfg, CNNConfig) and cfg.image_size % (2 ** len(cfg.channels)) != 0:
        raise InvalidModelSpec(
            f"cnn.image_size: {cfg.image_size} must be divisible by 2**len(channels) = {2 ** len(cfg.channels)}"
        )
    if isinstance(cfg, CharTransformerConfig) and cfg.n_embd % cfg.n_head != 0:
        raise InvalidModelSpec(
            f"char-transformer.n_embd: {cfg.n_embd} must be divisible by n_head {cfg.n_head}"
        )
    return cfg


def canonical_hparams(family: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters with defaults filled in and tuples as lists: the form stored in checkpoints."""
    cfg = config_from_hparams(family, hparams)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def build_model(family: str, hparams: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of `family` (initialisation draws from torch's global RNG)."""
    cfg = config_from_hparams(family, hparams)
    return FAMILIES[family][1](cfg)
