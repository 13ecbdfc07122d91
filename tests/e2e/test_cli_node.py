"""`ogpu-node init` and `ogpu-node run`, driven as real subprocesses (DESIGN.md §7: geth-like commands,
errors are one clear line and a non-zero exit, `--dev` prints its accounts and keys as anvil does)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.cli_run import CLI, ENV, ROOT, assert_one_line_error, cli
from eth_utils import to_checksum_address

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.db import LMDBStore
from tests.rpccall import rpc

TEN_THOUSAND_OGPU = 10_000 * 10**18
INIT_LINE = re.compile(r"^Successfully wrote genesis state  database=chaindata  hash=(0x[0-9a-f]{64})$")
LISTEN = re.compile(r"^Listening on (http://127\.0\.0\.1:(\d+))$", re.M)




def dev_genesis_doc() -> dict:
    return json.loads(DEV_GENESIS.read_text())


def write_genesis(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def dev_genesis_hash(tmp_path: Path) -> str:
    store = LMDBStore(tmp_path / "reference-chaindata")
    try:
        return "0x" + Chain(store, load_genesis(DEV_GENESIS)).genesis_hash.hex()
    finally:
        store.close()


# -- init --


def test_rule_init_prints_genesis_hash_and_is_idempotent(tmp_path):
    datadir = tmp_path / "data"
    first = cli("init", "--datadir", datadir, DEV_GENESIS)
    assert first.returncode == 0, first.stderr
    match = INIT_LINE.match(first.stdout.strip())
    assert match, first.stdout
    assert match.group(1) == dev_genesis_hash(tmp_path)
    assert (datadir / "chaindata" / "data.mdb").is_file()
    assert json.loads((datadir / "genesis.json").read_text()) == dev_genesis_doc()

    second = cli("init", "--datadir", datadir, DEV_GENESIS)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "Traceback" not in second.stderr


def test_rule_init_refuses_a_datadir_of_another_genesis(tmp_path):
    datadir = tmp_path / "data"
    first = cli("init", "--datadir", datadir, DEV_GENESIS)
    stored_hash = INIT_LINE.match(first.stdout.strip()).group(1)
    doc = dev_genesis_doc()
    doc["alloc"] = {"0x" + "11" * 20: {"balance": "0x1"}}
    other = write_genesis(tmp_path / "other.json", doc)

    line = assert_one_line_error(cli("init", "--datadir", datadir, other), stored_hash)
    assert "genesis" in line
    # The datadir's copy of its genesis is left as it was.
    assert json.loads((datadir / "genesis.json").read_text()) == dev_genesis_doc()


def _bad_json(path: Path) -> Path:
    path.write_text('{"config": {"chainId": 1337},')
    return path


def _doc_without_chain_id(path: Path) -> Path:
    doc = dev_genesis_doc()
    del doc["config"]["chainId"]
    return write_genesis(path, doc)


def _doc_with_long_extra_data(path: Path) -> Path:
    doc = dev_genesis_doc()
    doc["extraData"] = "0x" + "ab" * 33
    return write_genesis(path, doc)


def _doc_with_bad_alloc_address(path: Path) -> Path:
    doc = dev_genesis_doc()
    doc["alloc"]["0x1234"] = {"balance": "0x1"}
    return write_genesis(path, doc)


def _doc_with_bad_balance(path: Path) -> Path:
    doc = dev_genesis_doc()
    doc["alloc"]["0x" + "22" * 20] = {"balance": "lots"}
    return write_genesis(path, doc)


@pytest.mark.parametrize(
    "make, fragments",
    [
        (_bad_json, ("genesis.json: not valid JSON",)),
        (_doc_without_chain_id, ("config.chainId is required",)),
        (_doc_with_long_extra_data, ("extraData must be at most 32 bytes",)),
        (_doc_with_bad_alloc_address, ("alloc[0x1234]", "20 bytes")),
        (_doc_with_bad_balance, (f"alloc[0x{'22' * 20}].balance", "'lots'")),
        (lambda path: path, ("cannot read", "genesis.json")),  # no such file
    ],
    ids=["bad-json", "no-chain-id", "long-extra-data", "bad-alloc-address", "bad-balance", "missing-file"],
)
def test_rule_init_with_malformed_genesis_is_one_error_line_naming_the_field(tmp_path, make, fragments):
    genesis = make(tmp_path / "genesis.json")
    datadir = tmp_path / "data"
    result = cli("init", "--datadir", datadir, genesis)
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""
    assert not datadir.exists()  # nothing is created for a genesis that does not parse


# -- run: errors --


def test_rule_run_without_dev_is_one_clear_error_line(tmp_path):
    result = cli("run", "--datadir", tmp_path / "data", "--http.port", "0", "--ws.port", "0")
    assert_one_line_error(result, "--dev")
    assert result.stdout == ""


def test_rule_unknown_log_level_is_a_usage_error(tmp_path):
    result = cli("--log-level", "loud", "init", "--datadir", tmp_path / "data", DEV_GENESIS)
    assert result.returncode == 2
    assert "Invalid value for '--log-level'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_rule_run_with_http_port_in_use_is_one_error_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(
            "--log-level", "warning",  # quiet the INFO line of the genesis written into the fresh datadir
            "run", "--dev", "--datadir", tmp_path / "data", "--http.port", str(port), "--ws.port", "0",
        )
    assert_one_line_error(result, "cannot start: Address already in use")
    assert result.stdout == ""


# -- run --dev: a real node --


@dataclass
class Running:
    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    url: str

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rpc(self, method: str, *params: object) -> object:
        return rpc(self.url, method, *params)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def launch(tmp_path):
    """Start `ogpu-node [group args] run --dev ...` with stdout and stderr kept apart; wait for the URL."""
    started: list[subprocess.Popen] = []

    def start(*args: str | Path, group_args: tuple[str, ...] = (), env: dict | None = None) -> Running:
        n = len(started)
        out_path, err_path = tmp_path / f"run{n}.out", tmp_path / f"run{n}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                [*CLI, *group_args, "run", "--dev", "--http.port", "0", "--ws.port", "0", *map(str, args)],
                stdout=out, stderr=err, env=env or ENV, cwd=ROOT,
            )
        started.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = LISTEN.search(out_path.read_text(errors="replace"))
            if match:
                return Running(process, out_path, err_path, match.group(1))
            if process.poll() is not None:
                pytest.fail(f"node exited with {process.returncode}: {err_path.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"node printed no URL within 60 s: {err_path.read_text()}")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_rule_run_dev_prints_accounts_keys_and_url_and_serves_the_inited_chain(tmp_path, launch, dev_accounts):
    datadir = tmp_path / "data"
    init = cli("init", "--datadir", datadir, DEV_GENESIS)
    genesis_hash = INIT_LINE.match(init.stdout.strip()).group(1)

    node = launch("--datadir", datadir)
    out = node.stdout()
    lines = out.splitlines()
    accounts_at = lines.index("Available Accounts")
    keys_at = lines.index("Private Keys")
    assert lines[accounts_at + 2 : accounts_at + 12] == [
        f"({i}) {to_checksum_address(a.address)} (10000 oGPU)" for i, a in enumerate(dev_accounts)
    ]
    assert lines[keys_at + 2 : keys_at + 12] == [f"({i}) 0x{a.private_key.hex()}" for i, a in enumerate(dev_accounts)]
    assert "Mnemonic:          test test test test test test test test test test test junk" in lines
    assert "Chain ID:          1337" in lines
    assert f"Datadir:           {datadir}" in lines
    assert re.search(r"^WebSocket on  ws://127\.0\.0\.1:\d+$", out, re.M)

    # The URL printed is the node's, serving the chain that `init` wrote.
    assert node.rpc("eth_chainId") == "0x539"
    assert node.rpc("eth_getBlockByNumber", "0x0", False)["hash"] == genesis_hash
    assert node.rpc("eth_getBalance", "0x" + dev_accounts[9].address.hex(), "latest") == hex(TEN_THOUSAND_OGPU)

    assert node.stop() == 0
    # Keys go to stdout in the banner only; the log on stderr never carries one.
    err = node.stderr()
    assert all(a.private_key.hex() not in err for a in dev_accounts)
    assert sum(out.count(a.private_key.hex()) for a in dev_accounts) == 10


def test_rule_datadir_in_use_by_a_running_node_is_refused_with_one_line(tmp_path, launch):
    datadir = tmp_path / "data"
    node = launch("--datadir", datadir)
    in_use = f"{datadir / 'chaindata'} is in use by another process"
    assert_one_line_error(cli("init", "--datadir", datadir, DEV_GENESIS), in_use)
    second = cli("run", "--dev", "--datadir", datadir, "--http.port", "0", "--ws.port", "0")
    assert_one_line_error(second, in_use)
    assert second.stdout == ""
    # The running node is unaffected.
    assert node.rpc("eth_blockNumber") == "0x0"
    assert node.stop() == 0


def _send_malformed_http(url: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = b""
        while b"\r\n" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    return reply


@pytest.mark.parametrize("level, expect_debug", [("debug", True), ("info", False)])
def test_rule_log_level_option_sets_the_log_threshold(tmp_path, launch, level, expect_debug):
    node = launch("--datadir", tmp_path / "data", group_args=("--log-level", level))
    # The server logs a malformed request at DEBUG before it answers 400, so the line is written by now.
    assert _send_malformed_http(node.url).startswith(b"HTTP/1.1 400 ")
    assert node.stop() == 0
    err = node.stderr()
    debug_line = re.search(r"^\d\d:\d\d:\d\d DEBUG \S+ malformed HTTP request: ", err, re.M)
    assert (debug_line is not None) is expect_debug, err
    assert " INFO  ogpu.node node started head=0" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_rule_signal_stops_run_cleanly_with_exit_0(tmp_path, launch, sig):
    # Without --datadir the node uses a temporary datadir and removes it on exit.
    node = launch(env=dict(ENV, TMPDIR=str(tmp_path)))
    datadir = Path(re.search(r"^Datadir:\s+(\S+)$", node.stdout(), re.M).group(1))
    assert datadir.parent == tmp_path and datadir.name.startswith("ogpu-dev-")
    assert (datadir / "chaindata" / "data.mdb").is_file()
    assert node.rpc("eth_blockNumber") == "0x0"

    started = time.monotonic()
    assert node.stop(sig, timeout=10) == 0
    assert time.monotonic() - started < 5
    err = node.stderr()
    assert "Traceback" not in err
    assert "shutting down" in err
    assert not datadir.exists()


# -- help --


@pytest.mark.parametrize(
    "command, mentions",
    [
        ((), ("init", "run", "account", "--log-level", "--version")),
        (("init",), ("GENESIS_FILE", "--datadir")),
        (("run",), ("--dev", "--datadir", "--genesis", "--block-time", "--http.addr", "--http.port", "--ws.port")),
        (("account",), ("new", "list", "import")),
        (("account", "new"), ("--datadir", "--password-file")),
        (("account", "list"), ("--datadir",)),
        (("account", "import"), ("--datadir", "--password-file")),
    ],
    ids=["ogpu-node", "init", "run", "account", "account-new", "account-list", "account-import"],
)
def test_rule_help_of_each_command(command, mentions):
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: ogpu-node {' '.join(command)}".rstrip() + " ")
    for mention in mentions:
        assert mention in result.stdout, (mention, result.stdout)
    assert result.stderr == ""
