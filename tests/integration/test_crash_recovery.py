"""Crash recovery of a real node process (DESIGN.md §2 Storage): a block is committed in one LMDB write
transaction with its indexes and the head pointer, so a SIGKILL at any moment leaves every block the node
reported intact and nothing half-written; the node restarts on the same datadir and keeps producing."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from txfactory import sign_tx

from ogpu_node.config import DEV_GENESIS, load_genesis

ROOT = Path(__file__).resolve().parents[2]
GENESIS_SUPPLY = 10 * 10_000 * 10**18
SENDERS = (1, 2, 3, 4)  # dev account indexes streaming transfers
PROBE = 9  # dev account sending the one transaction that shows a restarted node still mines
MAX_FEE = 3 * 10**9  # the dev base fee starts at 1 gwei and only falls under these light blocks
TIP = 10**8


class NodeGone(Exception):
    """The connection to the node failed: it was killed."""


class Rpc:
    """JSON-RPC over one keep-alive http.client connection to 127.0.0.1."""

    def __init__(self, url: str) -> None:
        match = re.fullmatch(r"http://(127\.0\.0\.1):(\d+)/?", url)
        assert match, url
        self.host, self.port = match.group(1), int(match.group(2))
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def _post(self, payload: object) -> object:
        body = json.dumps(payload).encode()
        try:
            self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise NodeGone(repr(exc)) from exc
        assert response.status == 200, (response.status, data)
        return json.loads(data)

    def call(self, method: str, *params: object) -> object:
        reply = self._post({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        assert "error" not in reply, (method, reply)
        return reply["result"]

    def batch(self, method: str, params: list[list[object]]) -> list[object]:
        replies = self._post(
            [{"jsonrpc": "2.0", "id": i, "method": method, "params": p} for i, p in enumerate(params)]
        )
        by_id = {r["id"]: r for r in replies}
        assert all("error" not in r for r in replies), replies
        return [by_id[i]["result"] for i in range(len(params))]

    def close(self) -> None:
        self.conn.close()


def hexaddr(account) -> str:
    return "0x" + account.address.hex()


def sign_transfers(dev_accounts, nonces: dict[int, int], per_sender: int) -> list[tuple[str, str]]:
    """(raw, hash) of `per_sender` transfers from each sender, interleaved round robin, nonces in order."""
    signed = []
    for k in range(per_sender):
        for n, i in enumerate(SENDERS):
            to = dev_accounts[(i + 1 + k + n) % 10]
            tx = sign_tx(dev_accounts[i], nonces[i] + k, to=to.address, value=1_000 + k, tip=TIP, max_fee=MAX_FEE)
            signed.append((tx.raw_hex, tx.hash_hex))
    return signed


@dataclass
class Stream:
    """A client thread sending pre-signed transactions until the list ends or the node dies."""

    url: str
    signed: list[tuple[str, str]]
    burst_after: int | None = None  # send the rest as one JSON-RPC batch after this many single sends
    sent: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    burst_sent: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        rpc = Rpc(self.url)
        try:
            singles = self.signed if self.burst_after is None else self.signed[: self.burst_after]
            for raw, tx_hash in singles:
                assert rpc.call("eth_sendRawTransaction", raw) == tx_hash
                self.sent.append(tx_hash)
            if self.burst_after is not None:
                rest = self.signed[self.burst_after :]
                assert rpc.batch("eth_sendRawTransaction", [[raw] for raw, _ in rest]) == [h for _, h in rest]
                self.sent.extend(h for _, h in rest)
                self.burst_sent.set()
        except NodeGone:
            pass  # the node was killed under us: the point of the test
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.finished.set()
            rpc.close()


@dataclass
class Observed:
    """What the node reported before a kill: blocks by number and receipts by transaction hash."""

    blocks: dict[int, dict] = field(default_factory=dict)
    receipts: dict[str, dict] = field(default_factory=dict)

    def poll(self, rpc: Rpc) -> bool:
        """Record the next block and its receipts if the node has it; False when there is none yet."""
        number = max(self.blocks, default=-1) + 1
        block = rpc.call("eth_getBlockByNumber", hex(number), False)
        if block is None:
            return False
        for tx_hash in block["transactions"]:
            receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
            assert receipt is not None and receipt["blockHash"] == block["hash"], (tx_hash, receipt)
            self.receipts[tx_hash] = receipt
        self.blocks[number] = block
        return True


def watch_until(rpc: Rpc, observed: Observed, done, deadline_s: float = 60) -> None:
    """Record blocks as the node reports them until `done()`; a brief pause only when nothing is new."""
    deadline = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < deadline, "the node stopped reporting blocks"
        if not observed.poll(rpc):
            time.sleep(0.005)


def restart(node_factory, datadir: Path):
    return node_factory(datadir=datadir)


def wait_receipt(rpc: Rpc, tx_hash: str, deadline_s: float = 30) -> dict:
    deadline = time.monotonic() + deadline_s
    while (receipt := rpc.call("eth_getTransactionReceipt", tx_hash)) is None:
        assert time.monotonic() < deadline, f"{tx_hash} was not mined"
        time.sleep(0.01)
    return receipt


def check_recovered(rpc: Rpc, dev_accounts, observed: Observed, senders_sent: set[str]) -> int:
    """Every check the restarted node must pass; returns its head number."""
    head = int(rpc.call("eth_blockNumber"), 16)
    reported_head = max(observed.blocks)
    highest_receipt = max((int(r["blockNumber"], 16) for r in observed.receipts.values()), default=0)
    assert head >= reported_head >= highest_receipt

    # Every block reported before the kill is there, identical (hash, stateRoot, everything).
    for number, before in observed.blocks.items():
        assert rpc.call("eth_getBlockByNumber", hex(number), False) == before, number
    head_block = rpc.call("eth_getBlockByNumber", hex(head), False)
    if head in observed.blocks:
        assert head_block["stateRoot"] == observed.blocks[head]["stateRoot"]

    # Every receipt reported before the kill is returned identically.
    for tx_hash, before in observed.receipts.items():
        assert rpc.call("eth_getTransactionReceipt", tx_hash) == before, tx_hash

    # The chain up to the head is whole: parent links, our transactions only, each with its receipt.
    burnt = 0
    mined_per_sender: dict[str, int] = {}
    coinbase = hexaddr(dev_accounts[0])
    parent = rpc.call("eth_getBlockByNumber", "0x0", False)["hash"]
    for number in range(1, head + 1):
        block = rpc.call("eth_getBlockByNumber", hex(number), True)
        assert block["parentHash"] == parent
        assert block["miner"] == coinbase
        parent = block["hash"]
        burnt += int(block["baseFeePerGas"], 16) * int(block["gasUsed"], 16)
        gas = 0
        for tx in block["transactions"]:
            assert tx["hash"] in senders_sent
            receipt = rpc.call("eth_getTransactionReceipt", tx["hash"])
            assert receipt["status"] == "0x1" and receipt["blockNumber"] == hex(number)
            gas += int(receipt["gasUsed"], 16)
            mined_per_sender[tx["from"]] = mined_per_sender.get(tx["from"], 0) + 1
        assert gas == int(block["gasUsed"], 16)

    # Nonces and balances at the head agree with the blocks: transfers move value among the dev accounts,
    # tips go to the coinbase (dev account 0), base fees are burnt.
    at = hex(head)
    for account in dev_accounts:
        address = hexaddr(account)
        assert int(rpc.call("eth_getTransactionCount", address, at), 16) == mined_per_sender.get(address, 0)
    total = sum(int(rpc.call("eth_getBalance", hexaddr(a), at), 16) for a in dev_accounts)
    assert total == GENESIS_SUPPLY - burnt
    return head


def probe_mines(rpc: Rpc, dev_accounts, head: int) -> tuple[str, str]:
    """A new transaction on the restarted node is mined in the next block, on top of the recovered head."""
    probe = dev_accounts[PROBE]
    nonce = int(rpc.call("eth_getTransactionCount", hexaddr(probe), "latest"), 16)
    signed = sign_tx(probe, nonce, to=dev_accounts[0].address, value=7, tip=TIP, max_fee=MAX_FEE)
    tx_hash = signed.hash_hex
    assert rpc.call("eth_sendRawTransaction", signed.raw_hex) == tx_hash
    receipt = wait_receipt(rpc, tx_hash)
    assert receipt["status"] == "0x1"
    assert receipt["blockNumber"] == hex(head + 1)
    head_hash = rpc.call("eth_getBlockByNumber", hex(head), False)["hash"]
    assert rpc.call("eth_getBlockByNumber", hex(head + 1), False)["parentHash"] == head_hash
    return tx_hash, receipt["blockHash"]


# Kill moments: (name, transfers per sender, single sends before a batch burst, receipts seen before the kill).
MOMENTS = [
    ("first-receipt", 150, None, 1),  # right after the first block of the stream is reported
    ("mid-stream", 150, None, 24),  # after 24 receipts, with the stream still sending
    ("after-burst", 40, 8, None),  # right after one JSON-RPC batch of 152 sends returns
]


def test_rule_sigkill_at_any_moment_loses_no_reported_block_or_receipt(tmp_path, node_factory, dev_accounts):
    datadir = tmp_path / "D"
    node = node_factory(datadir=datadir)
    rpc = Rpc(node.http_url)
    observed = Observed()
    sent_ever: set[str] = set()
    heads = []
    try:
        for name, per_sender, burst_after, receipts_before_kill in MOMENTS:
            nonces = {
                i: int(rpc.call("eth_getTransactionCount", hexaddr(dev_accounts[i]), "latest"), 16)
                for i in SENDERS
            }
            signed = sign_transfers(dev_accounts, nonces, per_sender)
            receipts_at_start = len(observed.receipts)
            stream = Stream(node.http_url, signed, burst_after=burst_after)
            thread = stream.start()
            if burst_after is None:
                enough = receipts_at_start + receipts_before_kill
                watch_until(rpc, observed, lambda enough=enough: len(observed.receipts) >= enough)
                still_sending = not stream.finished.is_set()
                node.kill(signal.SIGKILL)
                # The kill came mid-stream: the client was still sending.
                assert still_sending, (name, stream.errors)
                assert len(stream.sent) < len(signed), name
            else:
                watch_until(rpc, observed, stream.burst_sent.is_set)
                node.kill(signal.SIGKILL)
            thread.join(timeout=30)
            assert not thread.is_alive()
            assert stream.errors == [], (name, stream.errors)
            sent_ever.update(h for _, h in signed)
            assert node.process.returncode == -signal.SIGKILL

            rpc.close()
            node = restart(node_factory, datadir)
            rpc = Rpc(node.http_url)
            head = check_recovered(rpc, dev_accounts, observed, sent_ever)
            probe_hash, _ = probe_mines(rpc, dev_accounts, head)
            sent_ever.add(probe_hash)
            # Blocks committed after the last look before the kill, and the probe's, count as reported now.
            while observed.poll(rpc):
                pass
            assert max(observed.blocks) == head + 1
            heads.append(head)
    finally:
        rpc.close()
    assert heads == sorted(heads) and len(set(heads)) == len(MOMENTS)


def _run_dev(datadir: Path, log: Path) -> tuple[subprocess.Popen, str | None]:
    """Start `run --dev` on `datadir`; return the process and its URL, or None once it exited."""
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ogpu_node.cli.main", "run", "--dev", "--datadir", str(datadir),
             "--http.port", "0", "--ws.port", "0"],
            stdout=out, stderr=err, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process, None
        match = re.search(r"Listening on (http://\S+)", log.with_suffix(".out").read_text())
        if match:
            return process, match.group(1)
        time.sleep(0.05)
    process.kill()
    process.wait()
    pytest.fail("the node neither started nor exited within 60 s")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"config": {"chainId": 999}}, id="other-chain-id"),
        pytest.param(
            {"config": {"chainId": 999}, "alloc": {"0x" + "11" * 20: {"balance": "0x1"}}}, id="other-alloc"
        ),
    ],
)
def test_rule_datadir_of_another_genesis_fails_with_one_error_line(tmp_path, change):
    doc = json.loads(DEV_GENESIS.read_text())
    doc.update(change)
    other = tmp_path / "other_genesis.json"
    other.write_text(json.dumps(doc))
    assert load_genesis(other).chain_id == 999
    datadir = tmp_path / "D"
    init = subprocess.run(
        [sys.executable, "-m", "ogpu_node.cli.main", "init", "--datadir", str(datadir), str(other)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert init.returncode == 0, init.stderr
    other_hash = re.search(r"hash=(0x[0-9a-f]{64})", init.stdout).group(1)

    process, url = _run_dev(datadir, tmp_path / "run")
    if url is not None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        pytest.fail(f"the node started on a datadir of another genesis and serves {url}")
    stderr = (tmp_path / "run.err").read_text()
    assert process.returncode == 1
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    assert other_hash in lines[0] or "999" in lines[0], lines[0]
    assert (tmp_path / "run.out").read_text() == ""
