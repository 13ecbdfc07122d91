from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import (
    InvalidCheckpoint,
    checkpoint_hash,
    dataset_from_safetensors,
    load,
    save,
    train_segment,
)
from ogpu_node.compute.checkpoint import read_metadata
from ogpu_node.compute.tensorfile import MAX_HEADER, ogpu_metadata


def test_round_trip_gives_identical_bytes_and_state():
    ckpt = train_segment(text_spec(), None, 4).checkpoint
    model, optimizer, state = load(ckpt)
    assert save(model, optimizer, state) == ckpt
    assert state.step == 4 and state.family == "char-transformer"


def test_checkpoint_holds_weights_optimizer_state_and_json_metadata():
    ckpt = train_segment(mlp_spec(), None, 3).checkpoint
    names = set(st_load(ckpt))
    assert "model/net.0.weight" in names
    assert {"optim/net.0.weight/step", "optim/net.0.weight/exp_avg", "optim/net.0.weight/exp_avg_sq"} <= names
    meta = read_metadata(ckpt)
    assert meta["format"] == "ogpu-checkpoint/1"
    assert meta["hparams"] == {"hidden": [32], "in_dim": 8, "out_dim": 2}
    assert meta["scheduler"] == {"name": "constant", "last_step": 3, "next_lr": 0.01}
    assert meta["data_cursor"] == 48 and meta["seed"] == 7


def test_garbage_is_not_a_checkpoint():
    with pytest.raises(InvalidCheckpoint):
        load(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InvalidCheckpoint, match="metadata"):
        load(st_save({"x": torch.zeros(1)}))


def test_metadata_is_read_through_tensorfile_and_headers_are_bounded():
    ckpt = train_segment(mlp_spec(), None, 2).checkpoint
    assert read_metadata(ckpt) == ogpu_metadata(ckpt)
    oversized = (MAX_HEADER + 1).to_bytes(8, "little") + ckpt[8:]
    for bad in (oversized, ckpt[:7], st_save({"x": torch.zeros(1)}, metadata={"ogpu": "[1]"})):
        with pytest.raises(InvalidCheckpoint):
            read_metadata(bad)
        with pytest.raises(InvalidCheckpoint):
            load(bad)


def test_weights_that_do_not_fit_the_family_are_rejected():
    ckpt = train_segment(mlp_spec(), None, 1).checkpoint
    tensors = st_load(ckpt)
    tensors["model/net.0.weight"] = torch.zeros(3, 3)
    n = int.from_bytes(ckpt[:8], "little")
    metadata = json.loads(ckpt[8 : 8 + n])["__metadata__"]
    with pytest.raises(InvalidCheckpoint, match="do not fit"):
        load(st_save(tensors, metadata=metadata))


def test_tensor_dataset_from_safetensors():
    ds = dataset_from_safetensors(
        st_save(
            {
                "features": torch.ones(4, 2, dtype=torch.float64),
                "labels": torch.tensor([0, 1, 0, 1], dtype=torch.int32),
            }
        )
    )
    assert ds.features.dtype == torch.float32 and ds.labels.dtype == torch.int64 and len(ds) == 4


def test_recent_losses_are_the_last_16_training_losses_oldest_first():
    spec = mlp_spec()
    assert read_metadata(train_segment(spec, None, 0).checkpoint)["recent_losses"] == []
    short = train_segment(spec, None, 5)
    assert read_metadata(short.checkpoint)["recent_losses"] == short.losses
    long = train_segment(spec, None, 20)
    assert read_metadata(long.checkpoint)["recent_losses"] == long.losses[-16:]


def test_recent_losses_survive_a_resume_bit_for_bit():
    spec = mlp_spec()
    straight = train_segment(spec, None, 20)
    first = train_segment(spec, None, 13)
    second = train_segment(spec, first.checkpoint, 7)
    assert second.checkpoint == straight.checkpoint
    _, _, state = load(first.checkpoint)
    assert list(state.recent_losses) == first.losses


def test_state_hash_mid_segment_covers_recent_losses():
    spec = mlp_spec()
    full = train_segment(spec, train_segment(spec, None, 3).checkpoint, 6, hash_steps=[5])
    at5 = train_segment(spec, None, 5).checkpoint
    assert full.state_hashes[5] == checkpoint_hash(at5)


def test_a_diverged_loss_is_stored_as_null_and_round_trips():
    ckpt = train_segment(mlp_spec(), None, 2).checkpoint
    model, optimizer, state = load(ckpt)
    diverged = save(model, optimizer, dataclasses.replace(state, recent_losses=(1.5, math.nan, math.inf)))
    assert read_metadata(diverged)["recent_losses"] == [1.5, None, None]
    assert save(*load(diverged)) == diverged


def test_malformed_recent_losses_are_rejected():
    ckpt = train_segment(mlp_spec(), None, 1).checkpoint
    tensors = st_load(ckpt)
    for bad in (["x"], [0.0] * 17, 3):
        meta = {**read_metadata(ckpt), "recent_losses": bad}
        with pytest.raises(InvalidCheckpoint, match="recent_losses|metadata"):
            load(st_save(tensors, metadata={"ogpu": json.dumps(meta)}))
