"""``ogpu-node devnet``: a local proof-of-stake network of N validator nodes (and M provider apps) as
child processes on 127.0.0.1 (docs/network.md, "Devnet"). Its files (devnet_files.py) are made on first
use of the datadir and reused after, so a later run restarts the same chain."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from eth_utils import to_checksum_address

from ogpu_node.cli.common import default_datadir
from ogpu_node.cli.devnet_files import (
    DEFAULT_SLOT_TIME,
    DEFAULT_VALIDATORS,
    MAX_DEVNET_NODES,
    Devnet,
    find_devnet,
    make_devnet,
)

__all__ = ["devnet"]

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 8600
STOP_TIMEOUT = 20.0  # seconds a child has to exit after SIGTERM before it is killed
LOG_TAIL_LINES = 20
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no $http_proxy for 127.0.0.1


@dataclass(frozen=True)
class Ports:
    http: int
    ws: int
    p2p: int


@dataclass
class Child:
    name: str  # "node0", "provider1"
    process: subprocess.Popen[bytes]
    log: Path


@click.command("devnet")
@click.option("--validators", type=int, default=None,
              help=f"Validator nodes, 1 to {MAX_DEVNET_NODES} (a new devnet: 4; else the devnet's own).")
@click.option("--providers", type=int, default=None,
              help="Provider apps, one per node in turn (a new devnet: 0; else as many as it has keys for).")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="$OGPU_DATADIR/devnet or ~/.local/share/ogpu-node/devnet",
              help="The devnet's directory: made on first use, reused (same chain) after.")
@click.option("--slot-time", type=int, default=None, help="Seconds per slot of a new devnet (default 2).")
@click.option("--base-port", type=int, default=DEFAULT_BASE_PORT, show_default=True,
              help=f"Node i serves HTTP on P+2i, WebSocket on P+2i+1 and p2p on P+{2 * MAX_DEVNET_NODES}+i "
                   "(0: any free ports).")
def devnet(validators: int | None, providers: int | None, datadir: Path | None, slot_time: int | None,
           base_port: int) -> None:
    """Run a local proof-of-stake devnet until Ctrl-C."""
    _check_range("--validators", validators, 1, MAX_DEVNET_NODES)
    _check_range("--providers", providers, 0, MAX_DEVNET_NODES)
    _check_range("--slot-time", slot_time, 1, 60)
    _check_range("--base-port", base_port, 0, 65535 - 3 * MAX_DEVNET_NODES)
    root = (default_datadir() / "devnet" if datadir is None else datadir.expanduser()).absolute()
    net = find_devnet(root, validators, providers, slot_time)
    # Ports are checked before a new devnet is made, so a port in use leaves no files behind.
    ports = _choose_ports(base_port, len(net.validators) if net else validators or DEFAULT_VALIDATORS)
    if net is None:
        net = make_devnet(root, validators or DEFAULT_VALIDATORS, providers or 0, slot_time or DEFAULT_SLOT_TIME)

    from ogpu_node.p2p.identity import (  # loads py-libp2p: once the input is good
        NodeKeyError,
        multiaddr,
        node_key,
    )

    try:
        bootnode = multiaddr(HOST, ports[0].p2p, node_key(net.node_dir(0)))
    except NodeKeyError as exc:
        raise click.ClickException(str(exc)) from None
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    # Before the first child starts: a Ctrl-C from now on stops what was started, cleanly.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        click.echo(f"Starting {len(net.validators)} nodes in {root} (logs: node<i>/node.log)", err=True)
        for i, p in enumerate(ports):
            children.append(_start(f"node{i}", net.node_dir(i) / "node.log", _node_args(net, i, p, bootnode)))
        if not _wait_ready(children, ports, stop):
            return
        for j in range(len(net.providers)):
            url = f"http://{HOST}:{ports[j % len(ports)].http}"
            children.append(_start(f"provider{j}", net.provider_dir(j) / "provider.log", [
                "provider", "run", "--rpc-url", url, "--keystore", str(net.provider_keystore(j)),
                "--password-file", str(net.password_path), "--datadir", str(net.provider_dir(j))]))
        _print_summary(net, ports, bootnode)
        died = _supervise(children, stop)
        if died is not None:
            _fail(died, _exited(died))
    finally:
        _stop_all(children)


def _check_range(option: str, value: int | None, low: int, high: int) -> None:
    # A one-line error, as every other bad input gets (click's own range check prints its usage too).
    if value is not None and not low <= value <= high:
        raise click.ClickException(f"{option} must be between {low} and {high}, got {value}")


def _choose_ports(base: int, nodes: int) -> list[Ports]:
    """Node i's ports: from ``base`` as --base-port's help says, or free ones the system picks (0). Each
    is checked free now, so a port in use is one clear error rather than a node dying at start."""
    if base == 0:
        sockets = [socket.socket() for _ in range(3 * nodes)]
        try:
            for s in sockets:  # all held open at once, so no port is picked twice
                s.bind((HOST, 0))
            picked = [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()
        return [Ports(*picked[3 * i:3 * i + 3]) for i in range(nodes)]
    ports = [Ports(base + 2 * i, base + 2 * i + 1, base + 2 * MAX_DEVNET_NODES + i) for i in range(nodes)]
    for port in (n for p in ports for n in (p.http, p.ws, p.p2p)):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError as exc:
                raise click.ClickException(f"port {port} on {HOST} is not free ({exc.strerror}): is a devnet "
                                           "already running? Give another --base-port, or 0 for any") from None
    return ports


def _node_args(net: Devnet, i: int, ports: Ports, bootnode: str) -> list[str]:
    args = ["run", "--datadir", str(net.node_dir(i)), "--genesis", str(net.genesis_path),
            "--keystore", str(net.validator_keystore(i)), "--password-file", str(net.password_path),
            "--http.port", str(ports.http), "--ws.port", str(ports.ws), "--port", str(ports.p2p)]
    return args if i == 0 else [*args, "--bootnodes", bootnode]


def _die_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM it when the devnet process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start(name: str, log: Path, args: Sequence[str]) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # appended: a restart keeps the earlier runs' lines
        out.write(f"--- ogpu-node devnet started {name} at {time.ctime()} ---\n".encode())
        out.flush()
        # A session of its own: the terminal's Ctrl-C reaches the devnet alone, which stops each child once.
        process = subprocess.Popen([sys.executable, "-m", "ogpu_node.cli.main", *args], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                   start_new_session=True, preexec_fn=_die_with_parent)
    return Child(name, process, log)


def _rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=5) as response:
        return json.load(response)["result"]


def _wait_ready(children: list[Child], ports: list[Ports], stop: list[int]) -> bool:
    """Wait until every node answers JSON-RPC: True; False when stopped first. A node that exits, or does
    not answer within a minute plus 15 s a node (all of them start at once on few cores), fails."""
    waiting = {child.name: f"http://{HOST}:{p.http}" for child, p in zip(children, ports, strict=True)}
    deadline = time.monotonic() + 60 + 15 * len(children)
    while waiting and not stop:
        for child in children:
            if child.process.poll() is not None:
                _fail(child, _exited(child))
            if child.name in waiting:
                try:
                    _rpc(waiting[child.name], "eth_chainId")
                    del waiting[child.name]
                except (OSError, ValueError, KeyError):
                    pass  # not listening yet
        if waiting and time.monotonic() > deadline:
            _fail(next(c for c in children if c.name in waiting), "does not answer JSON-RPC")
        time.sleep(0.2)
    return not stop


def _print_summary(net: Devnet, ports: list[Ports], bootnode: str) -> None:
    genesis_hash = _rpc(f"http://{HOST}:{ports[0].http}", "eth_getBlockByNumber", "0x0", False)["hash"]
    lines = [f"Devnet:    {net.root}", f"Chain ID:  {net.genesis.chain_id}", f"Genesis:   {genesis_hash}", ""]
    for i, (p, address) in enumerate(zip(ports, net.validators, strict=True)):
        lines.append(f"node{i}  http://{HOST}:{p.http}  ws://{HOST}:{p.ws}  validator {to_checksum_address(address)}")
    for j, address in enumerate(net.providers):
        lines.append(f"provider{j}  on node{j % len(ports)}  {to_checksum_address(address)}  "
                     f"log: {net.provider_dir(j) / 'provider.log'}")
    lines += ["", f"Bootnode:  {bootnode}",
              f"Join:      ogpu-node run --genesis {net.genesis_path} --bootnodes {bootnode} "
              f"--datadir {net.node_dir(len(ports))} --http.port 0 --ws.port 0 --port 0",
              f"Keys:      {net.root / 'keystore'} (password: {net.password_path}); the --dev accounts are funded too",
              f"The validators' RANDAO hash chains last until {time.ctime(net.expires)}.",
              "Ctrl-C stops the devnet."]
    click.echo("\n".join(lines))
    sys.stdout.flush()


def _supervise(children: list[Child], stop: list[int]) -> Child | None:
    """Wait for a signal (None) or for a child to exit (that child)."""
    while not stop:
        for child in children:
            if child.process.poll() is not None:
                return child
        time.sleep(0.2)
    return None


def _fail(child: Child, what: str) -> None:
    """Report a child gone wrong, with the tail of its log; the caller's finally stops the devnet."""
    click.echo(f"{child.name} {what}; the end of {child.log}:", err=True)
    click.echo("\n".join(f"  {line}" for line in _tail(child.log, LOG_TAIL_LINES)), err=True)
    raise click.ClickException(f"{child.name} {what}: stopped the devnet")


def _exited(child: Child) -> str:
    code = child.process.returncode
    if code >= 0:
        return f"exited early (code {code})"
    try:
        return f"exited early (killed by {signal.Signals(-code).name})"
    except ValueError:  # a signal without a name (real-time ones)
        return f"exited early (killed by signal {-code})"


def _tail(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def _stop_all(children: list[Child]) -> None:
    """SIGTERM the providers, then the nodes they use; whatever has not exited after STOP_TIMEOUT is killed."""
    for group in ([c for c in children if c.name.startswith("provider")],
                  [c for c in children if not c.name.startswith("provider")]):
        for child in group:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in group:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"{child.name} did not stop within {STOP_TIMEOUT:g} s: killed", err=True)
                child.process.kill()
                child.process.wait()
