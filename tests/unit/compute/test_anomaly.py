"""Anomaly agents' tensor checks (docs/tasks.md "Anomaly agents") on checkpoints of a real training run
with anomalies injected into their tensors, and on datasets against the prescription's format and model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ogpu_node.compute import train_segment
from ogpu_node.compute.anomaly import NORM_GROWTH_LIMIT, checkpoint_anomalies, dataset_anomalies, weight_norm
from ogpu_node.compute.tensorfile import encode_arrays, load_arrays, read_metadata
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription
from tests.malformed_documents import GOOD, bad_datasets, edit, good_dataset
from tests.unit.compute.compute_tasks import mlp_spec


@pytest.fixture(scope="module")
def run() -> tuple[bytes, bytes, bytes]:
    """Step 0, ckpt_1 (5 steps) and ckpt_2 (5 more) of a small MLP training run."""
    spec = mlp_spec()
    step0 = train_segment(spec, None, 0).checkpoint
    first = train_segment(spec, step0, 5).checkpoint
    return step0, first, train_segment(spec, first, 5).checkpoint


def rewrite(checkpoint: bytes, change) -> bytes:
    """``checkpoint`` with ``change(arrays)`` applied to its tensors, its metadata kept."""
    arrays = {name: a.copy() for name, a in load_arrays(checkpoint).items()}
    change(arrays)
    return encode_arrays(arrays, read_metadata(checkpoint))


def test_an_honest_run_is_not_flagged(run):
    step0, first, second = run
    assert checkpoint_anomalies(step0, first) == []
    assert checkpoint_anomalies(first, second) == []
    assert checkpoint_anomalies(None, second) == []


def test_a_nan_in_the_weights_is_flagged_with_its_tensor(run):
    _, first, second = run

    def inject(arrays):
        arrays["model/net.0.weight"][0, 3] = np.nan
        arrays["model/net.0.weight"][1, 1] = np.inf

    flags = checkpoint_anomalies(first, rewrite(second, inject), "checkpoint 2")
    assert flags == ["checkpoint 2: 2 NaN/Inf value(s) in model/net.0.weight"]


def test_a_nan_in_the_optimizer_state_is_flagged_too(run):
    _, _, second = run
    names = [n for n in load_arrays(second) if n.startswith("optim/") and n.endswith("exp_avg_sq")]

    def inject(arrays):
        for name in names:
            arrays[name].flat[0] = np.nan

    flags = checkpoint_anomalies(None, rewrite(second, inject))
    assert flags == [f"checkpoint: 1 NaN/Inf value(s) in {sorted(names)[0]} and {len(names) - 1} more tensor(s)"]


def test_a_norm_blow_up_in_one_segment_is_flagged(run):
    _, first, second = run

    def scale(factor):
        def change(arrays):
            for name in arrays:
                if name.startswith("model/"):
                    arrays[name] *= factor
        return change

    grown = rewrite(first, scale(NORM_GROWTH_LIMIT * 1.5))
    ratio = weight_norm(load_arrays(grown)) / weight_norm(load_arrays(first))
    assert ratio == pytest.approx(15.0, rel=1e-5)
    [flag] = checkpoint_anomalies(first, grown, "checkpoint 2")
    assert flag.startswith("checkpoint 2: weight norm grew 15x in one segment (")
    assert flag.endswith("more than the 10x limit")
    assert checkpoint_anomalies(first, rewrite(first, scale(NORM_GROWTH_LIMIT * 0.9))) == []
    assert checkpoint_anomalies(None, grown) == []  # k = 1 without a step-0 state: no norm check


def test_an_unreadable_checkpoint_is_flagged(run):
    assert checkpoint_anomalies(None, b"\xff" * 64, "checkpoint 1") == [
        "checkpoint 1: not a readable checkpoint (truncated or oversized safetensors header)"]
    assert checkpoint_anomalies(b"junk", run[1]) == []  # an unreadable predecessor only skips the norm check


def test_the_checkpoint_checks_do_not_load_torch(run):
    """`task status` runs them in the client, which never needs torch."""
    code = ("import sys\nfrom ogpu_node.compute.anomaly import checkpoint_anomalies\n"
            "assert checkpoint_anomalies(None, sys.stdin.buffer.read()) == []\n"
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], input=run[2], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


# -- datasets against D.format and the model --

DATASET = good_dataset()
IN_DIM = GOOD["M"]["hparams"]["in_dim"]


def prescription(dataset: bytes, **changes) -> Prescription:
    doc = edit(GOOD, "D.blob", "0x" + merkle_root(dataset).hex())
    for path, value in changes.items():
        doc = edit(doc, path.replace("__", "."), value)
    return Prescription.from_json(json.dumps(doc))


def tensors(features: np.ndarray, labels: np.ndarray) -> bytes:
    return encode_arrays({"features": features, "labels": labels})


def test_honest_data_are_not_flagged():
    assert dataset_anomalies(prescription(DATASET), DATASET) == []
    corpus = b"hello world. " * 10
    text = prescription(corpus, D__format="text", M__family="char-transformer", M__hparams={"block_size": 8})
    assert dataset_anomalies(text, corpus) == []


@pytest.mark.parametrize("data, why", [
    (tensors(np.zeros((4, IN_DIM - 1), np.float32), np.zeros(4, np.int64)),
     f"samples of shape ({IN_DIM - 1},), the model mlp needs {IN_DIM} values"),
    (tensors(np.zeros((4, IN_DIM), np.float32), np.zeros(5, np.int64)),
     f"features (4, {IN_DIM}) and labels (5,) do not pair up as (N, ...) and (N,)"),
    (tensors(np.zeros((4, IN_DIM), np.float32), np.zeros(4, np.float32)),
     "labels are F32, D.format tensors needs integer class ids"),
    (encode_arrays({"x": np.zeros((4, IN_DIM), np.float32)}), "D.format is tensors but it has no 'features' tensor"),
    (b"plain text, not tensors", "D.format is tensors but it is not a safetensors file ("),
])
def test_data_of_the_wrong_shape_or_format_are_flagged(data, why):
    [flag] = dataset_anomalies(prescription(data), data)
    assert flag.startswith(f"dataset 0x{merkle_root(data).hex()}: {why}")


VALUES_ONLY = ("labels-out-of-range", "labels-negative")  # values, not format or shape: TrainSpec refuses them


@pytest.mark.parametrize("name", sorted(bad_datasets()))
def test_every_malformed_dataset_of_the_corpus_but_bad_label_values_is_flagged_from_its_header(name):
    data = bad_datasets()[name]
    assert len(dataset_anomalies(prescription(data), data)) == (0 if name in VALUES_ONLY else 1)


def test_image_data_must_have_the_cnn_input_shape():
    data = tensors(np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64))
    p = prescription(data, M__family="cnn", M__hparams={"n_classes": 3, "image_size": 16})
    assert dataset_anomalies(p, data) == [
        f"dataset 0x{merkle_root(data).hex()}: samples of shape (1, 8, 8), the model cnn needs shape (1, 16, 16)"]


@pytest.mark.parametrize("corpus, hparams, why", [
    (b"short", {"block_size": 8}, "a corpus of 5 bytes is not longer than the model's block_size 8"),
    (bytes(range(200)), {"block_size": 8, "vocab_size": 128}, "byte value 199 is outside the model's vocab_size 128"),
])
def test_a_text_corpus_must_fit_the_model(corpus, hparams, why):
    p = prescription(corpus, D__format="text", M__family="char-transformer", M__hparams=hparams)
    assert dataset_anomalies(p, corpus) == [f"dataset 0x{merkle_root(corpus).hex()}: {why}"]
