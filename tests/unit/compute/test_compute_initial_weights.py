from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from unit.compute.compute_tasks import mlp_spec, text_spec

from ogpu_node.compute import InvalidTrainSpec, initial_checkpoint, load, train_segment
from ogpu_node.compute.checkpoint import read_metadata


def _weights_of(ckpt: bytes) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model/"): v for k, v in st_load(ckpt).items() if k.startswith("model/")}


def _client_weights(spec) -> dict[str, torch.Tensor]:
    # What a client would upload: the state_dict of a model it trained elsewhere.
    return _weights_of(train_segment(spec, None, 7).checkpoint)


@pytest.mark.parametrize("make", [mlp_spec, text_spec])
def test_initial_checkpoint_holds_the_given_weights_at_step_0(make):
    spec = make()
    weights = _client_weights(spec)
    ckpt = initial_checkpoint(spec, st_save(weights))
    model, optimizer, state = load(ckpt)
    assert state.step == 0 and state.data_cursor == 0 and state.recent_losses == ()
    assert optimizer.state == {}
    for name, t in model.state_dict().items():
        assert torch.equal(t, weights[name])
    meta = read_metadata(ckpt)
    assert meta["seed"] == spec.seed and meta["recent_losses"] == []


def test_training_from_initial_weights_resumes_like_any_checkpoint():
    spec = mlp_spec()
    start = initial_checkpoint(spec, st_save(_client_weights(spec)))
    straight = train_segment(spec, start, 8)
    resumed = train_segment(spec, train_segment(spec, start, 3).checkpoint, 5)
    assert resumed.checkpoint == straight.checkpoint
    assert straight.checkpoint != train_segment(spec, None, 8).checkpoint
    # Pretrained weights start where the client left them: the first loss is already low.
    assert straight.losses[0] < train_segment(spec, None, 1).losses[0]


def test_initial_checkpoint_is_deterministic():
    spec = mlp_spec()
    data = st_save(_client_weights(spec))
    assert initial_checkpoint(spec, data) == initial_checkpoint(spec, bytes(data))


def test_weights_that_do_not_fit_are_rejected_by_name():
    spec = mlp_spec()
    good = _client_weights(spec)
    missing = {k: v for k, v in good.items() if k != "net.0.bias"}
    extra = {**good, "net.9.weight": torch.zeros(2)}
    shape = {**good, "net.0.weight": torch.zeros(3, 3)}
    dtype = {**good, "net.0.weight": good["net.0.weight"].double()}
    cases = [(missing, "missing tensor 'net.0.bias'"), (extra, "unexpected tensor 'net.9.weight'"),
             (shape, r"net.0.weight is torch.float32 \(3, 3\)"), (dtype, "net.0.weight is torch.float64")]
    for weights, message in cases:
        with pytest.raises(InvalidTrainSpec, match=message):
            initial_checkpoint(spec, st_save(weights))


def test_garbage_weights_are_not_unpickled():
    import pickle

    with pytest.raises(InvalidTrainSpec, match="not a safetensors file"):
        initial_checkpoint(mlp_spec(), pickle.dumps({"net.0.weight": [1.0]}))
    with pytest.raises(InvalidTrainSpec, match="not a safetensors file"):
        initial_checkpoint(mlp_spec(), b"")
