"""Safetensors files and checkpoints from someone else (issue 10): every reader is bounded before it
parses, refuses with its typed error, and never crashes — not even on a header nested 100,000 deep
in this process, whose recursion limit py-evm raised to 10^5.

The corpus is tests/malformed_documents.py; `read_header` is checked against the safetensors
library itself as an oracle (it accepts exactly the files the library loads)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.numpy import load as np_load

from ogpu_node.apps.client import BadCheckpoint, checkpoint_metadata, mean_recent_loss
from ogpu_node.compute import (
    InvalidCheckpoint,
    InvalidModelSpec,
    InvalidTrainSpec,
    build_model,
    check_initial_weights,
    estimate,
    initial_checkpoint,
    load,
    spec_from_prescription,
    train_segment,
)
from ogpu_node.compute.checkpoint import read_metadata as checkpoint_read_metadata
from ogpu_node.compute.models import MAX_LAYERS, MAX_SIZE
from ogpu_node.compute.prescription import validate
from ogpu_node.compute.tensorfile import (
    TensorFileError,
    TensorInfo,
    encode_arrays,
    load_arrays,
    ogpu_metadata,
    read_header,
    read_metadata,
)
from ogpu_node.types.prescription import InvalidPrescription, Prescription
from tests.malformed_documents import (
    GOOD,
    bad_checkpoints,
    bad_datasets,
    bad_safetensors,
    bad_weights,
    edit,
    good_dataset,
    good_weights,
)

BAD_FILES = bad_safetensors(good_dataset())


def good_spec():
    return spec_from_prescription(Prescription.from_json(GOOD), good_dataset(), 5)


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    return train_segment(good_spec(), None, 2).checkpoint


def test_this_process_would_crash_on_unbounded_json():
    assert sys.getrecursionlimit() >= 100_000


# --- safetensors headers -------------------------------------------------------------------------


def test_read_header_declares_each_tensor():
    data = encode_arrays({"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.uint8)}, {"k": "v"})
    assert read_header(data) == {"a": TensorInfo("F32", (2, 3)), "b": TensorInfo("U8", (4,))}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_every_reader_refuses_an_unsound_file_with_its_typed_error(name, tmp_path):
    data = BAD_FILES[name]
    with pytest.raises(TensorFileError):
        read_header(data)
    with pytest.raises(TensorFileError):
        load_arrays(data)
    path = tmp_path / "f.safetensors"
    path.write_bytes(data)
    for source in (data, path):  # a sound header over unsound data still has readable metadata
        for reader in (read_metadata, ogpu_metadata):
            try:
                assert isinstance(reader(source), dict)
            except TensorFileError:
                pass


_NUMPY_DTYPES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "I64", "U64", "F64"]
_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "I32": 4, "U32": 4, "F32": 4,
          "I64": 8, "U64": 8, "F64": 8}


@st.composite
def headers(draw) -> bytes:
    """Safetensors bytes whose header is right or subtly wrong: offsets shifted, sizes off by one,
    gaps, overlaps, a data section longer or shorter than declared."""
    header: dict[str, object] = {}
    position = 0
    for i in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(_NUMPY_DTYPES))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = int(np.prod(shape, dtype=np.int64)) * _SIZES[dtype]
        begin = position + draw(st.sampled_from([0, 0, 0, 1, -1]))
        end = begin + size + draw(st.sampled_from([0, 0, 0, 1, -1]))
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        position = max(position, end)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(),
                                                      max_size=2))
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + bytes(max(0, position + draw(st.sampled_from([0, 0, 1, -1]))))


@settings(max_examples=300, deadline=None)
@given(headers())
def test_read_header_accepts_exactly_what_the_library_loads(data):
    try:
        arrays = np_load(data)
    except SafetensorError:
        arrays = None
    try:
        declared = read_header(data)
    except TensorFileError:
        declared = None
    assert (declared is None) == (arrays is None)
    if arrays is not None:
        assert {k: v.shape for k, v in declared.items()} == {k: a.shape for k, a in arrays.items()}


# --- datasets and initial weights ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(bad_datasets()))
def test_a_bad_dataset_is_an_invalid_train_spec(name):
    with pytest.raises(InvalidTrainSpec):
        spec_from_prescription(Prescription.from_json(GOOD), bad_datasets()[name], 5)


def test_initial_weights_are_checked_from_the_header_alone():
    check_initial_weights(good_spec(), good_weights())
    for weights in bad_weights().values():
        with pytest.raises(InvalidTrainSpec, match="^initial_weights: "):
            check_initial_weights(good_spec(), weights)
        with pytest.raises(InvalidTrainSpec, match="^initial_weights: "):  # the same rule where they load
            initial_checkpoint(good_spec(), weights)


# --- checkpoints from another provider -----------------------------------------------------------


def test_every_bad_checkpoint_is_refused_and_voted_down(checkpoint):
    from ogpu_node.apps.provider.context import build_context
    from ogpu_node.apps.provider.council import allclose_verdict

    allclose = Prescription.from_json(edit(GOOD, "e", {"kind": "allclose", "rtol": 0.01, "atol": 0.01}))
    ctx = build_context(1, (allclose, good_dataset(), None), b"\x01" * 32)
    assert allclose_verdict(ctx, checkpoint, checkpoint)
    for name, data in bad_checkpoints(checkpoint).items():
        with pytest.raises(InvalidCheckpoint):
            load(data)
        try:
            meta = checkpoint_read_metadata(data)
        except InvalidCheckpoint:
            meta = {}
        assert isinstance(meta, dict), name
        if not name.startswith("meta-"):  # weights unchanged in the meta cases: close, yet they do not load
            assert allclose_verdict(ctx, checkpoint, data) is False, name
        try:  # what `task status` shows of someone else's checkpoint
            loss = mean_recent_loss(checkpoint_metadata(data))
            assert loss is None or isinstance(loss, float), name
        except BadCheckpoint:
            pass


def test_a_checkpoint_header_nested_100k_deep_is_refused_before_parsing(checkpoint):
    bad = bad_checkpoints(checkpoint)
    with pytest.raises(TensorFileError, match="nests deeper than 64 levels"):
        ogpu_metadata(bad["meta-nested-100k"])
    with pytest.raises(BadCheckpoint, match="nests deeper than 64 levels"):
        checkpoint_metadata(bad["file-header-nested-100k"])


def test_checkpoint_counters_must_be_natural_numbers(checkpoint):
    bad = bad_checkpoints(checkpoint)
    with pytest.raises(InvalidCheckpoint, match="step must be a non-negative integer"):
        load(bad["meta-step-a-string"])
    with pytest.raises(InvalidCheckpoint, match="seed must be a non-negative integer"):
        load(bad["meta-seed-1e400"])  # inf: int() would raise OverflowError


def test_a_loss_too_large_for_a_float_is_left_out():
    assert mean_recent_loss({"recent_losses": [10**400, 1.0, 3]}) == 2.0


# --- models from a few bytes of JSON ---------------------------------------------------------------


@pytest.mark.parametrize(("family", "hparams", "message"), [
    ("mlp", {"in_dim": 2, "out_dim": 2, "hidden": [4] * (MAX_LAYERS + 1)}, f"mlp.hidden: at most {MAX_LAYERS} entries"),
    ("mlp", {"in_dim": MAX_SIZE + 1, "out_dim": 2}, f"mlp.in_dim: at most {MAX_SIZE}$"),
    ("char-transformer", {"n_layer": MAX_LAYERS + 1}, f"char-transformer.n_layer: at most {MAX_LAYERS}$"),
    ("cnn", {"n_classes": 2, "channels": [1] * (MAX_LAYERS + 1)}, "cnn.channels: at most"),
])
def test_model_sizes_are_bounded_before_anything_is_built(family, hparams, message):
    with pytest.raises(InvalidModelSpec, match=message):
        build_model(family, hparams)


def test_sizes_within_bounds_whose_products_overflow_are_invalid_prescriptions():
    huge_cnn = {"n_classes": MAX_SIZE, "in_channels": MAX_SIZE, "image_size": MAX_SIZE, "channels": [MAX_SIZE]}
    with pytest.raises(InvalidPrescription, match=r"^prescription.M.hparams: too large a model"):
        validate(edit(edit(GOOD, "M.family", "cnn"), "M.hparams", huge_cnn))
    wide = Prescription.from_json(edit(edit(edit(GOOD, "M.family", "char-transformer"), "M.hparams",
                                            {"block_size": MAX_SIZE}), "I.batch_size", 2**32 - 1))
    with pytest.raises(InvalidTrainSpec, match="too large to estimate"):
        estimate(wide, 10)


def test_a_dataset_too_large_once_decoded_is_refused_before_decoding(monkeypatch):
    """uint8 features become float32 and labels int64: the decoded size is read from the header and
    checked before any tensor is decoded."""
    import numpy as np
    from safetensors.numpy import save

    from ogpu_node.compute import data as data_module

    small = save({"features": np.zeros((100, 4), np.uint8), "labels": np.zeros(100, np.uint8)})
    assert len(data_module.dataset_from_safetensors(small)) == 100
    monkeypatch.setattr(data_module, "MAX_DECODED_DATASET_BYTES", 100 * 4 * 4 + 100 * 8 - 1)
    with pytest.raises(InvalidTrainSpec, match=r"dataset: 2400 bytes once decoded .* more than the 2399"):
        data_module.dataset_from_safetensors(small)
