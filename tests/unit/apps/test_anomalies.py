"""Anomaly agents in the apps (docs/tasks.md "Anomaly agents"): the loss-curve rule against a re-run, the
under-priced prescription, a provider that logs each flag with its task and does not bid, and `task
status` showing the flags. The tensor checks themselves: tests/unit/compute/test_anomaly.py."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ogpu_node.apps.anomalies import as_losses, loss_divergence, loss_tolerance, rerun_anomalies, underpriced
from ogpu_node.apps.client import BlobClient, TaskHistory, build_history
from ogpu_node.apps.client.history import task_anomalies
from ogpu_node.apps.provider.chain import Event
from ogpu_node.apps.provider.core import ProviderCore
from ogpu_node.apps.provider.messages import Assessed, Consider, PlaceBid
from ogpu_node.apps.provider.strategy import BidStrategy, Job, Resources
from ogpu_node.cli.common import plain_text
from ogpu_node.cli.task_view import status_view
from ogpu_node.compute import train_segment
from ogpu_node.compute.tensorfile import META_KEY, encode_arrays, load_arrays, read_metadata
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Equivalence
from ogpu_node.types.protocol import DEFAULT_PROFILE, TaskKind
from tests.malformed_documents import GOOD
from tests.unit.apps.test_client_status_view import field, status
from tests.unit.compute.compute_tasks import mlp_spec

ME, CLIENT = "0x" + "1a" * 20, "0x" + "cc" * 20
RES = Resources(device="cpu", memory_mib=4096, flops_per_s=1e9, profiles=(DEFAULT_PROFILE,))
CURVE = [2.0, 1.5, 1.2, 1.0, 0.9]


# -- the loss curve against a council member's re-run --

def test_an_identical_curve_is_not_flagged_under_exact():
    assert loss_divergence(CURVE, list(CURVE), *loss_tolerance(Equivalence("exact"))) is None


def test_exact_flags_any_difference_and_names_the_step():
    rerun = [*CURVE[:-1], math.nextafter(0.9, 1.0)]
    assert loss_divergence(CURVE, rerun, 0.0, 0.0, end_step=20) == (
        "loss curve diverges from the council's re-run at step 20: 0.9 vs 0.9 (tolerance any difference)")


def test_allclose_tolerates_within_atol_plus_rtol_of_the_rerun():
    rtol, atol = loss_tolerance(Equivalence("allclose", rtol=1e-2, atol=1e-3))
    assert (rtol, atol) == (1e-2, 1e-3)
    inside = [x + 0.9 * (atol + rtol * x) for x in CURVE]
    assert loss_divergence(inside, CURVE, rtol, atol) is None
    outside = [*CURVE[:2], 1.2 + 1.1 * (atol + rtol * 1.2), *CURVE[3:]]
    flag = loss_divergence(outside, CURVE, rtol, atol, end_step=10)
    assert flag is not None and flag.startswith("loss curve diverges from the council's re-run at step 8: ")
    assert flag.endswith("(tolerance atol 0.001 + rtol 0.01·|re-run|)")


def test_a_diverging_curve_is_flagged_at_its_first_diverging_step():
    diverging = [2.0, 1.5, 3.0, 9.0, 40.0]  # the executor's loss climbs where the re-run's falls
    flag = loss_divergence(diverging, CURVE, 1e-3, 1e-5)
    assert flag is not None and "at loss 3 of the last 5: 3 vs 1.2" in flag


def test_curves_are_compared_from_their_ends_over_the_shorter_one():
    segment = [5.0, 4.0, *CURVE]  # the re-run's whole segment; the checkpoint kept only the last losses
    assert loss_divergence(CURVE, segment, 0.0, 0.0) is None
    assert loss_divergence([], segment, 0.0, 0.0) is None


def test_a_nan_loss_matches_only_a_nan():
    assert loss_divergence([1.0, math.nan], [1.0, math.nan], 0.0, 0.0) is None
    assert loss_divergence([1.0, math.nan], [1.0, 0.5], 1.0, 1.0) is not None


def test_recent_losses_metadata_reads_null_as_nan_and_refuses_non_numbers():
    losses = as_losses([1.5, None, 2])
    assert losses is not None and losses[0] == 1.5 and math.isnan(losses[1]) and losses[2] == 2.0
    assert as_losses("1.5") is None and as_losses([True]) is None and as_losses([10**400]) is None


def test_underpriced_only_below_cost():
    assert underpriced(99, 100) == "under-priced: max payment 99 wei is below this provider's cost estimate of 100 wei"
    assert underpriced(100, 100) is None


# -- the provider: each flag logged with the task id, and no bid --

def make_core() -> ProviderCore:
    return ProviderCore(ME, BidStrategy(cost_per_second=10**15, margin=0.2), RES, max_jobs=3)


def job(**changes) -> Job:
    base = dict(devices=("cpu",), numeric_profile=DEFAULT_PROFILE, memory_mib=512.0, total_flops=3e9,
                segment_flops=1e9, segment_window_s=60, max_payment=10**18)  # cost 3e15 wei here
    return Job(**{**base, **changes})


def submitted(task_id: int) -> Event:
    return Event("TaskSubmitted", {"taskId": task_id, "kind": TaskKind.BATCH, "client": CLIENT,
                                   "prescriptionHash": b"\x09" * 32}, 1, 0)


def test_an_honest_task_gets_a_bid_and_no_anomaly_line(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    assert core.receive(submitted(1)) == [Consider(1, b"\x09" * 32)]
    actions = core.receive(Assessed(1, job()))
    assert [type(a) for a in actions] == [PlaceBid] and "anomaly" not in caplog.text


def test_an_underpriced_task_is_flagged_in_the_log_and_gets_no_bid(caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    core.receive(submitted(2))
    assert core.receive(Assessed(2, job(max_payment=10**15))) == []
    assert ("task 2: anomaly: under-priced: max payment 1000000000000000 wei is below this provider's cost "
            "estimate of 3000000000000000 wei") in caplog.text
    assert core.bids == {} and core.busy == 0


@pytest.mark.parametrize("flag", [
    "dataset 0x" + "01" * 32 + ": samples of shape (3,), the model mlp needs 4 values",
])
def test_a_task_whose_documents_are_flagged_gets_no_bid_at_any_price(flag, caplog):
    core = make_core()
    caplog.set_level(logging.INFO, "ogpu.provider")
    core.receive(submitted(3))
    assert core.receive(Assessed(3, job(anomalies=(flag,)))) == []
    assert f"task 3: anomaly: {flag}" in caplog.text
    assert "task 3: not bidding: 1 anomaly flag(s)" in caplog.text
    assert core.bids == {}
    assert [type(a) for a in core.receive(Assessed(4, job()))] == [PlaceBid]  # the next honest task is bid on


# -- the client: `task status` checks the checkpoints of a real training run, served by a blob endpoint --

class BlobNode(BaseHTTPRequestHandler):
    """A node's `GET /blobs/<hash>` over a dict: what the client's BlobClient downloads from."""

    stored: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.stored.get(self.path.removeprefix("/blobs/"))
        self.send_response(404 if body is None else 200)
        body = b"{}" if body is None else body
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # a header read hangs up early
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def node():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BlobNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    BlobNode.stored = {}

    def put(data: bytes) -> bytes:
        BlobNode.stored["0x" + merkle_root(data).hex()] = data
        return merkle_root(data)

    yield BlobClient(f"http://127.0.0.1:{server.server_address[1]}", 10.0), put
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, bytes]:
    """ckpt_1 and ckpt_2 of a small MLP task, 5 steps each."""
    spec = mlp_spec()
    first = train_segment(spec, None, 5).checkpoint
    return first, train_segment(spec, first, 5).checkpoint


def with_nan(checkpoint: bytes) -> bytes:
    arrays = {name: a.copy() for name, a in load_arrays(checkpoint).items()}
    arrays["model/net.0.weight"][0, 0] = np.nan
    return encode_arrays(arrays, read_metadata(checkpoint))


def with_losses(checkpoint: bytes, change) -> bytes:
    meta = json.loads(read_metadata(checkpoint)[META_KEY])
    meta["recent_losses"] = [change(i, x) for i, x in enumerate(meta["recent_losses"])]
    return encode_arrays(load_arrays(checkpoint), {META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))})


def history_of(first: bytes, second: bytes, rerun: bytes) -> TaskHistory:
    return build_history(7, 2, [
        ("CheckpointRevealed", {"k": 1, "checkpointHash": merkle_root(first)}, 5),
        ("CheckpointAccepted", {"k": 1, "executorPaid": 270, "councilPaid": 30, "discount": 0}, 6),
        ("CheckpointRevealed", {"k": 2, "checkpointHash": merkle_root(second)}, 8),
        ("ResultRevealed", {"k": 2, "member": MEMBER, "verdict": True, "resultHash": merkle_root(rerun),
                            "stepHash": b"\x01" * 32}, 9),
    ])


MEMBER = "0x" + "ee" * 20
ALLCLOSE = {**GOOD, "e": {"kind": "allclose", "rtol": 1e-3, "atol": 1e-5}}


def test_an_honest_task_has_no_anomalies_in_its_status(node, trained):
    blobs, put = node
    first, second = trained
    for blob in (first, second):
        put(blob)
    prescription = put(json.dumps(ALLCLOSE).encode())
    rerun = put(with_losses(second, lambda i, x: x * (1 + 1e-4)))  # within rtol: another machine's re-run
    history = history_of(first, second, with_losses(second, lambda i, x: x * (1 + 1e-4)))
    assert history.checkpoints[1].results == ((MEMBER, rerun),)
    assert task_anomalies(blobs, prescription, history) == []


def test_a_nan_checkpoint_and_a_diverging_loss_curve_are_flagged_naming_their_checkpoints(node, trained):
    blobs, put = node
    first, second = with_nan(trained[0]), with_losses(trained[1], lambda i, x: x + 0.5 if i >= 7 else x)
    put(first), put(second), put(trained[1])  # the member's re-run is the honest ckpt_2
    prescription = put(json.dumps(ALLCLOSE).encode())
    flags = task_anomalies(blobs, prescription, history_of(first, second, trained[1]))
    assert flags[0] == f"checkpoint 1 (0x{merkle_root(first).hex()}): 1 NaN/Inf value(s) in model/net.0.weight"
    assert flags[1].startswith(f"checkpoint 2 (0x{merkle_root(second).hex()}): loss curve diverges from the "
                               "council's re-run at step 8: ")
    assert flags[1].endswith(f"(tolerance atol 1e-05 + rtol 0.001·|re-run|) (member {MEMBER})")
    assert len(flags) == 2


def test_an_unpublished_rerun_or_a_missing_checkpoint_is_not_checked(node, trained):
    blobs, put = node
    first, second = trained
    put(second)  # ckpt_1 and the member's re-run are not on the node
    prescription = put(json.dumps(ALLCLOSE).encode())
    diverging = with_losses(second, lambda i, x: x + 1)
    assert task_anomalies(blobs, prescription, history_of(first, second, diverging)) == []


def test_task_status_shows_the_flags_one_a_line_only_when_there_are_any():
    flags = ["checkpoint 1 (0x01): 1 NaN/Inf value(s) in model/net.0.weight",
             "checkpoint 2 (0x02): loss curve diverges from the council's re-run at step 9: 1.5 vs 1 (tolerance any "
             "difference) (member 0xee)"]
    text = plain_text(status_view(status(), None, [], flags))
    assert field(text, "Anomalies") == "2"
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("Anomalies:")))
    assert [line.strip() for line in lines[at + 1:at + 3]] == flags
    assert "Anomalies" not in plain_text(status_view(status(), None, []))


# -- a council member: the executor's checkpoint against its own re-run --

def test_a_council_member_flags_nothing_on_an_honest_checkpoint(trained):
    first, second = trained
    rerun = train_segment(mlp_spec(), first, 5).checkpoint  # the member's own re-run of segment 2
    assert rerun_anomalies(first, second, rerun, Equivalence("exact"), "checkpoint 2") == []


def test_a_council_member_flags_a_nan_checkpoint_and_a_diverging_curve(trained):
    first, second = trained
    executor = with_nan(with_losses(second, lambda i, x: x * 2 if i == 9 else x))
    flags = rerun_anomalies(first, executor, second, Equivalence("allclose", rtol=1e-3, atol=1e-5), "checkpoint 2")
    assert flags[0] == "checkpoint 2: 1 NaN/Inf value(s) in model/net.0.weight"
    assert flags[1].startswith("checkpoint 2: loss curve diverges from the council's re-run at step 10: ")
    assert len(flags) == 2


def test_under_exact_a_council_member_flags_the_least_loss_difference(trained):
    first, second = trained
    executor = with_losses(second, lambda i, x: math.nextafter(x, math.inf) if i == 9 else x)  # one ulp, last step
    [flag] = rerun_anomalies(first, executor, second, Equivalence("exact"))
    assert flag.startswith("checkpoint: loss curve diverges from the council's re-run at step 10: ")
    assert flag.endswith("(tolerance any difference)")
    assert rerun_anomalies(first, executor, second, Equivalence("allclose", rtol=1e-6, atol=0.0)) == []


def test_task_status_checks_only_the_latest_checkpoints(node, trained):
    """A long task's status stays quick: of six checkpoints only the latest CHECKED_CHECKPOINTS are
    downloaded and checked, so a NaN in checkpoint 1 is no longer reported and one in 6 is."""
    from ogpu_node.apps.client.history import CHECKED_CHECKPOINTS

    blobs, put = node
    first, second = trained
    blobs_by_k = {1: with_nan(first), 2: second, 3: second, 4: second, 5: second, 6: with_nan(second)}
    for blob in blobs_by_k.values():
        put(blob)
    prescription = put(json.dumps(ALLCLOSE).encode())
    events = [("CheckpointRevealed", {"k": k, "checkpointHash": merkle_root(b)}, 2 * k) for k, b in blobs_by_k.items()]
    flags = task_anomalies(blobs, prescription, build_history(7, 6, events))
    assert CHECKED_CHECKPOINTS == 4
    assert flags == [f"checkpoint 6 (0x{merkle_root(blobs_by_k[6]).hex()}): 1 NaN/Inf value(s) in model/net.0.weight"]
