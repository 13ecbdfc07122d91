"""`ogpu-node task submit|status` (the client app) against a real `ogpu-node run --dev --block-time 1`:
uploads the dataset as a blob, submits the prescription with escrow + the chain's minimum deposit,
follows the task to Cancelled when its bid window passes without bids (full refund), and fails with
one line for a bad prescription or an unreachable node."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from e2e.cli_run import ROOT, assert_one_line_error, cli
from safetensors.numpy import save_file
from web3 import Web3

from ogpu_node.config import DEV_GENESIS
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.types.protocol import DEFAULT_PROFILE

DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
EXAMPLE = ROOT / "examples" / "mlp-exact.json"
TASK = Web3.to_checksum_address("0x0000000000000000000000000000000000001001")
CLIENT_DEPOSIT_BPS = json.loads((DEV_GENESIS).read_text())["config"]["ogpu"]["clientDepositBps"]
TASK_ID = re.compile(r"^Task ID: (\d+)$", re.M)

pytestmark = pytest.mark.slow




def field(status: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(.*)$", status, re.M)
    assert match, status
    return match.group(1)


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.safetensors"
    save_file({"features": rng.standard_normal((64, 8)).astype(np.float32),
               "labels": rng.integers(0, 3, 64).astype(np.int64)}, str(path))
    return path


def prescription(tmp_path: Path, **changes) -> Path:
    doc = json.loads(EXAMPLE.read_text())
    # Room for `task submit` and a `task status` to see the task still bidding, even on a loaded CI
    # machine whose first CLI runs compile every module (8 s was not always enough); short enough to
    # wait out.
    doc["H"]["bid_window_s"] = 20
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = doc
        for key in parents:
            target = target[key]
        target[leaf] = value
    path = tmp_path / "prescription.json"
    path.write_text(json.dumps(doc))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_idle_providers(url: str, count: int, memory_mib: int = 4096) -> None:
    """Dev accounts 1…count staked and registered as providers (that never bid), in parallel."""
    from ogpu_node.apps.client import Client

    def register(index: int) -> None:
        Client(url, derive_dev_accounts(index + 1)[index].private_key).register_provider(
            "cpu", memory_mib, 1, profiles=(DEFAULT_PROFILE,))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(1, count + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_submit_then_bidding_then_cancelled_with_refund(node_factory, tmp_path, dataset):
    node = node_factory("--block-time", "1")
    w3 = Web3(Web3.HTTPProvider(node.http_url, request_kwargs={"timeout": 30}))
    max_payment = int(json.loads(EXAMPLE.read_text())["I"]["max_payment"])
    deposit = max_payment * CLIENT_DEPOSIT_BPS // 10_000

    # Nobody could sit on its council: refused before any upload or payment, naming the field.
    refused = cli("task", "submit", prescription(tmp_path), "--data", dataset, "--rpc-url", node.http_url,
                  "--private-key", DEV_KEY)
    assert_one_line_error(refused, "prescription.I.council_size: 3 exceeds the 0 providers")
    register_idle_providers(node.http_url, 3)

    submitted = cli("task", "submit", prescription(tmp_path), "--data", dataset, "--rpc-url", node.http_url,
                    "--private-key", DEV_KEY)
    assert submitted.returncode == 0, submitted.stderr
    match = TASK_ID.search(submitted.stdout)
    assert match, submitted.stdout
    task_id = match.group(1)

    # The dataset is on the node under the hash the prescription now names.
    blob_hash = re.search(r"Uploaded data\.safetensors: (0x[0-9a-f]{64})", submitted.stderr).group(1)
    with urllib.request.urlopen(f"{node.http_url}/blobs/{blob_hash}") as response:
        assert response.read() == dataset.read_bytes()

    status = cli("task", "status", task_id, "--rpc-url", node.http_url)
    assert status.returncode == 0, status.stderr
    assert field(status.stdout, "State") == "Bidding"
    assert field(status.stdout, "Escrow").startswith(f"{max_payment} wei")
    assert field(status.stdout, "Deposit").startswith(f"{deposit} wei")
    assert field(status.stdout, "Client") == DEV_ADDRESS
    assert field(status.stdout, "Bids") == "0"
    assert field(status.stdout, "Executor") == "-"
    assert w3.eth.get_balance(TASK) == max_payment + deposit

    deadline = time.monotonic() + 60  # a bound, not a timing claim: the loop ends as soon as it is cancelled
    while True:
        status = cli("task", "status", task_id, "--rpc-url", node.http_url)
        assert status.returncode == 0, status.stderr
        if field(status.stdout, "State") == "Cancelled" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert field(status.stdout, "State") == "Cancelled", status.stdout
    assert field(status.stdout, "Escrow").startswith("0 wei")
    assert field(status.stdout, "Deposit").startswith("0 wei")
    assert w3.eth.get_balance(TASK) == 0
    task = w3.eth.contract(address=TASK, abi=json.loads((ABI_DIR / "Task.json").read_text()))
    [cancelled] = task.events.TaskCancelled().get_logs(from_block=0)
    assert cancelled["args"]["taskId"] == int(task_id)
    assert cancelled["args"]["refund"] == max_payment + deposit

    # Confirming a cancelled task: the contract's revert reason, on one line.
    confirm = cli("task", "confirm", task_id, "--rpc-url", node.http_url, "--private-key", DEV_KEY)
    assert_one_line_error(confirm, "confirm: reverted: Task:")


def test_bad_prescription_is_one_line_naming_the_field(tmp_path, dataset):
    result = cli("task", "submit", prescription(tmp_path, I__council_size=0), "--data", dataset,
                 "--rpc-url", f"http://127.0.0.1:{free_port()}", "--private-key", DEV_KEY)
    assert_one_line_error(result, "prescription.I.council_size")


def test_unreachable_rpc_is_one_line(tmp_path, dataset):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("task", "submit", prescription(tmp_path), "--data", dataset, "--rpc-url", url,
                 "--private-key", DEV_KEY)
    assert_one_line_error(result, "cannot reach the node", url)
    assert_one_line_error(cli("task", "status", "1", "--rpc-url", url), "cannot reach the node")


def test_result_is_refused_until_the_final_checkpoint_is_accepted(node_factory, tmp_path, dataset):
    node = node_factory("--block-time", "1")
    register_idle_providers(node.http_url, 3)
    submitted = cli("task", "submit", prescription(tmp_path, H__bid_window_s=30), "--data", dataset,
                    "--rpc-url", node.http_url, "--private-key", DEV_KEY)
    assert submitted.returncode == 0, submitted.stderr
    task_id = TASK_ID.search(submitted.stdout).group(1)
    checkpoints = json.loads(EXAMPLE.read_text())["I"]["checkpoints"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.safetensors"

    refused = cli("task", "result", task_id, "--out", out, "--rpc-url", node.http_url)
    assert_one_line_error(refused, f"task {task_id} has no result yet: state Bidding, 0/{checkpoints} checkpoints")

    timed_out = cli("task", "result", task_id, "--out", out, "--wait", "--timeout", "1", "--rpc-url", node.http_url)
    assert timed_out.returncode == 1, timed_out.stderr
    *progress, error = timed_out.stderr.splitlines()
    assert progress and progress[0].startswith(f"task {task_id}: Bidding, 0/{checkpoints} checkpoints accepted")
    assert error.startswith("Error: timed out after 1s waiting for task"), error

    # --wait follows the task until the chain cancels it (no bids): no result, one error line at the end.
    cancelled = cli("task", "result", task_id, "--out", out, "--checkpoint", out_dir / "ckpt.safetensors",
                    "--wait", "--timeout", "60", "--rpc-url", node.http_url, timeout=90)
    assert cancelled.returncode == 1, cancelled.stderr
    assert "Traceback" not in cancelled.stderr
    assert cancelled.stderr.splitlines()[-1] == (
        f"Error: task {task_id} was cancelled with 0/{checkpoints} checkpoints accepted: it has no result")
    assert list(out_dir.iterdir()) == []

    status = cli("task", "status", task_id, "--rpc-url", node.http_url)
    assert status.returncode == 0, status.stderr
    assert field(status.stdout, "Ended").startswith("cancelled (too few bids), refunded")
    assert field(status.stdout, "Payments").startswith("0 wei")
    assert "pending: 1" in status.stdout and "Loss" not in status.stdout


def test_download_blob_refuses_missing_altered_and_truncated_blobs(node_factory, tmp_path):
    from ogpu_node.apps.client import Client, ClientError
    from ogpu_node.types.merkle import CHUNK_SIZE

    node = node_factory()
    client = Client(node.http_url, derive_dev_accounts(2)[1].private_key)
    data = np.random.default_rng(1).bytes(2 * CHUNK_SIZE + 100)  # three chunks
    blob_hash, _ = client.upload_bytes("data", data)
    out = tmp_path / "out" / "blob.bin"
    out.parent.mkdir()
    assert client.download_blob(blob_hash, out) == len(data)
    assert out.read_bytes() == data
    out.unlink()

    with pytest.raises(ClientError, match=f"blob 0x{'ab' * 32} is not on the node"):
        client.download_blob(b"\xab" * 32, out)
    stored = next(node.datadir.rglob(blob_hash.hex()))
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # altered on the node's disk
    with pytest.raises(ClientError, match=f"^blob 0x{blob_hash.hex()}: the node sent {len(data)} bytes hashing to"):
        client.download_blob(blob_hash, out)
    stored.write_bytes(data[: CHUNK_SIZE + 7])  # truncated
    with pytest.raises(ClientError, match=f"blob 0x{blob_hash.hex()}.*refused, nothing written"):
        client.download_blob(blob_hash, out)
    assert list(out.parent.iterdir()) == []  # no file, no temporary left behind
