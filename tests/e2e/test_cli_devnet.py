"""`ogpu-node devnet` (docs/network.md, "Devnet") as a user runs it: it writes the devnet's files once,
starts its nodes (and providers) as child processes that answer JSON-RPC with one genesis, prints their
URLs and the command that joins the devnet, stops every child on SIGINT, restarts the same chain from
the same directory, and reports a child that dies. Whether the nodes finalize together is the p2p
tests' concern; here only what the command controls is checked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e.cli_run import CLI, ENV, ROOT, assert_one_line_error, cli
from e2e.devnet_run import running as _running
from eth_utils import to_checksum_address
from websockets.sync.client import connect

from ogpu_node.cli.devnet_files import DEVNET_CHAIN_ID, make_devnet
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.crypto.keystore import list_accounts
from ogpu_node.p2p.identity import multiaddr, node_key
from tests.rpccall import rpc

NODE_LINE = re.compile(r"^node(\d+)  (http://127\.0\.0\.1:\d+)  (ws://127\.0\.0\.1:\d+)  validator (0x[0-9a-fA-F]{40})$",
                       re.M)
PROVIDER_LINE = re.compile(r"^provider(\d+)  on node(\d+)  (0x[0-9a-fA-F]{40})  log: (\S+)$", re.M)
GENESIS_LINE = re.compile(r"^Genesis:\s+(0x[0-9a-f]{64})$", re.M)
BOOTNODE_LINE = re.compile(r"^Bootnode:\s+(/ip4/127\.0\.0\.1/tcp/(\d+)/p2p/\w+)$", re.M)
READY = "Ctrl-C stops the devnet."


class Devnet:
    """A running `ogpu-node devnet`, its output in files (the pipes would fill while it waits)."""

    def __init__(self, tmp_path: Path, run: int, *args: str | Path) -> None:
        self.out_path, self.err_path = tmp_path / f"devnet{run}.out", tmp_path / f"devnet{run}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen([*CLI, "devnet", *map(str, args)], stdout=out, stderr=err, env=ENV,
                                            cwd=ROOT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while READY not in self.out_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"devnet not ready (exit {self.process.poll()}):\n{self.err_path.read_text()[-3000:]}")
            time.sleep(0.1)
        self.out = self.out_path.read_text()
        self.nodes = [(http, ws, address) for _, http, ws, address in NODE_LINE.findall(self.out)]
        self.genesis_hash = GENESIS_LINE.search(self.out).group(1)
        bootnode = BOOTNODE_LINE.search(self.out)
        self.bootnode, self.bootnode_port = bootnode.group(1), int(bootnode.group(2))

    def children(self) -> dict[int, str]:
        """pid -> command line of each process the devnet started."""
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if entry.name.isdigit() and ppid == self.process.pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
        return found

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def devnets(tmp_path):
    started: list[Devnet] = []
    children: dict[int, str] = {}

    def start(*args: str | Path) -> Devnet:
        devnet = Devnet(tmp_path, len(started), *args)
        started.append(devnet)
        devnet.wait_ready()
        children.update(devnet.children())
        return devnet

    yield start
    for devnet in started:
        devnet.kill()
    for pid, command in children.items():  # the devnet's children die with it (PR_SET_PDEATHSIG); make sure
        if _running(pid, command):
            os.kill(pid, signal.SIGKILL)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait(what: str, done, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout} s")


@pytest.mark.timeout(240)
def test_devnet_starts_stops_restarts_the_same_chain_and_reports_a_dead_node(tmp_path, devnets):
    root = tmp_path / "devnet"
    first = devnets("--validators", "2", "--providers", "1", "--base-port", "0", "--datadir", root)

    # The files: one validator key per node, a provider key, secrets readable by the owner only.
    genesis = load_genesis(root / "genesis.json")
    validators = [to_checksum_address(v.address) for v in genesis.consensus.validators]
    assert genesis.chain_id == DEVNET_CHAIN_ID and genesis.chain_id != load_genesis(DEV_GENESIS).chain_id
    assert [to_checksum_address(list_accounts(root / "keystore" / f"validator{i}")[0][0]) for i in (0, 1)] == validators
    (provider,) = list_accounts(root / "keystore" / "provider0")
    assert genesis.alloc[provider[0]].balance > 0
    assert _mode(root) == 0o700 and _mode(root / "password") == 0o600
    secrets = [provider[1]]
    for i in (0, 1):
        ((_, keyfile),) = list_accounts(root / "keystore" / f"validator{i}")
        secrets += [keyfile, root / f"node{i}" / "p2p" / "nodekey", *(root / f"node{i}" / "validator").glob("randao-*")]
        assert _mode(root / "keystore" / f"validator{i}") == 0o700
    assert len(secrets) == 7 and all(_mode(path) == 0o600 for path in secrets), [(p, oct(_mode(p))) for p in secrets]

    # What it printed: each node's URLs and validator, the bootnode (node 0's key and p2p port), the join command.
    assert [address for _, _, address in first.nodes] == validators
    assert PROVIDER_LINE.search(first.out).group(1, 2, 3) == ("0", "0", to_checksum_address(provider[0]))
    assert first.bootnode == multiaddr("127.0.0.1", first.bootnode_port, node_key(root / "node0"))
    assert f"ogpu-node run --genesis {root / 'genesis.json'} --bootnodes {first.bootnode} --datadir " in first.out
    for http, ws, _ in first.nodes:
        assert rpc(http, "eth_chainId") == hex(DEVNET_CHAIN_ID)
        assert rpc(http, "eth_getBlockByNumber", "0x0", False)["hash"] == first.genesis_hash
        with connect(ws, proxy=None, open_timeout=30) as connection:
            connection.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            assert json.loads(connection.recv(timeout=30))["result"] == hex(DEVNET_CHAIN_ID)
    with socket.create_connection(("127.0.0.1", first.bootnode_port), timeout=10):
        pass  # node 0 listens for peers on the port its multiaddr names
    children = first.children()
    commands = list(children.values())
    assert len(commands) == 3, commands
    assert sum(f" run --datadir {root / f'node{i}'} " in c for c in commands for i in (0, 1)) == 2, commands
    assert sum(f" provider run --rpc-url {first.nodes[0][0]} " in c for c in commands) == 1, commands
    node0_http = first.nodes[0][0]
    head = _wait("node 0's first block", lambda: int(rpc(node0_http, "eth_blockNumber"), 16))

    # SIGINT: every child stops, the nodes through their own shutdown.
    assert first.stop(signal.SIGINT) == 0, first.err_path.read_text()
    assert not [pid for pid, command in children.items() if _running(pid, command)]
    assert "killed" not in first.err_path.read_text()
    for i in (0, 1):
        last_run = (root / f"node{i}" / "node.log").read_text().rsplit("--- ogpu-node devnet started", 1)[1]
        assert "shutting down" in last_run, last_run[-2000:]
    files = {path: path.read_bytes() for path in root.rglob("*") if path.is_file() and "keystore" in path.parts}
    files[root / "genesis.json"] = (root / "genesis.json").read_bytes()
    files[root / "password"] = (root / "password").read_bytes()

    # The same directory again: the same genesis, keys and chain, fewer providers.
    second = devnets("--datadir", root, "--base-port", "0", "--providers", "0")
    assert second.genesis_hash == first.genesis_hash
    assert [address for _, _, address in second.nodes] == validators
    assert "provider0" not in second.out
    assert {path: path.read_bytes() for path in files} == files
    for http, _, _ in second.nodes:
        assert rpc(http, "eth_getBlockByNumber", "0x0", False)["hash"] == first.genesis_hash
    assert int(rpc(second.nodes[0][0], "eth_blockNumber"), 16) >= head  # chain data kept under node0/

    # A node that dies: the devnet names it with its log's tail, stops the other and exits non-zero.
    children = second.children()
    (node1,) = [pid for pid, command in children.items() if f"{root / 'node1'} " in command]
    os.kill(node1, signal.SIGKILL)
    assert second.process.wait(timeout=60) == 1
    err = second.err_path.read_text()
    assert err.splitlines()[-1] == "Error: node1 exited early (killed by SIGKILL): stopped the devnet", err
    assert f"node1 exited early (killed by SIGKILL); the end of {root / 'node1' / 'node.log'}:" in err
    assert not [pid for pid, command in children.items() if _running(pid, command)]


def _free_base_port() -> tuple[socket.socket, int]:
    """A socket holding a port P that --base-port P would give node 0's HTTP."""
    for port in range(20_000, 30_000, 97):
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", port))
            return held, port
        except OSError:
            held.close()
    pytest.fail("no free port to hold")


@pytest.mark.timeout(120)
def test_bad_input_is_one_line_and_changes_nothing(tmp_path):
    made = tmp_path / "made"
    make_devnet(made, 1, 1, 2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "genesis.json").write_text(DEV_GENESIS.read_text())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    held, port = _free_base_port()
    fresh = tmp_path / "fresh"
    calls = {
        ("--validators", "0", "--datadir", fresh): "--validators must be between 1 and 16, got 0",
        ("--validators", "17", "--datadir", fresh): "--validators must be between 1 and 16, got 17",
        ("--providers", "-1", "--datadir", fresh): "--providers must be between 0 and 16, got -1",
        ("--datadir", other): "is not a devnet's genesis (chain id 1337, no consensus section)",
        ("--datadir", busy): "is not empty and holds no devnet",
        ("--validators", "2", "--datadir", made): "was made with --validators 1, not 2",
        ("--providers", "2", "--datadir", made): "was made with --providers 1, so funds no more than 1, not 2",
        ("--slot-time", "3", "--datadir", made): "was made with --slot-time 2, not 3",
        ("--base-port", str(port), "--datadir", fresh): f"port {port} on 127.0.0.1 is not free",
    }
    with held, ThreadPoolExecutor(len(calls)) as pool:  # each call pays the CLI's imports: in parallel
        results = list(pool.map(lambda args: cli("devnet", *args), calls))
    for result, fragment in zip(results, calls.values(), strict=True):
        assert_one_line_error(result, fragment)
    assert not fresh.exists()
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
