"""A full disk never stops the node (issue 10): a real `ogpu-node run --dev` whose datadir is a 64 MiB tmpfs
the test mounts and fills. Blocks, transactions and blob uploads are refused cleanly while reads go on;
once the filler is deleted the waiting transaction is mined, blocks come again, and after a SIGKILL every
block is still there. Needs root to mount (CI runs as root); skipped otherwise."""

from __future__ import annotations

import http.client
import json
import re
import signal
import time
from urllib.parse import urlparse

import pytest
from blobput import blob_path, upload_headers
from smallfs import fill, small_tmpfs
from txfactory import sign_tx

from tests.conftest import NodeProcess, start_node

DISK_FULL_LOG = re.compile(r"disk full: block (\d+) not sealed, (\d+) txs wait; retrying")


class Http:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def rpc_reply(self, method: str, *params: object) -> dict:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        status, reply = self.request("POST", "/", body, {"Content-Type": "application/json"})
        assert status == 200, (status, reply)
        return json.loads(reply)

    def rpc(self, method: str, *params: object) -> object:
        reply = self.rpc_reply(method, *params)
        assert "error" not in reply, (method, reply)
        return reply["result"]


def wait_for(condition, what: str, node: NodeProcess, timeout: float = 60.0) -> None:
    """Poll `condition` until true; fail (with the node's log) if the node exits or it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert node.process.poll() is None, f"node exited while waiting for {what}:\n{node.log()}"
        assert time.monotonic() < deadline, f"never saw {what}:\n{node.log()[-4000:]}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("block_time", [None, "1"], ids=["on-demand", "interval"])
def test_full_disk_refuses_work_serves_reads_and_resumes_when_space_returns(tmp_path, dev_accounts, block_time):
    sender, to = dev_accounts[3], dev_accounts[8].address
    receiver = "0x" + to.hex()
    # No blob floor, so that it is the chain database that meets the full disk.
    flags = ("--blob.min-free", "0", *(("--block-time", block_time) if block_time else ()))
    with small_tmpfs(tmp_path / "fs", "64m") as fs:
        # The datadir is the mount itself, so the node's log (beside it) stays off the full filesystem.
        node = start_node(fs, *flags)
        try:
            client = Http(node.http_url)
            first = sign_tx(sender.private_key, 0, to=to, value=1)
            client.rpc("eth_sendRawTransaction", first.raw_hex)
            wait_for(lambda: client.rpc("eth_getTransactionReceipt", "0x" + first.hash.hex()), "a block", node)
            blob = b"kept across the outage" * 100
            status, _ = client.request("PUT", blob_path(blob), blob, upload_headers(blob))
            assert status == 201
            balance = int(client.rpc("eth_getBalance", receiver, "latest"), 16)

            filler = fill(fs)
            nonce, waiting = 1, None
            if block_time is None:  # a transaction that arrives as the disk fills waits in the pool
                waiting = sign_tx(sender.private_key, nonce, to=to, value=2)
                client.rpc("eth_sendRawTransaction", waiting.raw_hex)
                nonce += 1
            wait_for(lambda: DISK_FULL_LOG.search(node.log()), "the disk-full warning", node)
            head = client.rpc("eth_blockNumber")
            head_block = client.rpc("eth_getBlockByNumber", head, False)

            # Refused cleanly: no new transaction, no upload.
            refused = sign_tx(sender.private_key, nonce, to=to, value=3)
            error = client.rpc_reply("eth_sendRawTransaction", refused.raw_hex)["error"]
            assert error["code"] == -32000 and "out of disk space" in error["message"]
            more = b"no room for this" * 1000
            status, body = client.request("PUT", blob_path(more), more, upload_headers(more))
            assert status == 507, body
            # Reads go on.
            assert int(client.rpc("eth_getBalance", receiver, "latest"), 16) == balance
            assert client.rpc("eth_getBlockByNumber", head, False) == head_block
            assert client.rpc("eth_call", {"to": receiver, "data": "0x"}, "latest") == "0x"
            assert client.rpc("eth_getTransactionCount", "0x" + sender.address.hex(), "latest") == "0x1"
            assert client.request("GET", blob_path(blob)) == (200, blob)
            # ... and no block was sealed meanwhile, nor the waiting transaction lost.
            assert client.rpc("eth_blockNumber") == head
            if waiting is not None:
                assert DISK_FULL_LOG.search(node.log()).groups() == (str(int(head, 16) + 1), "1")
                assert client.rpc("eth_getTransactionReceipt", "0x" + waiting.hash.hex()) is None
                assert client.rpc("eth_getTransactionByHash", "0x" + waiting.hash.hex())["blockHash"] is None
            assert node.process.poll() is None

            filler.unlink()
            wait_for(lambda: "disk space is back" in node.log(), "blocks again", node)
            if waiting is not None:
                assert client.rpc("eth_getTransactionReceipt", "0x" + waiting.hash.hex())["status"] == "0x1"
            accepted = client.rpc("eth_sendRawTransaction", refused.raw_hex)
            assert accepted == "0x" + refused.hash.hex()
            wait_for(lambda: client.rpc("eth_getTransactionReceipt", accepted), "a block after the outage", node)
            paid = 3 + (2 if waiting is not None else 0)
            assert int(client.rpc("eth_getBalance", receiver, "latest"), 16) == balance + paid

            # Every block the node reported survives a SIGKILL.
            last = int(client.rpc("eth_blockNumber"), 16)
            hashes = [client.rpc("eth_getBlockByNumber", hex(n), False)["hash"] for n in range(last + 1)]
            node.kill(signal.SIGKILL)
            node = start_node(fs, *flags)
            client = Http(node.http_url)
            assert int(client.rpc("eth_blockNumber"), 16) >= last
            assert [client.rpc("eth_getBlockByNumber", hex(n), False)["hash"] for n in range(last + 1)] == hashes
            assert client.rpc("eth_getTransactionReceipt", accepted)["status"] == "0x1"
            assert int(client.rpc("eth_getBalance", receiver, "latest"), 16) == balance + paid
        finally:
            node.kill(signal.SIGKILL)
