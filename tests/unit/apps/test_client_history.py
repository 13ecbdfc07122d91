"""The client's checkpoint history, loss chart, checkpoint header and weight extraction, on fabricated
inputs (no node)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click import ClickException
from eth_utils import to_checksum_address
from safetensors import safe_open
from safetensors.numpy import load, load_file, save, save_file

from ogpu_node.apps.client import (
    BadCheckpoint,
    ClientError,
    LossPoint,
    build_history,
    checkpoint_metadata,
    extract_weights,
    mean_recent_loss,
)
from ogpu_node.cli.common import plain_text
from ogpu_node.cli.task_view import fields, history_rows, loss_chart, write_loss_plot

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
H1, H2, H2b = b"\x01" * 32, b"\x02" * 32, b"\x22" * 32


def events():
    return [
        ("TaskSubmitted", {"taskId": 7}, 10),
        ("TaskAssigned", {"taskId": 7, "executor": A, "price": 900, "seed": b"\0" * 32}, 12),
        ("CheckpointRevealed", {"taskId": 7, "k": 1, "checkpointHash": H1}, 14),
        ("CheckpointInconclusive", {"taskId": 7, "k": 1, "round": 0}, 15),
        ("CheckpointAccepted", {"taskId": 7, "k": 1, "executorPaid": 270, "councilPaid": 30, "discount": 0}, 17),
        ("CheckpointRevealed", {"taskId": 7, "k": 2, "checkpointHash": H2}, 19),
        ("CheckpointRejected", {"taskId": 7, "k": 2, "executor": A, "penalty": 50}, 20),
        ("ExecutorReplaced", {"taskId": 7, "previous": A, "executor": B, "price": 950, "resumeFrom": 1}, 20),
        ("CheckpointRevealed", {"taskId": 7, "k": 2, "checkpointHash": H2b}, 25),
        ("CheckpointAccepted", {"taskId": 7, "k": 2, "executorPaid": 280, "councilPaid": 30, "discount": 7}, 26),
    ]


def test_build_history_folds_verdicts_reveals_and_payments():
    h = build_history(7, 3, events())
    assert [c.k for c in h.checkpoints] == [1, 2, 3]
    one, two, three = h.checkpoints
    assert [v.kind for v in one.verdicts] == ["inconclusive", "accepted"]
    assert one.verdicts[0].round == 0 and one.accepted.checkpoint_hash == H1
    assert [v.kind for v in two.verdicts] == ["rejected", "accepted"]
    assert two.verdicts[0].checkpoint_hash == H2 and two.verdicts[0].penalty == 50
    assert two.accepted.checkpoint_hash == H2b and two.revealed == H2b  # the replacement's reveal is accepted
    assert three.verdicts == () and three.revealed is None and three.accepted is None
    assert [(e.executor, e.previous, e.resume_from) for e in h.executors] == [(A, None, 0), (B, A, 1)]
    assert (h.executor_paid, h.council_paid, h.discounts, h.paid) == (550, 60, 7, 610)
    assert h.cancel_reason is None and h.outcome is None


def test_build_history_records_the_end():
    cancelled = build_history(3, 2, [("TaskCancelled", {"taskId": 3, "reason": 1, "refund": 1100}, 9)])
    assert (cancelled.cancel_reason, cancelled.refund, cancelled.paid) == (1, 1100, 0)
    missed = build_history(3, 1, [("CheckpointMissed", {"taskId": 3, "k": 1, "executor": A, "penalty": 5}, 4),
                                  ("TaskSettled", {"taskId": 3, "outcome": 2, "refund": 10, "paid": 0}, 9)])
    assert missed.checkpoints[0].verdicts[0].kind == "missed" and missed.outcome == 2


def test_build_history_keeps_the_members_reruns_of_the_latest_reveal():
    result = {"taskId": 7, "verdict": True, "stepHash": b"\x09" * 32}
    h = build_history(7, 2, [
        *events()[:6],
        ("ResultRevealed", {**result, "k": 2, "member": A, "resultHash": b"\x31" * 32}, 19),
        ("ResultRevealed", {**result, "k": 2, "member": B, "resultHash": bytes(32)}, 19),  # nothing revealed
        *events()[6:9],
        ("ResultRevealed", {**result, "k": 2, "member": B, "resultHash": b"\x32" * 32}, 25),
    ])
    assert h.checkpoints[0].results == ()
    assert h.checkpoints[1].results == ((B, b"\x32" * 32),)  # re-runs of the rejected checkpoint are dropped


def history_text(h) -> str:
    return plain_text(fields(history_rows(h)))


def test_history_rows():
    text = history_text(build_history(7, 3, events()))
    lines = text.splitlines()
    assert lines[0].split() == ["Checkpoints:", "k", "verdicts", "checkpoint", "hash"]
    assert lines[1].split("  ")[-1] == "0x" + "01" * 32 and lines[2].split("  ")[-1] == "0x" + "22" * 32
    assert " 1  inconclusive (round 0); accepted (executor 270 wei, council 30 wei)  " in lines[1]
    assert f" 2  rejected ({to_checksum_address(A)} slashed 50 wei); accepted (executor 280 wei, " \
           "council 30 wei, discount 7 wei)  0x" + "22" * 32 in lines[2]
    assert lines[3].split() == ["pending:", "3"]
    assert f"replaced {to_checksum_address(A)}, resuming after checkpoint 1" in text
    assert "Payments:      610 wei (6.1e-16 oGPU): executor 550 wei, council 60 wei, lateness discounts 7 wei" in text
    assert text.count(" accepted (executor ") == 2  # what tests/e2e/test_provider_e2e.py counts
    ended = history_text(build_history(3, 2, [("TaskCancelled", {"reason": 1, "refund": 1100}, 9)])).splitlines()
    assert ended[-1] == "Ended:         cancelled (too few bids), refunded 1100 wei (1.1e-15 oGPU)"
    assert "Executors:     -" in ended  # no executor
    assert "Checkpoints:   pending: 1, 2" in ended


def test_mean_recent_loss():
    assert mean_recent_loss({"recent_losses": [1.0, 2.0, 3.0]}) == 2.0
    assert mean_recent_loss({"recent_losses": [1.0, float("nan"), 3.0, True, "x"]}) == 2.0
    assert mean_recent_loss({}) is None  # older checkpoints: no loss data
    assert mean_recent_loss({"recent_losses": []}) is None
    assert mean_recent_loss({"recent_losses": "bad"}) is None


def test_loss_chart_marks_accepted_and_revealed():
    points = [LossPoint(1, 10, 2.0, True), LossPoint(2, 20, 1.0, True), LossPoint(3, 30, 0.5, False),
              LossPoint(4, 40, None, False)]
    lines = loss_chart(points, height=4).plain.split("\n")
    assert lines == [
        "    2 |*",
        "      |",
        "      |    *",
        "  0.5 |        o",
        "      ++---+---+",
        "       1       3  (checkpoint; * accepted, o revealed)",
        "  (no loss data for checkpoints 4)",
    ]


def test_loss_chart_edge_cases():
    assert loss_chart([]).plain == "  (no loss data yet)"
    assert loss_chart([LossPoint(1, None, None, True)]).plain == "  (no loss data for checkpoints 1)"
    flat = loss_chart([LossPoint(1, 1, 0.25, True), LossPoint(2, 2, 0.25, True)], height=3).plain.split("\n")
    assert flat[0].endswith("|*   *") and len(flat) == 5
    many = loss_chart([LossPoint(k, k, 1.0 / k, True) for k in range(1, 501)], width=40).plain.split("\n")
    assert all(len(line) <= 2 + 6 + 2 + 40 + 40 for line in many)
    assert many[-1].split()[:2] == ["1", "500"]  # first and last checkpoint kept


def checkpoint_bytes(recent_losses=None) -> bytes:
    meta = {"format": "ogpu-checkpoint/1", "family": "mlp", "hparams": {"sizes": [2, 3]}, "step": 5}
    if recent_losses is not None:
        meta["recent_losses"] = recent_losses
    return save({
        "model/0.weight": np.arange(6, dtype=np.float32).reshape(3, 2),
        "model/0.bias": np.array([1, 2, 3], dtype=np.float64),
        "model/steps": np.array([7], dtype=np.int16),
        "optim/0.weight/exp_avg": np.ones((3, 2), dtype=np.float32),
    }, metadata={"ogpu": json.dumps(meta, sort_keys=True, separators=(",", ":"))})


def test_checkpoint_metadata_reads_only_the_header():
    data = checkpoint_bytes([3.0, 1.0])
    n = int.from_bytes(data[:8], "little")
    meta = checkpoint_metadata(data[: 8 + n])  # the prefix `task status` fetches
    assert meta["step"] == 5 and mean_recent_loss(meta) == 2.0
    assert set(load(data)) == {"model/0.weight", "model/0.bias", "model/steps", "optim/0.weight/exp_avg"}
    with pytest.raises(BadCheckpoint, match="truncated"):
        checkpoint_metadata(data[: 8 + n - 1])
    assert checkpoint_metadata(save({"x": np.zeros(1, dtype=np.float32)})) == {}


def test_checkpoint_metadata_agrees_with_compute():
    torch = pytest.importorskip("torch")
    from ogpu_node.compute.checkpoint import read_metadata

    data = save({"model/w": np.zeros(2, dtype=np.float32)}, metadata={"ogpu": json.dumps(
        {"format": "ogpu-checkpoint/1", "recent_losses": [0.5]})})
    assert checkpoint_metadata(data) == read_metadata(data)
    del torch


def test_extract_weights_renames_model_tensors(tmp_path):
    src = tmp_path / "ckpt.safetensors"
    src.write_bytes(checkpoint_bytes())
    out = tmp_path / "model.safetensors"
    assert extract_weights(src, out, b"\x05" * 32) == 3
    weights = load_file(str(out))
    assert set(weights) == {"0.weight", "0.bias", "steps"}
    np.testing.assert_array_equal(weights["0.weight"], np.arange(6, dtype=np.float32).reshape(3, 2))
    assert weights["0.bias"].dtype == np.float64 and weights["steps"].tolist() == [7]
    with safe_open(str(out), "np") as f:
        assert f.metadata() == {"ogpu_checkpoint": "0x" + "05" * 32, "family": "mlp", "hparams": '{"sizes":[2,3]}'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors", "model.safetensors"]  # no temp file


def test_extract_weights_refuses_a_file_without_weights(tmp_path):
    src = tmp_path / "x.safetensors"
    save_file({"optim/a": np.zeros(1, dtype=np.float32)}, str(src))
    with pytest.raises(ClientError, match="checkpoint 0x0505.* holds no model/ tensors"):
        extract_weights(src, tmp_path / "out.safetensors", b"\x05" * 32)
    src.write_bytes(b"not a checkpoint")
    with pytest.raises(ClientError, match="is not a safetensors file"):
        extract_weights(src, tmp_path / "out.safetensors", b"\x05" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # nothing left behind


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ClickException, match="--plot needs matplotlib: pip install matplotlib"):
        write_loss_plot([LossPoint(1, 1, 0.5, True)], tmp_path / "loss.png", 1)
    assert not (tmp_path / "loss.png").exists()
