"""Semantic checks of a prescription that need the computation layer (DESIGN.md §6).

`ogpu_node.types.prescription` checks shapes and ranges; here: the model family and its
hyperparameters build (on torch's meta device, so nothing is allocated), the dataset format suits the
family, the optimizer spec is one the trainer runs, a named numeric profile is known (and `exact`
names one), and the inference equivalences have what they need (`possible` truncates with top-k or
top-p; `tokens` and `possible` generate, so the model is a `char-transformer`).
Errors are `InvalidPrescription` naming the field.

`spec_from_prescription` turns a batch prescription, its fetched dataset and the training seed into
the `TrainSpec` the trainer runs (errors: `InvalidTrainSpec` naming the field).
"""

from __future__ import annotations

from typing import Any

import torch

from ogpu_node.compute.data import Dataset, dataset_from_safetensors, dataset_from_text
from ogpu_node.compute.errors import InvalidModelSpec, InvalidTrainSpec
from ogpu_node.compute.models import FAMILIES, build_model, config_from_hparams
from ogpu_node.compute.optim import OptimizerSpec
from ogpu_node.compute.profile import PROFILES
from ogpu_node.compute.trainer import TrainSpec
from ogpu_node.types.prescription import InvalidPrescription, Prescription

TEXT_FAMILIES = ("char-transformer",)  # a text corpus trains byte-level models only
GENERATIVE_FAMILIES = ("char-transformer",)  # what `tokens` and `possible` can sample from


def check_semantics(p: Prescription) -> None:
    """Raise InvalidPrescription for what the compute layer cannot honour."""
    if p.M.family not in FAMILIES:
        raise InvalidPrescription(
            "prescription.M.family", f"unknown model family {p.M.family!r:.60} (known: {', '.join(sorted(FAMILIES))})"
        )
    try:
        with torch.device("meta"):
            build_model(p.M.family, p.M.hparams)
    except InvalidModelSpec as exc:
        raise InvalidPrescription("prescription.M.hparams", str(exc)) from None
    except (RuntimeError, OverflowError) as exc:  # sizes within bounds whose product overflows int64
        raise InvalidPrescription("prescription.M.hparams", f"too large a model ({exc})") from None
    if p.D is not None and p.D.format == "text" and p.M.family not in TEXT_FAMILIES:
        raise InvalidPrescription(
            "prescription.D.format", f"text data trains {', '.join(TEXT_FAMILIES)} only, not {p.M.family}"
        )
    if p.I.optimizer is not None:
        try:
            OptimizerSpec.from_json(dict(p.I.optimizer))
        except (InvalidTrainSpec, TypeError, ValueError) as exc:
            where, sep, message = str(exc).partition(": ")
            if sep and where.startswith("optimizer."):
                raise InvalidPrescription(f"prescription.I.{where}", message) from None
            raise InvalidPrescription("prescription.I.optimizer", str(exc)) from None
    profile = p.I.numeric_profile
    if profile is not None and profile not in PROFILES:
        raise InvalidPrescription(
            "prescription.I.numeric_profile",
            f"unknown numeric profile {profile!r} (known: {', '.join(sorted(PROFILES))})",
        )
    if p.e.kind == "exact" and profile is None:  # parse() already refuses this; kept for built objects
        raise InvalidPrescription("prescription.I.numeric_profile", "required when e.kind is exact")
    if p.e.kind == "possible" and p.e.top_k is None and p.e.top_p is None:
        raise InvalidPrescription("prescription.e", "possible needs top_k or top_p truncated sampling")
    if p.e.kind in ("tokens", "possible") and p.M.family not in GENERATIVE_FAMILIES:
        raise InvalidPrescription(
            "prescription.e.kind", f"{p.e.kind} compares generated tokens: needs {', '.join(GENERATIVE_FAMILIES)}"
        )


def validate(doc: Any) -> Prescription:
    """Parse, check structure, then semantics: what a node or client runs on a prescription document."""
    p = Prescription.from_json(doc)
    check_semantics(p)
    return p


def spec_from_prescription(p: Prescription, dataset: bytes, seed: int) -> TrainSpec:
    """The TrainSpec of batch prescription `p`: model from M, optimizer and batch size from I, the
    dataset blob decoded per D.format, and `seed` (`training_seed(p, assignment_seed)`)."""
    if p.kind != "batch" or p.D is None or p.I.optimizer is None or p.I.batch_size is None:
        raise InvalidTrainSpec("prescription.kind: only a batch task with D and I.optimizer trains")
    try:
        cfg = config_from_hparams(p.M.family, p.M.hparams)
    except InvalidModelSpec as e:
        raise InvalidTrainSpec(f"prescription.M.hparams: {e}") from None
    try:
        optimizer = OptimizerSpec.from_json(dict(p.I.optimizer))
    except (InvalidTrainSpec, TypeError, ValueError) as e:
        raise InvalidTrainSpec(f"prescription.I.{e}" if str(e).startswith("optimizer.") else
                               f"prescription.I.optimizer: {e}") from None
    data: Dataset
    try:
        if p.D.format == "text":
            if not hasattr(cfg, "block_size"):
                raise InvalidTrainSpec(f"text data trains a char-transformer, not {p.M.family}")
            data = dataset_from_text(dataset, cfg.block_size)
        else:
            data = dataset_from_safetensors(dataset)
        return TrainSpec(p.M.family, p.M.hparams, optimizer, data, p.I.batch_size, seed)
    except (InvalidTrainSpec, InvalidModelSpec) as e:
        raise InvalidTrainSpec(f"prescription.D: {e}") from None
