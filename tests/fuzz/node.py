"""The node under fuzz: one in-process `--dev` node in its own thread (its own trio loop), reached
directly through `JsonRpcProcessor.handle` (the bulk), over one keep-alive HTTP connection, over one
WebSocket, and over raw TCP sockets. Every message is counted; every error the node logs is kept."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from websockets.sync.client import ClientConnection, connect

from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.node import Node, NodeConfig
from ogpu_node.rpc.calls import CallLimits
from ogpu_node.txpool import PoolConfig

# Looping calls must end fast in a fuzz run; the node's own flag does it (--rpc.evmtimeout).
EVM_TIMEOUT_S = 0.25
# A small pool, so that a flood of a few hundred transactions reaches the pool's own limit.
POOL_SLOTS = 256
_START_TIMEOUT_S = 60.0
JSON = {"Content-Type": "application/json", "Host": "127.0.0.1"}


def rss_bytes() -> int:
    """This process's resident set (the node runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Errors(logging.Handler):
    """Keeps what the node logs at ERROR: an internal error or a failed handler is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Counts:
    messages: int = 0  # bodies handed to the node: one request or one batch each
    calls: int = 0  # JSON-RPC request objects inside them (a batch counts its items)


class FuzzedNode:
    def __init__(self, datadir: Path) -> None:
        self.accounts = derive_dev_accounts(10)
        config = NodeConfig(
            datadir=datadir, genesis=load_genesis(DEV_GENESIS), signer=self.accounts[0],
            http_port=0, ws_port=0, durable=False, calls=CallLimits(evm_timeout_s=EVM_TIMEOUT_S),
            pool=PoolConfig(max_transactions=POOL_SLOTS),
        )
        self.node = Node(config)
        self.counts = Counts()
        self.errors = _Errors()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="fuzzed-node")
        self._http: http.client.HTTPConnection | None = None
        self._ws: ClientConnection | None = None

    # -- lifecycle --

    def start(self) -> None:
        logging.getLogger("ogpu").addHandler(self.errors)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._failure is not None:
            raise RuntimeError("the node did not start") from self._failure

    def stop(self) -> None:
        for closer in (self._http, self._ws):
            if closer is not None:
                closer.close()
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(_START_TIMEOUT_S)
        logging.getLogger("ogpu").removeHandler(self.errors)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start() or by the test that finds the node gone
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.node.run)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    # -- ways in --

    def handle(self, body: bytes, calls: int = 1) -> bytes | None:
        """The RPC processor itself, as both servers call it (no session: as over HTTP)."""
        self._count(calls)
        return trio.from_thread.run(self.node.rpc.handle, body, None, trio_token=self._token)

    def post(self, body: bytes, calls: int = 1, headers: dict[str, str] = JSON) -> tuple[int, dict[str, str], bytes]:
        """POST over one keep-alive connection, reopened only when the node closed it."""
        self._count(calls)
        for attempt in (0, 1):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.node.http_port, timeout=30)
            try:
                self._http.request("POST", "/", body=body, headers=headers)
                response = self._http.getresponse()
                data = response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                self._http.close()
                self._http = None
                if attempt:
                    raise
                continue
            reply_headers = {k.lower(): v for k, v in response.getheaders()}
            if reply_headers.get("connection", "").lower() == "close":
                self._http.close()
                self._http = None
            return response.status, reply_headers, data
        raise AssertionError("unreachable")

    def ws(self, body: bytes, expect_reply: bool, calls: int = 1) -> bytes | None:
        """One message over one WebSocket; `expect_reply` False: a notification, nothing comes back."""
        self._count(calls)
        if self._ws is None:
            self._ws = connect(
                f"ws://127.0.0.1:{self.node.ws_port}", max_size=None, open_timeout=30, proxy=None, ping_interval=None
            )
        self._ws.send(body)
        if not expect_reply:
            return None
        while True:
            message = self._ws.recv(timeout=30)
            data = message.encode() if isinstance(message, str) else message
            if b'"eth_subscription"' not in data[:64]:  # notifications of its subscriptions come too
                return data

    def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send bytes on a fresh TCP connection, half-close, read until the node closes."""
        self._count(1)
        with socket.create_connection(("127.0.0.1", self.node.http_port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # the node answered and closed before all of it was sent
                pass
            chunks = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the node's loop (reads of its state between requests)."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def _count(self, calls: int) -> None:
        if self._failure is not None:
            raise RuntimeError("the node stopped") from self._failure
        self.counts.messages += 1
        self.counts.calls += calls
