from __future__ import annotations

import pytest
import torch
from unit.compute.compute_tasks import cnn_spec, mlp_spec, text_spec

from ogpu_node.compute import (
    InvalidCheckpoint,
    InvalidTrainSpec,
    OptimizerSpec,
    TensorDataset,
    TrainSpec,
    checkpoint_hash,
    load,
    train_segment,
)
from ogpu_node.compute.trainer import batch_indices, decode_spec, encode_spec


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize(("make", "steps"), [(mlp_spec, 30), (cnn_spec, 15), (text_spec, 30)])
def test_each_family_learns_its_tiny_task(make, steps):
    losses = train_segment(make(), None, steps).losses
    assert len(losses) == steps
    assert _mean(losses[-3:]) < 0.7 * _mean(losses[:3])


@pytest.mark.parametrize("make", [mlp_spec, lambda: text_spec(dropout=0.1)])
def test_resume_is_bit_for_bit_identical_to_training_straight_through(make):
    spec = make()
    straight = train_segment(spec, None, 12)
    first = train_segment(spec, None, 6)
    second = train_segment(spec, first.checkpoint, 6)
    assert second.checkpoint == straight.checkpoint
    assert first.losses + second.losses == straight.losses


def test_resume_with_sgd_momentum_is_bit_for_bit():
    spec = mlp_spec(optimizer=OptimizerSpec("sgd", 0.1, momentum=0.9))
    straight = train_segment(spec, None, 8)
    assert train_segment(spec, train_segment(spec, None, 4).checkpoint, 4).checkpoint == straight.checkpoint


def test_same_seed_same_bytes_different_seed_differs():
    a = train_segment(mlp_spec(seed=7), None, 5).checkpoint
    b = train_segment(mlp_spec(seed=7), None, 5).checkpoint
    c = train_segment(mlp_spec(seed=8), None, 5).checkpoint
    assert a == b
    assert c != a


def test_state_hash_at_step_matches_checkpoint_of_that_step():
    spec = mlp_spec()
    full = train_segment(spec, None, 10, hash_steps=[0, 4, 10])
    at4 = train_segment(spec, None, 4).checkpoint
    assert full.state_hashes[4] == checkpoint_hash(at4)
    assert full.state_hashes[10] == checkpoint_hash(full.checkpoint)
    assert full.state_hashes[0] == checkpoint_hash(train_segment(spec, None, 0).checkpoint)
    resumed = train_segment(spec, at4, 6, hash_steps=[7])
    assert resumed.state_hashes[7] == checkpoint_hash(train_segment(spec, None, 7).checkpoint)


def test_hash_step_outside_segment_is_rejected():
    spec = mlp_spec()
    with pytest.raises(InvalidTrainSpec, match="outside this segment"):
        train_segment(spec, None, 3, hash_steps=[4])


def test_checkpoint_records_step_and_data_cursor():
    _, _, state = load(train_segment(mlp_spec(), None, 5).checkpoint)
    assert (state.step, state.data_cursor, state.seed) == (5, 80, 7)


def test_data_order_is_a_permutation_per_epoch_fixed_by_seed():
    epoch0 = batch_indices(7, 10, 0, 10)
    assert sorted(epoch0.tolist()) == list(range(10))
    assert batch_indices(7, 10, 0, 10).tolist() == epoch0.tolist()
    assert batch_indices(7, 10, 10, 10).tolist() != epoch0.tolist()  # next epoch reshuffles
    assert batch_indices(7, 10, 8, 4).tolist() == batch_indices(7, 10, 0, 20)[8:12].tolist()


def test_resuming_another_tasks_checkpoint_is_rejected():
    ckpt = train_segment(mlp_spec(seed=7), None, 2).checkpoint
    with pytest.raises(InvalidCheckpoint, match="different task"):
        train_segment(mlp_spec(seed=8), ckpt, 2)


def test_labels_out_of_range_are_rejected():
    spec = mlp_spec()
    with pytest.raises(InvalidTrainSpec, match="labels"):
        TrainSpec(
            "mlp",
            {"in_dim": 8, "out_dim": 2},
            spec.optimizer,
            TensorDataset(spec.dataset.features, spec.dataset.labels + 2),
            16,
            7,
        )


def test_text_corpus_needs_the_char_transformer():
    spec = text_spec()
    with pytest.raises(InvalidTrainSpec, match="char-transformer"):
        TrainSpec("mlp", {"in_dim": 16, "out_dim": 2}, spec.optimizer, spec.dataset, 8, 7)


def test_dataset_samples_must_fit_the_model_input():
    spec = mlp_spec()
    wrong = TensorDataset(spec.dataset.features[:, :4], spec.dataset.labels)
    with pytest.raises(InvalidTrainSpec, match=r"samples of shape \(4,\), mlp needs 8 values"):
        TrainSpec("mlp", spec.hparams, spec.optimizer, wrong, 16, 7)
    image = TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidTrainSpec, match=r"cnn needs shape \(1, 16, 16\)"):
        TrainSpec("cnn", {"n_classes": 2}, spec.optimizer, image, 2, 7)
    flat = TensorDataset(torch.zeros(4, 2, 4), torch.zeros(4, dtype=torch.long))
    TrainSpec("mlp", spec.hparams, spec.optimizer, flat, 2, 7)  # 2×4 flattens to in_dim 8


def test_a_spec_round_trips_as_bytes_and_garbage_is_refused():
    spec = mlp_spec(seed=11)
    data = encode_spec(spec)
    back = decode_spec(data)
    assert (back.family, back.hparams, back.optimizer, back.batch_size, back.seed) == (
        spec.family, {"hidden": [32], "in_dim": 8, "out_dim": 2}, spec.optimizer, spec.batch_size, 11)
    assert encode_spec(back) == data
    for bad in (b"", data[:20], train_segment(spec, None, 1).checkpoint):  # a checkpoint is not a spec
        with pytest.raises(InvalidTrainSpec, match="not an encoded training spec"):
            decode_spec(bad)
