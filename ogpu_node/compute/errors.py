"""Typed errors of the computation layer, raised where client input enters."""

from __future__ import annotations


class ComputeError(Exception):
    """Base of every error raised by ogpu_node.compute."""


class InvalidModelSpec(ComputeError, ValueError):
    """A model family or hyperparameter the registry cannot build; the message names the field."""


class InvalidTrainSpec(ComputeError, ValueError):
    """A training spec (optimizer, dataset, batch size, seed) that cannot be run."""


class InvalidCheckpoint(ComputeError, ValueError):
    """Bytes that are not a canonical ogpu checkpoint."""


class UnknownProfile(ComputeError, ValueError):
    """A numeric profile name this node does not know."""


class ProfileUnavailable(ComputeError, RuntimeError):
    """This machine cannot honour the numeric profile (e.g. it lacks the instruction set)."""


class WorkerFailed(ComputeError, RuntimeError):
    """A training worker process died, timed out or raised; `error_type` names the exception the
    worker raised (e.g. `InvalidCheckpoint`), None when the process itself failed."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
