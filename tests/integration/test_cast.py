"""Foundry's `cast` against a real `ogpu-node run --dev`: what its users see, unchanged.

cast (the version `make test` installs into .tools/) runs as a subprocess with a deadline, in an empty
working directory and without ETH_* / FOUNDRY_* variables, so no foundry.toml or environment default
can stand in for the flags given here. The checks: chain id, block number and balance; `cast send`
of Stake.stake() with value signed by a dev key, read back with `cast call` of stakeOf; the revert
reason in the output of a reverting `cast call` and of a `cast send` refused at gas estimation (no
transaction sent), and a forced send mined with status 0; `cast receipt` and `cast tx`; `cast logs`
by event signature and by indexed argument; and a log of the start-of-block system call, under its
synthetic transaction hash (docs/protocol.md), through `cast logs`, `cast receipt` and
`cast rpc eth_getLogs`.

cast missing is a failure, not a skip: `make test` installs it. The tests run the platform binary behind
the npm wrapper at .tools/node_modules/.bin/cast, whose own exit status is always 0 (see `cast_bin`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from txfactory import CHAIN_ID

from ogpu_node.contracts import addresses
from ogpu_node.types.protocol import CancelReason

ROOT = Path(__file__).resolve().parents[2]
CAST = ROOT / ".tools" / "node_modules" / ".bin" / "cast"
CAST_TIMEOUT_S = 60
STAKE, TASK, BID = ("0x" + a.hex() for a in (addresses.STAKE, addresses.TASK, addresses.BID))
OGPU = 10**18
STAKE_OF = "stakeOf(address)(uint256,uint256,uint256,uint64,uint8)"
STAKED_SIG = "Staked(address indexed account, uint256 amount, uint256 total)"
STAKED_TOPIC = "0x" + keccak(b"Staked(address,uint256,uint256)").hex()
TASK_CANCELLED_SIG = "TaskCancelled(uint256 indexed taskId, uint8 reason, uint256 refund)"
BIDS_CLOSED_TOPIC = "0x" + keccak(b"BidsClosed(uint256,uint256)").hex()
FREE_STAKE_REASON = "Stake.requestUnstake: amount exceeds free stake"
ERROR_DATA = "0x" + (keccak(b"Error(string)")[:4] + encode(["string"], [FREE_STAKE_REASON])).hex()
SUBMIT_TASK = (
    "submitTask(bytes32,uint8,(uint256,uint16,uint16,uint16,uint64,uint64,uint16,uint16,uint32,uint64,"
    "uint8,uint16,uint8,uint64,uint8,bytes32))"
)


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETH_", "FOUNDRY_"))}
    local = "127.0.0.1,localhost"
    env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, [env.get("NO_PROXY"), local]))
    env["HOME"] = str(workdir)  # no ~/.foundry config either
    return env


def _native_cast() -> Path | None:
    """The platform binary the npm wrapper would start (its selectBinaryPath), or None."""
    packages = CAST.resolve().parent.parent  # .tools/node_modules/@foundry-rs
    candidates = sorted(packages.glob("cast-*/bin/cast")) + [packages / "dist" / "cast"]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def cast_bin(tmp_path_factory) -> Path:
    """The cast that `make test` installs; absent or broken fails every test here, with the fix.

    .tools/node_modules/.bin/cast is @foundry-rs/cast's node wrapper, which spawns the platform binary
    and exits 0 whatever the binary's exit status (1.7.1's bin.mjs never passes the child's code on), so
    the tests run the binary it resolves directly: a failing command must exit nonzero.
    """
    if not CAST.exists():
        pytest.fail(
            f"Foundry's cast is not installed at {CAST.relative_to(ROOT)}: run `make test`, which installs "
            "it into .tools/ (npm @foundry-rs/cast)", pytrace=False,
        )
    binary = _native_cast()
    if binary is None:
        pytest.fail(
            f"{CAST.relative_to(ROOT)} is there but not the platform binary it starts "
            "(.tools/node_modules/@foundry-rs/cast-<platform>/bin/cast): `make clean && make test` reinstalls "
            "cast into .tools/", pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("cast-probe")
    try:
        probe = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=CAST_TIMEOUT_S,
            cwd=workdir, env=_environment(workdir),
        )
    except OSError as exc:
        pytest.fail(f"cannot run {binary} ({exc}): `make test` installs cast into .tools/", pytrace=False)
    if probe.returncode != 0 or "cast" not in probe.stdout.lower():
        pytest.fail(
            f"{binary} --version failed (exit {probe.returncode}): {probe.stdout}{probe.stderr}\n"
            "`make test` installs cast into .tools/", pytrace=False,
        )
    return binary


class Cast:
    def __init__(self, binary: Path, url: str, workdir: Path) -> None:
        self.binary = binary
        self.url = url
        self.workdir = workdir
        self.env = _environment(workdir)

    def run(self, *args: str, rpc: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args, *(["--rpc-url", self.url] if rpc else [])]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=CAST_TIMEOUT_S,
                                  cwd=self.workdir, env=self.env)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"cast {' '.join(args)} did not finish within {CAST_TIMEOUT_S}s: {exc.stdout}{exc.stderr}")

    def ok(self, *args: str, rpc: bool = True) -> str:
        result = self.run(*args, rpc=rpc)
        assert result.returncode == 0, f"cast {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        return result.stdout.strip()

    def fails(self, *args: str) -> str:
        """stdout + stderr of a command that must exit nonzero."""
        result = self.run(*args)
        assert result.returncode != 0, f"cast {' '.join(args)} succeeded:\n{result.stdout}"
        return result.stdout + result.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def send(self, key: Any, to: str, *call: str, value: str | None = None) -> dict[str, Any]:
        """A mined transaction's receipt (cast send waits for it); `call` is a signature and its arguments,
        or nothing for a plain transfer."""
        options = ["--value", value] if value is not None else []
        return self.json("send", to, *call, *options, "--private-key", private_key(key))

    def block_number(self) -> int:
        return int(self.ok("block-number"))

    def nonce(self, account: Any) -> int:
        return int(self.ok("nonce", address(account)))

    def balance(self, account: Any) -> int:
        return int(self.ok("balance", address(account)))

    def stake_of(self, account: Any) -> list[int]:
        # one value per line, uint256s as "5000000000000000000 [5e18]"
        return [int(line.split()[0]) for line in self.ok("call", STAKE, STAKE_OF, address(account)).splitlines()]


def address(account: Any) -> str:
    return to_checksum_address(account.address)


def private_key(account: Any) -> str:
    return "0x" + bytes(account.private_key).hex()


def word(value: int | bytes) -> str:
    raw = value.rjust(32, b"\x00") if isinstance(value, bytes) else value.to_bytes(32, "big")
    return "0x" + raw.hex()


@pytest.fixture
def cast(cast_bin, dev_node, tmp_path) -> Cast:
    workdir = tmp_path / "cast-cwd"
    workdir.mkdir()
    return Cast(cast_bin, dev_node.http_url, workdir)


def test_chain_id_block_number_and_balance(cast, dev_accounts):
    assert cast.ok("chain-id") == str(CHAIN_ID)
    assert cast.block_number() == 0
    for account in dev_accounts[:3]:
        assert cast.balance(account) == 10_000 * OGPU
    assert cast.ok("balance", "--ether", address(dev_accounts[0])).startswith("10000")
    assert int(cast.ok("rpc", "eth_chainId").strip('"'), 16) == CHAIN_ID


def test_send_stake_with_value_and_read_stake_of(cast, dev_accounts):
    staker = dev_accounts[1]
    before = cast.balance(staker)
    receipt = cast.send(staker, STAKE, "stake()", value="5ether")
    assert receipt["status"] == "0x1", receipt
    assert (receipt["from"], receipt["to"]) == (address(staker).lower(), STAKE)
    [log] = receipt["logs"]
    assert log["address"] == STAKE
    assert log["topics"] == [STAKED_TOPIC, word(staker.address)]
    assert decode(["uint256", "uint256"], bytes.fromhex(log["data"][2:])) == (5 * OGPU, 5 * OGPU)
    fee = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
    assert cast.balance(staker) == before - 5 * OGPU - fee
    assert cast.block_number() == int(receipt["blockNumber"], 16) == 1
    # staked, locked, unbonding, releaseTime, roles
    assert cast.stake_of(staker) == [5 * OGPU, 0, 0, 0, 0]
    again = cast.send(staker, STAKE, "stake()", value="2.5ether")
    assert again["status"] == "0x1"
    assert decode(["uint256", "uint256"], bytes.fromhex(again["logs"][0]["data"][2:])) == (25 * OGPU // 10, 75 * OGPU // 10)
    assert cast.stake_of(staker) == [75 * OGPU // 10, 0, 0, 0, 0]
    assert cast.ok("call", STAKE, "totalStaked()(uint256)").split()[0] == str(75 * OGPU // 10)


def test_call_of_a_reverting_function_shows_the_reason(cast, dev_accounts):
    account = dev_accounts[2]
    output = cast.fails("call", STAKE, "requestUnstake(uint256)", "1", "--from", address(account))
    assert f"execution reverted: {FREE_STAKE_REASON}" in output, output
    assert ERROR_DATA in output, output  # the Error(string) data as geth returns it
    cast.send(account, STAKE, "stake()", value="1ether")
    output = cast.fails("call", STAKE, "requestUnstake(uint256)", "1000000000000000001", "--from", address(account))
    assert f"execution reverted: {FREE_STAKE_REASON}" in output, output
    # within the free stake the same call succeeds (and changes nothing: it is a call)
    assert cast.ok("call", STAKE, "requestUnstake(uint256)", "1ether", "--from", address(account)) == "0x"
    assert cast.stake_of(account) == [OGPU, 0, 0, 0, 0]


def test_send_of_a_reverting_transaction_fails_at_estimation(cast, dev_accounts):
    account = dev_accounts[3]
    cast.send(account, STAKE, "stake()", value="1ether")
    nonce, height = cast.nonce(account), cast.block_number()
    output = cast.fails("send", STAKE, "requestUnstake(uint256)", "2ether", "--private-key", private_key(account))
    assert "estimate gas" in output.lower(), output
    assert f"execution reverted: {FREE_STAKE_REASON}" in output, output
    assert (cast.nonce(account), cast.block_number()) == (nonce, height)  # nothing was sent
    # With the gas given, estimation is skipped: the transaction is mined and reverts on chain.
    forced = cast.run("send", STAKE, "requestUnstake(uint256)", "2ether", "--gas-limit", "200000",
                      "--private-key", private_key(account), "--json")
    receipt = json.loads(forced.stdout)
    assert receipt["status"] == "0x0", receipt
    assert receipt["logs"] == []
    assert cast.nonce(account) == nonce + 1
    assert cast.stake_of(account) == [OGPU, 0, 0, 0, 0]
    shown = cast.ok("receipt", receipt["transactionHash"])
    assert FREE_STAKE_REASON in shown, shown  # cast replays the call for the receipt's revertReason


def test_receipt_and_tx_of_a_transaction(cast, dev_accounts):
    account = dev_accounts[4]
    tx_hash = cast.ok("send", STAKE, "stake()", "--value", "3ether", "--private-key", private_key(account), "--async")
    assert tx_hash.startswith("0x") and len(tx_hash) == 66, tx_hash
    receipt = cast.json("receipt", tx_hash)  # waits for the transaction to be mined
    raw = json.loads(cast.ok("rpc", "eth_getTransactionReceipt", tx_hash))
    for field in ("transactionHash", "blockHash", "blockNumber", "transactionIndex", "from", "to", "status",
                  "gasUsed", "cumulativeGasUsed", "effectiveGasPrice", "logs", "logsBloom", "type"):
        assert receipt[field] == raw[field], field
    assert (receipt["transactionHash"], receipt["status"], receipt["to"]) == (tx_hash, "0x1", STAKE)
    assert receipt["logs"][0]["transactionHash"] == tx_hash
    assert cast.ok("receipt", tx_hash, "blockNumber") == str(int(receipt["blockNumber"], 16))
    assert cast.ok("receipt", tx_hash, "gasUsed") == str(int(receipt["gasUsed"], 16))
    tx = cast.json("tx", tx_hash)
    assert (tx["hash"], tx["from"], tx["to"]) == (tx_hash, address(account).lower(), STAKE)
    assert int(tx["value"], 16) == 3 * OGPU
    assert tx["input"] == "0x" + keccak(b"stake()")[:4].hex()
    assert int(tx["chainId"], 16) == CHAIN_ID
    assert cast.ok("tx", tx_hash, "nonce") == "0"


def test_logs_by_event_signature(cast, dev_accounts):
    first, second = dev_accounts[5], dev_accounts[6]
    sent = [cast.send(first, STAKE, "stake()", value="3ether"), cast.send(second, STAKE, "stake()", value="4ether")]
    assert cast.ok("sig-event", "Staked(address indexed account, uint256 amount, uint256 total)", rpc=False) == STAKED_TOPIC
    logs = cast.json("logs", STAKED_SIG, "--address", STAKE, "--from-block", "0", "--to-block", "latest")
    assert [log["transactionHash"] for log in logs] == [r["transactionHash"] for r in sent]
    for log, account, amount in zip(logs, (first, second), (3 * OGPU, 4 * OGPU), strict=True):
        assert log["address"] == STAKE
        assert log["topics"] == [STAKED_TOPIC, word(account.address)]
        assert decode(["uint256", "uint256"], bytes.fromhex(log["data"][2:])) == (amount, amount)
        assert log["removed"] is False
    # by the indexed argument, and by the raw topic
    [only] = cast.json("logs", STAKED_SIG, address(second), "--from-block", "0")
    assert only == logs[1]
    assert cast.json("logs", STAKED_TOPIC, word(first.address), "--from-block", "0") == [logs[0]]
    assert cast.json("logs", STAKED_SIG, address(dev_accounts[7]), "--from-block", "0") == []


def test_system_call_log_through_cast(cast, dev_accounts):
    """A batch task with a 1 s bid window and no bid: the first block at its deadline cancels it in the
    start-of-block system call. Every block seals at max(now, parent + 1), so one transaction after the
    submission is enough; a few are allowed."""
    client = dev_accounts[8]
    terms = f"({OGPU},1,0,1,60,1,1,1,0,60,0,0,0,0,0,0x{bytes(32).hex()})"
    submitted = cast.send(client, TASK, SUBMIT_TASK, word(keccak(b"cast prescription")), "0", terms, value="1.1ether")
    assert submitted["status"] == "0x1", submitted
    logs: list[Any] = []
    for _ in range(5):
        cast.send(dev_accounts[9], address(dev_accounts[9]), value="1")
        logs = cast.json("logs", TASK_CANCELLED_SIG, word(1), "--address", TASK, "--from-block", "0")
        if logs:
            break
    [cancelled] = logs
    number = int(cancelled["blockNumber"], 16)
    synthetic = "0x" + keccak(b"ogpu-system" + bytes.fromhex(cancelled["blockHash"][2:])).hex()
    assert cancelled["transactionHash"] == synthetic
    assert decode(["uint8", "uint256"], bytes.fromhex(cancelled["data"][2:])) == (CancelReason.TOO_FEW_BIDS, 11 * OGPU // 10)
    tx_count = int(json.loads(cast.ok("rpc", "eth_getBlockTransactionCountByNumber", hex(number))), 16)
    assert int(cancelled["transactionIndex"], 16) == tx_count  # after the block's real transactions
    # first in the block's log order: BidsClosed (count 0), then TaskCancelled
    receipt = cast.json("receipt", synthetic)
    assert (receipt["status"], receipt["gasUsed"], receipt["transactionHash"]) == ("0x1", "0x0", synthetic)
    assert [log["topics"][0] for log in receipt["logs"]] == [BIDS_CLOSED_TOPIC, cancelled["topics"][0]]
    assert [log["address"] for log in receipt["logs"]] == [BID, TASK]
    assert [int(log["logIndex"], 16) for log in receipt["logs"]] == [0, 1]
    assert receipt["logs"][1] == cancelled
    raw = json.loads(cast.ok("rpc", "eth_getLogs", json.dumps({"fromBlock": hex(number), "toBlock": hex(number)})))
    assert raw[: len(receipt["logs"])] == receipt["logs"]
    assert json.loads(cast.ok("rpc", "eth_getTransactionByHash", synthetic)) is None
    assert f"tx not found: {synthetic}" in cast.run("tx", synthetic).stderr
