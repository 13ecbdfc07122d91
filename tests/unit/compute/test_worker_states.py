"""A council member under allclose publishes its state at the drawn step: the worker keeps the states
at the hash steps on request, and they are the very checkpoints whose hashes it reports."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from ogpu_node.compute import Worker, train_segment
from ogpu_node.compute.checkpoint import checkpoint_hash
from ogpu_node.compute.data import dataset_from_safetensors
from ogpu_node.compute.optim import OptimizerSpec
from ogpu_node.compute.trainer import TrainSpec


def spec() -> TrainSpec:
    rng = np.random.default_rng(5)
    data = save({"features": rng.standard_normal((32, 4)).astype(np.float32),
                 "labels": rng.integers(0, 2, 32).astype(np.int64)})
    return TrainSpec("mlp", {"in_dim": 4, "out_dim": 2, "hidden": [8]}, OptimizerSpec("adam", 0.01),
                     dataset_from_safetensors(data), batch_size=4, seed=11)


@pytest.mark.timeout(120)
def test_kept_states_are_the_checkpoints_at_the_hash_steps_in_process_and_in_a_worker():
    s = spec()
    plain = train_segment(s, None, 6, hash_steps=[2, 4])
    kept = train_segment(s, None, 6, hash_steps=[2, 4], keep_states=True)
    assert plain.states is None and kept.checkpoint == plain.checkpoint
    assert {k: checkpoint_hash(v) for k, v in kept.states.items()} == plain.state_hashes
    assert kept.states[4] == train_segment(s, None, 4).checkpoint  # a straight run to step 4
    with Worker(None) as worker:
        run = worker.train(s, None, 6, hash_steps=[2, 4], keep_states=True)
        assert run.checkpoint == plain.checkpoint and run.states == kept.states
        bare = worker.train(s, None, 6, hash_steps=[4])
        assert bare.states == {} and bare.state_hashes == {4: plain.state_hashes[4]}
