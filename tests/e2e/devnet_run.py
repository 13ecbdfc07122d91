"""Real processes of a devnet for the network tests (tests/e2e/test_devnet_network.py): `ogpu-node devnet`
as a user runs it (its printed URLs and join command read back), `ogpu-node run` processes the test
starts itself (the join command, or a devnet node's own command taken over so that one node can be
killed without the devnet stopping the rest), and JSON-RPC polled against deadlines.

Every process is started through a `Processes`, whose `stop_all` stops each one (the test's fixture
calls it whatever happened). A failed wait names what was awaited and ends with the tail of every
node log under the devnet's directory, where the cause of a network problem is found."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from e2e.cli_run import CLI, ENV, ROOT

from ogpu_node.cli.devnet_files import MAX_DEVNET_NODES

T = TypeVar("T")

READY = "Ctrl-C stops the devnet."
NODE_LINE = re.compile(r"^node(\d+)  (http://127\.0\.0\.1:\d+)  ws://", re.M)
JOIN_LINE = re.compile(r"^Join:\s+ogpu-node (run .+)$", re.M)
LISTENING = re.compile(r"^Listening on (http://\S+)$", re.M)
DATADIR_OF_NODE = re.compile(r"/node(\d+)$")
POLL_S = 0.25
EPHEMERAL_PORTS = 32768  # where Linux starts picking local ports for outgoing connections
LOG_TAIL_CHARS = 2500
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no $http_proxy for 127.0.0.1


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""


def free_base_port() -> int:
    """A --base-port P whose devnet ports (P to P+3*16) are free now, below Linux's ephemeral range (32768
    and up): a port picked there can be taken by any process's outgoing connection while a node that held it
    is down, and a restarted node must get its own ports back."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(10_000, EPHEMERAL_PORTS - 3 * MAX_DEVNET_NODES)
        if all(_bindable(port) for port in range(base, base + 3 * MAX_DEVNET_NODES)):
            return base
    pytest.fail("no free range of devnet ports below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def rpc(url: str, method: str, *params: Any, timeout: float = 10) -> Any:
    """One JSON-RPC call's result. Raises OSError when the node does not answer (not up yet, or killed)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RpcError(f"{method}{list(params)}: {reply['error']}")
    return reply["result"]


def head(url: str) -> int:
    return int(rpc(url, "eth_blockNumber"), 16)


def block_hash(url: str, number: int) -> str | None:
    block = rpc(url, "eth_getBlockByNumber", hex(number), False)
    return None if block is None else block["hash"]


def finalized(url: str) -> tuple[int, str]:
    """The node's finalized block: (number, hash)."""
    block = rpc(url, "eth_getBlockByNumber", "finalized", False)
    return int(block["number"], 16), block["hash"]


def peer_count(url: str) -> int:
    return int(rpc(url, "net_peerCount"), 16)


def agreed_finality(urls: list[str]) -> tuple[int, str] | None:
    """The finalized block every node reports at this moment, when they all report the same one past
    genesis; else None."""
    seen = {finalized(url) for url in urls}
    if len(seen) == 1:
        ((number, hash_),) = seen
        return (number, hash_) if number > 0 else None
    return None


def log_tails(root: Path) -> str:
    """The end of each node log under a devnet's directory (and of the test's own logs beside it)."""
    parts = []
    for log in sorted([*root.glob("node*/node.log"), *root.parent.glob("*.log")]):
        text = log.read_text(errors="replace")
        parts.append(f"--- {log} (last {LOG_TAIL_CHARS} chars) ---\n{text[-LOG_TAIL_CHARS:]}")
    return "\n".join(parts)


def wait_until(what: str, check: Callable[[], T | None], timeout: float, root: Path,
               state: Callable[[], object] | None = None) -> T:
    """Poll ``check`` until it returns something truthy (returned); a node not answering (OSError) counts
    as not yet. Past the deadline the test fails, naming ``what``, showing ``state()`` (what the nodes
    say now) and the node logs."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (OSError, RpcError) as exc:
            last = exc
        if time.monotonic() > deadline:
            now = _state(state) if state is not None else ""
            pytest.fail(f"not within {timeout:g} s: {what} (last: {last!r}){now}\n{log_tails(root)}")
        time.sleep(POLL_S)


def _state(state: Callable[[], object]) -> str:
    try:
        return f"; now: {state()!r}"
    except (OSError, RpcError) as exc:
        return f"; now: {exc!r}"


@dataclass
class Run:
    """An `ogpu-node run` the test started: its arguments (after `ogpu-node`), its log, its URL."""

    args: list[str]
    log: Path
    process: subprocess.Popen[bytes]
    url: str = ""

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Devnet:
    """A running `ogpu-node devnet` and what it printed."""

    root: Path
    process: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    urls: list[str] = field(default_factory=list)  # node i's HTTP URL
    join_args: list[str] = field(default_factory=list)  # the printed join command, after `ogpu-node`
    children: dict[int, str] = field(default_factory=dict)  # pid -> command line, to make sure they stop

    def node_commands(self) -> dict[int, list[str]]:
        """Node i's `ogpu-node` arguments, as the devnet ran it (read from /proc)."""
        commands = {}
        for pid in self.children:
            try:
                argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            args = argv[argv.index("ogpu_node.cli.main") + 1:]
            if args[:1] == ["run"]:
                match = DATADIR_OF_NODE.search(args[args.index("--datadir") + 1])
                assert match is not None, args
                commands[int(match.group(1))] = args
        return commands


class Processes:
    """Starts devnets and nodes, and stops every one of them in `stop_all`."""

    def __init__(self) -> None:
        self.devnets: list[Devnet] = []
        self.runs: list[Run] = []

    def devnet(self, root: Path, *args: str, timeout: float = 180) -> Devnet:
        """`ogpu-node devnet --datadir root ...`, once it has printed its summary (every node answers)."""
        out_path, err_path = root.parent / f"{root.name}-devnet.out", root.parent / f"{root.name}-devnet.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen([*CLI, "devnet", "--datadir", str(root), *args], stdout=out, stderr=err,
                                       env=ENV, cwd=ROOT)
        devnet = Devnet(root, process, out_path, err_path)
        self.devnets.append(devnet)
        deadline = time.monotonic() + timeout
        while READY not in out_path.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"devnet not ready (exit {process.poll()}):\n{err_path.read_text()[-3000:]}")
            time.sleep(0.1)
        out = out_path.read_text()
        devnet.urls = [url for _, url in sorted((int(i), url) for i, url in NODE_LINE.findall(out))]
        join = JOIN_LINE.search(out)
        assert join is not None, out
        devnet.join_args = shlex.split(join.group(1))
        devnet.children = _children(process.pid)
        return devnet

    def stop_devnet(self, devnet: Devnet) -> int:
        """SIGINT, as Ctrl-C: the devnet stops its nodes, each through its own shutdown."""
        devnet.process.send_signal(signal.SIGINT)
        return devnet.process.wait(timeout=60)

    def run(self, args: list[str], log: Path, timeout: float = 120) -> Run:
        """`ogpu-node <args>`, its output appended to ``log``, once its banner names its HTTP URL."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"--- test started ogpu-node {' '.join(args)} ---\n".encode())
            out.flush()
            start = out.tell()
            process = subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
        node = Run(args, log, process)
        self.runs.append(node)
        deadline = time.monotonic() + timeout
        while not node.url:
            with open(log, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            listening = LISTENING.search(text)
            if listening:
                node.url = listening.group(1)
            elif process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ogpu-node {' '.join(args)} did not start (exit {process.poll()}):\n{text[-3000:]}")
            else:
                time.sleep(0.02)  # the join test watches the sync from the node's first moments
        return node

    def kill(self, node: Run) -> None:
        node.process.kill()
        node.process.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every node the test started and SIGINT every devnet, all at once; whatever has not
        exited 30 s later is killed, and so is any devnet child still running after its devnet."""
        for node in self.runs:
            if node.alive():
                node.process.send_signal(signal.SIGTERM)
        for devnet in self.devnets:
            if devnet.process.poll() is None:
                devnet.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for process in [n.process for n in self.runs] + [d.process for d in self.devnets]:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for devnet in self.devnets:
            for pid, command in devnet.children.items():
                if running(pid, command):
                    os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


def running(pid: int, command: str) -> bool:
    """The process ``pid`` is still the one that ran ``command`` and has not exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() == command
    except OSError:
        return False
