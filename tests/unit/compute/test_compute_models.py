from __future__ import annotations

import pytest
import torch

from ogpu_node.compute import FAMILIES, InvalidModelSpec, build_model, config_from_hparams


def test_registry_names_the_three_families():
    assert sorted(FAMILIES) == ["char-transformer", "cnn", "mlp"]


@pytest.mark.parametrize(
    ("family", "hparams", "x", "out_shape"),
    [
        ("mlp", {"in_dim": 8, "out_dim": 3, "hidden": [16, 16]}, torch.zeros(4, 8), (4, 3)),
        ("cnn", {"n_classes": 5}, torch.zeros(4, 1, 16, 16), (4, 5)),
        (
            "char-transformer",
            {"block_size": 8, "n_layer": 1},
            torch.zeros(2, 8, dtype=torch.long),
            (2, 8, 256),
        ),
    ],
)
def test_build_model_maps_inputs_to_logits(family, hparams, x, out_shape):
    assert tuple(build_model(family, hparams)(x).shape) == out_shape


def test_hidden_list_becomes_tuple():
    assert config_from_hparams("mlp", {"in_dim": 2, "out_dim": 2, "hidden": [4, 5]}).hidden == (4, 5)


@pytest.mark.parametrize(
    ("family", "hparams", "field"),
    [
        ("resnet", {}, "unknown model family 'resnet'"),
        ("mlp", {"out_dim": 2}, "mlp.in_dim: required"),
        ("mlp", {"in_dim": 0, "out_dim": 2}, "mlp.in_dim: expected a positive integer"),
        ("mlp", {"in_dim": True, "out_dim": 2}, "mlp.in_dim"),
        ("mlp", {"in_dim": 2, "out_dim": 2, "hidden": []}, "mlp.hidden"),
        ("mlp", {"in_dim": 2, "out_dim": 2, "depth": 3}, "mlp.depth: unknown hyperparameter"),
        ("cnn", {"n_classes": 2, "image_size": 10}, "cnn.image_size"),
        ("char-transformer", {"n_embd": 30, "n_head": 4}, "char-transformer.n_embd"),
        ("char-transformer", {"dropout": 1.5}, "char-transformer.dropout"),
    ],
)
def test_bad_hyperparameter_error_names_the_field(family, hparams, field):
    with pytest.raises(InvalidModelSpec, match=field.replace(".", r"\.")):
        build_model(family, hparams)


def test_char_transformer_rejects_sequences_longer_than_block_size():
    model = build_model("char-transformer", {"block_size": 4, "n_layer": 1})
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))
