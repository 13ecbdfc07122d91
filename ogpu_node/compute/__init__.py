"""Computation layer: model registry, deterministic trainer, checkpoints, equivalence functions.

The only package that imports torch. See docs/tasks.md for the model families, the checkpoint
format, numeric profiles and the equivalence functions.
"""

from ogpu_node.compute import equivalence
from ogpu_node.compute.checkpoint import TrainState, checkpoint_hash, load, save
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
from ogpu_node.compute.estimate import Estimate, estimate
from ogpu_node.compute.faults import FAULTS, Fault, train_faulty
from ogpu_node.compute.models import FAMILIES, build_model, config_from_hparams
from ogpu_node.compute.optim import OptimizerSpec
from ogpu_node.compute.prescription import spec_from_prescription
from ogpu_node.compute.profile import PROFILES, profile_env, train_segment_in_profile
from ogpu_node.compute.trainer import SegmentResult, TrainSpec, initial_checkpoint, train_segment
from ogpu_node.compute.worker import SegmentRun, Worker

__all__ = [
    "FAMILIES",
    "FAULTS",
    "PROFILES",
    "ComputeError",
    "Estimate",
    "Fault",
    "InvalidCheckpoint",
    "InvalidModelSpec",
    "InvalidTrainSpec",
    "OptimizerSpec",
    "ProfileUnavailable",
    "SegmentResult",
    "SegmentRun",
    "TensorDataset",
    "TextDataset",
    "TrainSpec",
    "TrainState",
    "UnknownProfile",
    "Worker",
    "WorkerFailed",
    "build_model",
    "checkpoint_hash",
    "config_from_hparams",
    "dataset_from_safetensors",
    "dataset_from_text",
    "equivalence",
    "estimate",
    "initial_checkpoint",
    "load",
    "profile_env",
    "save",
    "spec_from_prescription",
    "train_segment",
    "train_faulty",
    "train_segment_in_profile",
]
