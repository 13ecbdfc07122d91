"""Computation layer: model registry, deterministic trainer, checkpoints, equivalence functions, serving.

The only package that imports torch. See docs/tasks.md for the model families, the checkpoint
format, numeric profiles and the equivalence functions.

Names load lazily (PEP 562): `import ogpu_node.compute` and its torch-free modules (`profile`,
`errors`, `tensorfile`, `worker`, `serve`, `generate`) do not load torch, so a worker process can set its
numeric profile before torch reads it, and the apps pay for torch only where they train. No name
exported here is also a submodule's name: importing that submodule would rebind the attribute.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ogpu_node.compute import equivalence
    from ogpu_node.compute.checkpoint import TrainState, checkpoint_hash, load, save
    from ogpu_node.compute.cost import Estimate, estimate
    from ogpu_node.compute.data import TensorDataset, TextDataset, dataset_from_safetensors, dataset_from_text
    from ogpu_node.compute.errors import (
        ComputeError,
        InvalidCheckpoint,
        InvalidModelSpec,
        InvalidTrainSpec,
        ProfileUnavailable,
        UnknownProfile,
        WorkerFailed,
    )
    from ogpu_node.compute.faults import Fault, train_faulty
    from ogpu_node.compute.generate import Sampling, load_served_model
    from ogpu_node.compute.models import FAMILIES, build_model, config_from_hparams
    from ogpu_node.compute.optim import OptimizerSpec
    from ogpu_node.compute.prescription import spec_from_prescription
    from ogpu_node.compute.profile import PROFILES, profile_env
    from ogpu_node.compute.trainer import (
        SegmentResult,
        TrainSpec,
        check_initial_weights,
        initial_checkpoint,
        train_segment,
    )
    from ogpu_node.compute.worker import SegmentRun, Worker, WorkerInfo, train_segment_in_profile

# exported name -> the submodule that defines it
_HOME = {
    "equivalence": "",  # a submodule itself
    **dict.fromkeys(("TrainState", "checkpoint_hash", "load", "save"), "checkpoint"),
    **dict.fromkeys(("Estimate", "estimate"), "cost"),
    **dict.fromkeys(("TensorDataset", "TextDataset", "dataset_from_safetensors", "dataset_from_text"), "data"),
    **dict.fromkeys(("ComputeError", "InvalidCheckpoint", "InvalidModelSpec", "InvalidTrainSpec",
                     "ProfileUnavailable", "UnknownProfile", "WorkerFailed"), "errors"),
    **dict.fromkeys(("Fault", "train_faulty"), "faults"),
    **dict.fromkeys(("Sampling", "load_served_model"), "generate"),  # generate/check: the module's own names
    **dict.fromkeys(("FAMILIES", "build_model", "config_from_hparams"), "models"),
    "OptimizerSpec": "optim",
    "spec_from_prescription": "prescription",
    **dict.fromkeys(("PROFILES", "profile_env"), "profile"),
    **dict.fromkeys(("SegmentResult", "TrainSpec", "check_initial_weights", "initial_checkpoint", "train_segment"),
                   "trainer"),
    **dict.fromkeys(("SegmentRun", "Worker", "WorkerInfo", "train_segment_in_profile"), "worker"),
}

__all__ = [  # literal, so that linters see the TYPE_CHECKING imports used; equal to _HOME's keys (a test checks)
    "ComputeError",
    "Estimate",
    "FAMILIES",
    "Fault",
    "InvalidCheckpoint",
    "InvalidModelSpec",
    "InvalidTrainSpec",
    "OptimizerSpec",
    "PROFILES",
    "ProfileUnavailable",
    "Sampling",
    "SegmentResult",
    "SegmentRun",
    "TensorDataset",
    "TextDataset",
    "TrainSpec",
    "TrainState",
    "UnknownProfile",
    "Worker",
    "WorkerFailed",
    "WorkerInfo",
    "build_model",
    "check_initial_weights",
    "checkpoint_hash",
    "config_from_hparams",
    "dataset_from_safetensors",
    "dataset_from_text",
    "equivalence",
    "estimate",
    "initial_checkpoint",
    "load",
    "load_served_model",
    "profile_env",
    "save",
    "spec_from_prescription",
    "train_faulty",
    "train_segment",
    "train_segment_in_profile",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if home == "":
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
