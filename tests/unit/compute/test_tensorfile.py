"""compute/tensorfile: safetensors metadata and arrays without torch, headers bounded before parsing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ogpu_node.compute import checkpoint
from ogpu_node.compute.tensorfile import (
    MAX_HEADER,
    META_KEY,
    TensorFileError,
    check_header,
    load_arrays,
    ogpu_metadata,
    read_metadata,
    save_arrays,
)

OGPU = {"format": "ogpu-checkpoint/1", "step": 3, "recent_losses": [0.5, None]}
METADATA = {META_KEY: json.dumps(OGPU), "note": "kept"}


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "t.safetensors"
    save_arrays(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, metadata=METADATA)
    return path


def _file(tmp_path, data: bytes):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    return path


def _header(obj: object) -> bytes:
    text = json.dumps(obj).encode()
    return len(text).to_bytes(8, "little") + text


def test_metadata_reads_the_same_from_a_file_and_from_bytes(saved):
    assert read_metadata(saved) == read_metadata(saved.read_bytes()) == METADATA
    assert ogpu_metadata(saved) == ogpu_metadata(saved.read_bytes()) == OGPU


def test_no_metadata_reads_as_empty(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_arrays(path, {"w": np.zeros(2, dtype=np.float32)})
    for source in (path, path.read_bytes()):
        assert read_metadata(source) == {} and ogpu_metadata(source) == {}


def test_arrays_round_trip(saved):
    arrays = load_arrays(saved)
    assert load_arrays(saved.read_bytes()).keys() == arrays.keys() == {"w"}
    assert arrays["w"].dtype == np.float32 and arrays["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_the_checkpoint_metadata_key_is_defined_once():
    assert checkpoint.META_KEY is META_KEY


@pytest.mark.parametrize("data", [b"", b"\x01\x02", (100).to_bytes(8, "little") + b"{}"],
                         ids=["empty", "short-prefix", "header-past-the-end"])
def test_a_truncated_header_raises(tmp_path, data):
    for source in (data, _file(tmp_path, data)):
        with pytest.raises(TensorFileError, match="truncated"):
            read_metadata(source)
    with pytest.raises(TensorFileError):
        check_header(data)
    with pytest.raises(TensorFileError):
        load_arrays(data)


def test_an_oversized_header_raises_before_it_is_read(tmp_path):
    data = (MAX_HEADER + 1).to_bytes(8, "little") + b" " * (MAX_HEADER + 1)  # all there, still refused
    for source in (data, _file(tmp_path, data)):
        with pytest.raises(TensorFileError, match="oversized"):
            read_metadata(source)
    with pytest.raises(TensorFileError, match="oversized"):
        check_header(data)


@pytest.mark.parametrize("data", [
    (4).to_bytes(8, "little") + b"\xff\xfe{}",  # not UTF-8
    (4).to_bytes(8, "little") + b"{{{{",  # not JSON
    _header(["a", "list"]),  # JSON, not an object
    _header({"__metadata__": ["not", "a", "map"]}),
    _header({"__metadata__": {"n": 1}}),  # values must be strings
    (20000).to_bytes(8, "little") + b"[" * 10000 + b"]" * 10000,  # nested past the recursion limit
], ids=["not-utf8", "not-json", "not-object", "metadata-not-map", "metadata-not-strings", "deep"])
def test_a_garbage_header_raises(data):
    with pytest.raises(TensorFileError):
        read_metadata(data)


def test_a_garbage_file_raises(tmp_path):
    with pytest.raises(TensorFileError):
        read_metadata(_file(tmp_path, _header({"w": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}})))
    with pytest.raises(TensorFileError):
        load_arrays(_header({"w": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}))


def test_bad_ogpu_json_raises(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_arrays(path, {"w": np.zeros(1, dtype=np.float32)}, metadata={META_KEY: "{not json"})
    for source in (path, path.read_bytes()):
        with pytest.raises(TensorFileError, match=META_KEY):
            ogpu_metadata(source)


def test_importing_tensorfile_does_not_load_torch():
    code = "import ogpu_node.compute.tensorfile, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
