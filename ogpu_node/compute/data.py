"""Datasets a prescription's `D` can hold, decoded without pickle.

- tensors: a safetensors file with `features` (N, ...) and `labels` (N,) integer class ids;
- text: a corpus of bytes; token ids are the byte values (vocab 256) and sample i is the window
  ids[i : i+block_size] predicting ids[i+1 : i+block_size+1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from ogpu_node.compute.errors import InvalidTrainSpec
from ogpu_node.compute.tensorfile import read_header

# Features become float32 and labels int64 when decoded: a 1 GiB blob of uint8 could take 4-8 GiB.
# The decoded size is known from the header alone, so a dataset past this is refused before decoding.
MAX_DECODED_DATASET_BYTES = 2 << 30


@dataclass(frozen=True, eq=False)
class TensorDataset:
    features: torch.Tensor  # float32 (N, ...)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.features.ndim < 2 or self.labels.ndim != 1 or len(self.features) != len(self.labels):
            raise InvalidTrainSpec(
                f"dataset: features {tuple(self.features.shape)} and labels {tuple(self.labels.shape)} do not pair up"
            )
        if len(self.labels) == 0:
            raise InvalidTrainSpec("dataset: empty")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[indices], self.labels[indices]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"features": self.features, "labels": self.labels}


@dataclass(frozen=True, eq=False)
class TextDataset:
    ids: torch.Tensor  # uint8 (L,)
    block_size: int

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.ids.dtype != torch.uint8:
            raise InvalidTrainSpec("dataset: text ids must be a 1-D uint8 tensor")
        if self.ids.numel() <= self.block_size:
            raise InvalidTrainSpec(
                f"dataset: corpus of {self.ids.numel()} bytes is not longer than block_size"
            )

    def __len__(self) -> int:
        return self.ids.numel() - self.block_size

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.ids.unfold(0, self.block_size + 1, 1)[indices].long()
        return windows[:, :-1], windows[:, 1:]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"text": self.ids}


Dataset = TensorDataset | TextDataset


def dataset_from_safetensors(data: bytes) -> TensorDataset:
    try:
        header = read_header(data)
    except ValueError as e:  # TensorFileError
        raise InvalidTrainSpec(f"dataset: not a safetensors file: {e}") from None
    decoded = sum(math.prod(info.shape) * (8 if name == "labels" else 4) for name, info in header.items()
                  if name in ("features", "labels"))
    if decoded > MAX_DECODED_DATASET_BYTES:
        raise InvalidTrainSpec(f"dataset: {decoded} bytes once decoded (features as float32, labels as "
                               f"int64), more than the {MAX_DECODED_DATASET_BYTES} a provider decodes")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:  # TensorFileError is a ValueError
        raise InvalidTrainSpec(f"dataset: not a safetensors file: {e}") from None
    missing = {"features", "labels"} - set(tensors)
    if missing:
        raise InvalidTrainSpec(f"dataset: missing tensor {sorted(missing)[0]!r}")
    labels = tensors["labels"]
    if labels.is_floating_point() or labels.is_complex():
        raise InvalidTrainSpec("dataset: labels must be integer class ids")
    return TensorDataset(tensors["features"].to(torch.float32), labels.to(torch.int64))


def dataset_from_text(corpus: bytes, block_size: int) -> TextDataset:
    return TextDataset(torch.frombuffer(bytearray(corpus), dtype=torch.uint8), block_size)
