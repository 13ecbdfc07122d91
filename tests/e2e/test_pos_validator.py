"""A real `ogpu-node run --genesis --keystore --password-file` (not --dev) validating a one-validator
proof-of-stake genesis (issue 11, must show): a block each slot, `finalized` moves past genesis and
`ogpu_finality` agrees, a transaction is mined, and after SIGKILL and a restart finalization goes on
from where it was (the finalized block never goes back)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e.cli_run import CLI, ENV, ROOT, assert_one_line_error, cli
from txfactory import sign_tx

from ogpu_node.crypto.keystore import LIGHT_SCRYPT_N, create_account, load_private_key
from tests.rpccall import rpc

CHAIN_ID = 4_242
SLOT_TIME = 1
SLOTS_PER_EPOCH = 4
RANDAO_LENGTH = 256
PASSWORD = "correct horse"
LISTEN = re.compile(r"^Listening on (http://127\.0\.0\.1:\d+)$", re.M)


class Node:
    def __init__(self, tmp_path: Path, run: int, *args: str | Path) -> None:
        self.out_path, self.err_path = tmp_path / f"run{run}.out", tmp_path / f"run{run}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen([*CLI, "run", "--http.port", "0", "--no-ws", "--port", "0", *map(str, args)],
                                            stdout=out, stderr=err, env=ENV, cwd=ROOT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            match = LISTEN.search(self.out_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return
            if self.process.poll() is not None:
                pytest.fail(f"node exited with {self.process.returncode}: {self.err_path.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"node printed no URL within 90 s: {self.err_path.read_text()}")

    def rpc(self, method: str, *params: object) -> object:
        return rpc(self.url, method, *params)

    def finalized_number(self) -> int:
        return int(self.rpc("eth_getBlockByNumber", "finalized", False)["number"], 16)

    def wait_for(self, what: str, done, timeout: float = 90) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = done()
            if value:
                return value
            assert self.process.poll() is None, self.err_path.read_text()
            time.sleep(0.25)
        pytest.fail(f"{what} within {timeout} s; node log:\n{self.err_path.read_text()[-3000:]}")


@pytest.fixture
def nodes(tmp_path):
    started: list[Node] = []

    def start(*args: str | Path) -> Node:
        node = Node(tmp_path, len(started), *args)
        started.append(node)
        return node

    yield start
    for node in started:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=30)


def _validator(tmp_path: Path) -> tuple[Path, Path, bytes, str]:
    keystore = tmp_path / "keystore"
    address, _ = create_account(keystore, PASSWORD, kdf_iterations=LIGHT_SCRYPT_N)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    result = cli("validator", "randao-tip", "--keystore", keystore, "--password-file", password_file,
                 "--length", str(RANDAO_LENGTH))
    assert result.returncode == 0, result.stderr
    tip = result.stdout.strip()
    assert re.fullmatch(r"0x[0-9a-f]{64}", tip), result.stdout
    return keystore, password_file, address, tip


def _genesis(path: Path, address: bytes, tip: str, genesis_time: int) -> Path:
    doc = {
        "config": {"chainId": CHAIN_ID},
        "alloc": {"0x" + address.hex(): {"balance": hex(10**24)}},
        "consensus": {
            "genesisTime": genesis_time, "slotTime": SLOT_TIME, "slotsPerEpoch": SLOTS_PER_EPOCH,
            "randaoLength": RANDAO_LENGTH,
            "validators": [{"address": "0x" + address.hex(), "stake": hex(1_000 * 10**18), "randaoTip": tip}],
        },
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.timeout(300)
def test_validator_node_proposes_finalizes_mines_and_keeps_finalizing_after_sigkill(tmp_path, nodes):
    keystore, password_file, address, tip = _validator(tmp_path)
    genesis_time = int(time.time()) + 2
    genesis = _genesis(tmp_path / "genesis.json", address, tip, genesis_time)
    datadir = tmp_path / "data"
    init = cli("init", "--datadir", datadir, genesis)
    assert init.returncode == 0, init.stderr
    flags = ("--datadir", datadir, "--genesis", genesis, "--keystore", keystore, "--password-file", password_file)

    node = nodes(*flags)
    assert f"role:              validator 0x{address.hex()}" in node.out_path.read_text().lower()
    # Blocks come one per slot: consecutive blocks' timestamps are slot starts, one slot or more apart.
    node.wait_for("three blocks", lambda: int(node.rpc("eth_blockNumber"), 16) >= 3)
    stamps = [int(node.rpc("eth_getBlockByNumber", hex(n), False)["timestamp"], 16) for n in (1, 2, 3)]
    assert all((s - genesis_time) % SLOT_TIME == 0 for s in stamps)
    assert stamps[0] < stamps[1] < stamps[2]
    miners = {node.rpc("eth_getBlockByNumber", hex(n), False)["miner"] for n in (1, 2, 3)}
    assert miners == {"0x" + address.hex()}

    # A transfer sent to the validator is mined in a slot's block.
    key = load_private_key(keystore, address, PASSWORD)
    raw = sign_tx(key, 0, to=b"\x22" * 20, value=12345, chain_id=CHAIN_ID).raw
    tx_hash = node.rpc("eth_sendRawTransaction", "0x" + raw.hex())
    receipt = node.wait_for("the transfer's receipt", lambda: node.rpc("eth_getTransactionReceipt", tx_hash), 30)
    assert receipt["status"] == "0x1"
    assert node.rpc("eth_getBalance", "0x" + "22" * 20, "latest") == hex(12345)

    # Epochs 0 and 1 end unprocessed: the first finalized checkpoint is epoch 2's, at epoch 4's start.
    node.wait_for("a finalized block past genesis", lambda: node.finalized_number() > 0)
    finality = node.rpc("ogpu_finality")
    finalized_block = node.rpc("eth_getBlockByNumber", "finalized", False)
    if finality["finalized"]["root"] != finalized_block["hash"]:  # a slot passed between the two calls
        finality = node.rpc("ogpu_finality")
        finalized_block = node.rpc("eth_getBlockByNumber", "finalized", False)
    assert finality["finalized"]["root"] == finalized_block["hash"]
    assert int(finality["finalized"]["epoch"], 16) >= 2
    assert int(finality["justified"]["epoch"], 16) > int(finality["finalized"]["epoch"], 16)
    safe = int(node.rpc("eth_getBlockByNumber", "safe", False)["number"], 16)
    assert safe >= int(finalized_block["number"], 16)

    before_kill = node.finalized_number()
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=30)

    restarted = nodes(*flags)
    assert restarted.finalized_number() >= before_kill  # rebuilt from the stored consensus records
    assert restarted.rpc("eth_getTransactionReceipt", tx_hash)["status"] == "0x1"
    restarted.wait_for("finalization past the finalized block before the kill",
                       lambda: restarted.finalized_number() > before_kill, timeout=120)
    finality = restarted.rpc("ogpu_finality")
    assert int(finality["finalized"]["epoch"], 16) > 0
    assert "0x" + address.hex() in {v["address"] for v in restarted.rpc("ogpu_validators")}
    for text in (restarted.out_path.read_text(), restarted.err_path.read_text(), node.err_path.read_text()):
        assert key.hex() not in text  # the key is never logged


@pytest.mark.timeout(120)
def test_run_takes_a_keystore_that_may_join_later_and_says_it_has_no_duties_yet(tmp_path, nodes):
    """A key outside the genesis validators joins through Stake later (docs/consensus.md): the node
    runs, validating once Stake activates it, and says so."""
    _, _, address, tip = _validator(tmp_path)
    genesis = _genesis(tmp_path / "genesis.json", address, tip, int(time.time()))
    other = tmp_path / "other-keystore"
    create_account(other, PASSWORD, kdf_iterations=LIGHT_SCRYPT_N)
    node = nodes("--datadir", tmp_path / "data", "--genesis", genesis, "--keystore", other,
                 "--password-file", tmp_path / "password")
    assert node.rpc("eth_chainId") == hex(CHAIN_ID)
    assert "is not a registered validator" in node.err_path.read_text()


def test_run_dev_refuses_a_proof_of_stake_genesis(tmp_path):
    _, _, address, tip = _validator(tmp_path)
    genesis = _genesis(tmp_path / "genesis.json", address, tip, int(time.time()))
    result = cli("run", "--dev", "--genesis", genesis, "--http.port", "0", "--no-ws")
    assert_one_line_error(result, "consensus section", "without --dev")


def test_init_refuses_a_datadir_of_another_consensus_section(tmp_path):
    _, _, address, tip = _validator(tmp_path)
    datadir = tmp_path / "data"
    first = _genesis(tmp_path / "genesis.json", address, tip, 1_800_000_000)
    assert cli("init", "--datadir", datadir, first).returncode == 0
    second = _genesis(tmp_path / "later.json", address, tip, 1_800_000_060)  # same genesis hash, other clock
    assert_one_line_error(cli("init", "--datadir", datadir, second), "another consensus section")
    assert json.loads((datadir / "genesis.json").read_text())["consensus"]["genesisTime"] == 1_800_000_000
