"""A batch task trained on the network with real processes: one `ogpu-node run --dev --block-time 1`,
four `ogpu-node provider run` processes and the client CLI (DESIGN.md §6, issue 5 "Must show").

Honest run: the lowest bidder trains, the other three sit on every council, all checkpoints are
accepted, the result equals an independent local training with the chain's seed, and every balance
changes by exactly what the protocol prescribes once each account's gas is subtracted.
Dishonest run (issue 15): the lowest bidder bids 1 wei and trains with another data order
(`--fault reorder-data`); the council rejects checkpoint 1, the cheater loses its collateral floor,
which pays each rejecting member its verification fee and the reporter share of the rest; nobody who
is left never sat on the council, so the task is cancelled and the client refunded in full.
Restart: the executor is SIGKILLed after its first commit and started again on its datadir; it
finishes the task and nobody is slashed. Allclose: members commit before the executor reveals, then
judge each other; accepted; a member that votes without computing (`--council-fault lazy`) is found
out by the other two and loses its seat stake at every checkpoint.
Windows are several times a segment's time measured on this machine."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from e2e.cli_run import CLI, ENV, ROOT, cli
from safetensors.numpy import save_file
from web3 import Web3

from ogpu_node.apps.provider.chain import ChainClient, Event
from ogpu_node.compute import spec_from_prescription, train_segment_in_profile
from ogpu_node.config import DEV_GENESIS
from ogpu_node.crypto import Keypair, derive_dev_accounts
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, training_seed
from ogpu_node.types.protocol import BPS, TaskState

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GENESIS = json.loads((DEV_GENESIS).read_text())["config"]["ogpu"]
MIN_PROVIDER_STAKE = int(GENESIS["minProviderStake"], 16)
TASK_ID = re.compile(r"^Task ID: (\d+)$", re.M)
K = 3
COUNCIL_SHARE_BPS = 1000


@dataclass
class ProviderProcess:
    process: subprocess.Popen
    log_path: Path
    address: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_provider(url: str, key: bytes, datadir: Path, *extra: str, log_name: str | None = None) -> ProviderProcess:
    log_path = datadir.with_suffix(".log") if log_name is None else datadir.parent / log_name
    cmd = [*CLI, "provider", "run", "--rpc-url", url, "--private-key", "0x" + key.hex(), "--datadir", str(datadir),
           *extra]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    return ProviderProcess(process, log_path, Web3.to_checksum_address(Keypair.from_private_key(key).address))


def wait_for(what: str, predicate, timeout: float, providers=(), poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in providers:
            assert p.process.poll() is None, f"provider {p.address} exited:\n{p.log()}"
        time.sleep(poll)
    logs = "\n".join(f"--- {p.address}\n{p.log()[-4000:]}" for p in providers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def make_dataset(path: Path) -> Path:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1)).astype(np.int64)  # learnable: the loss must fall
    save_file({"features": x, "labels": y}, str(path))
    return path


def prescription_doc(steps: int, segment_window_s: int) -> dict:
    return {
        "kind": "batch",
        "D": {"blob": "0x" + "00" * 32, "format": "tensors"},
        "M": {"family": "mlp", "hparams": {"in_dim": 16, "out_dim": 3, "hidden": [64, 64]}},
        "I": {
            "steps": steps, "checkpoints": K, "segment_window_s": segment_window_s, "batch_size": 32,
            "optimizer": {"name": "adam", "lr": 0.003}, "seed": 11,
            "hardware": {"min_memory_mib": 256, "devices": ["cpu"]}, "numeric_profile": "cpu-avx2-1t",
            "max_payment": str(3 * 10**18), "council_size": 3, "confirm_window_s": 3600,
        },
        "f": {"kind": "per-checkpoint", "council_share_bps": COUNCIL_SHARE_BPS, "lateness_bps_per_second": 0},
        "e": {"kind": "exact"},
        "H": {"bid_window_s": 120, "first_n": 4, "min_bids": 4},
    }


def sized_prescription(tmp_path: Path, data: Path, **changes: dict) -> tuple[Path, Prescription]:
    """Windows several times a segment's time measured here, with the machine as loaded as it is.
    ``changes`` replace top-level sections' fields (e.g. ``e={...}``, ``I={"numeric_profile": None}``)."""
    steps = 300 * K
    doc = prescription_doc(steps, 60)
    doc["D"]["blob"] = "0x" + merkle_root(data.read_bytes()).hex()
    for section, fields in changes.items():
        doc[section] = {k: v for k, v in {**doc[section], **fields}.items() if v is not None}
    p = Prescription.from_json(doc)
    started = time.perf_counter()
    train_segment_in_profile("cpu-avx2-1t", spec_from_prescription(p, data.read_bytes(), 1), None, steps // K)
    segment_s = time.perf_counter() - started  # includes the worker's start-up: an upper bound
    doc["I"]["segment_window_s"] = max(60, int(10 * segment_s))
    path = tmp_path / "prescription.json"
    path.write_text(json.dumps(doc))
    return path, Prescription.from_json(doc)


def gas_paid(w3: Web3, address: str, first_block: int, last_block: int | None = None) -> int:
    """What ``address`` paid for gas in blocks first_block..last_block (default: the head)."""
    total = 0
    for number in range(first_block, (w3.eth.block_number if last_block is None else last_block) + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"] == address:
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                total += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return total


@pytest.fixture
def network(node_factory, tmp_path):
    """A dev node; provider keys are dev accounts 1-4, the client is account 5."""
    node = node_factory("--block-time", "1")
    w3 = Web3(Web3.HTTPProvider(node.http_url, request_kwargs={"timeout": 30}))
    accounts = derive_dev_accounts(6)
    started: list[ProviderProcess] = []

    def start(index: int, *extra: str, log_name: str | None = None) -> ProviderProcess:
        p = start_provider(node.http_url, accounts[index].private_key, tmp_path / f"provider{index}", *extra,
                           log_name=log_name)
        started.append(p)
        return p

    yield node, w3, accounts, start, started
    stop_providers(started)


def stop_providers(started: list[ProviderProcess]) -> None:
    """SIGTERM every provider still running, then wait for each (killed after 30 s)."""
    for p in started:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.process.kill()
            p.process.wait()


def start_four(w3, start, cheap_extra=(), second_extra=()) -> tuple[int, list[ProviderProcess]]:
    """Provider 1 is the cheapest (it wins the auction); all four must be registered before the submit."""
    first_block = w3.eth.block_number + 1
    providers = [start(1, "--cost-per-second", str(10**14), *cheap_extra)]
    providers += [start(i, "--cost-per-second", str(10**15), *(second_extra if i == 2 else ())) for i in (2, 3, 4)]
    wait_for("four registered providers", lambda: all("watching tasks" in p.log() for p in providers), 180, providers)
    return first_block, providers


def submit(tmp_path, node, accounts, data, prescription_path) -> int:
    result = cli("task", "submit", prescription_path, "--data", data, "--rpc-url", node.http_url,
                 "--private-key", "0x" + accounts[5].private_key.hex(), timeout=120)
    assert result.returncode == 0, result.stderr
    return int(TASK_ID.search(result.stdout).group(1))


def chain_views(url: str) -> ChainClient:
    """The chain as the provider app reads it: typed records, events decoded (system-call logs too)."""
    return ChainClient(url, derive_dev_accounts(1)[0].private_key)


def task_events(url: str, task_id: int) -> list[Event]:
    """Task's events of one task, decoded as the provider app decodes them."""
    chain = chain_views(url)
    return [e for e in chain.task_events(0, chain.head()) if e.args.get("taskId") == task_id]


@dataclass
class Run:
    """Four providers registered, one task submitted; what each test then checks."""

    w3: Web3
    node: object
    p: Prescription
    data: Path
    first_block: int
    providers: list[ProviderProcess]
    client: str
    before: dict[str, int]
    task_id: int
    chain: ChainClient

    @property
    def addresses(self) -> list[str]:
        return [provider.address for provider in self.providers]

    def state(self) -> str:
        return TaskState(self.chain.task_record(self.task_id).state).label

    def wait_until_decided(self, providers: list[ProviderProcess] | None = None) -> list:
        """Wait for the task to await confirmation or be cancelled; its events."""
        wait_for("the task to be decided", lambda: self.state() in ("AwaitingConfirmation", "Cancelled"), 420,
                 self.providers if providers is None else providers)
        return task_events(self.node.http_url, self.task_id)

    def balance_changes(self) -> dict[str, int]:
        """Each account's balance change since before the providers started, its gas added back."""
        return {a: self.w3.eth.get_balance(a) - self.before[a] + gas_paid(self.w3, a, self.first_block)
                for a in self.before}


def launch(network, tmp_path: Path, cheap_extra: tuple[str, ...] = (), second_extra: tuple[str, ...] = (),
           **changes: dict) -> Run:
    node, w3, accounts, start, _ = network
    data = make_dataset(tmp_path / "data.safetensors")
    prescription_path, p = sized_prescription(tmp_path, data, **changes)
    first_block, providers = start_four(w3, start, cheap_extra, second_extra)
    client = Web3.to_checksum_address(accounts[5].address)
    before = {a: w3.eth.get_balance(a, first_block - 1) for a in [*(pr.address for pr in providers), client]}
    task_id = submit(tmp_path, node, accounts, data, prescription_path)
    return Run(w3, node, p, data, first_block, providers, client, before, task_id, chain_views(node.http_url))


def test_batch_task_trained_verified_and_paid_exactly(network, tmp_path):
    run = launch(network, tmp_path)
    node, accounts = network[0], network[2]
    events = run.wait_until_decided()
    assert run.state() == "AwaitingConfirmation", [(e.name, e.args) for e in events]
    task_id = run.task_id

    status = cli("task", "status", str(task_id), "--rpc-url", node.http_url)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" accepted (executor ") == K, status.stdout  # each checkpoint's verdict
    assert "no loss data" not in status.stdout and "(checkpoint; * accepted" in status.stdout, status.stdout
    out = tmp_path / "model.safetensors"
    result = cli("task", "result", str(task_id), "--out", out, "--checkpoint", tmp_path / "final.ckpt",
                 "--rpc-url", node.http_url)
    assert result.returncode == 0, result.stderr
    confirmed = cli("task", "confirm", str(task_id), "--rpc-url", node.http_url,
                    "--private-key", "0x" + accounts[5].private_key.hex())
    assert confirmed.returncode == 0, confirmed.stderr
    assert run.state() == "Settled"

    # The result is what an independent local training with the chain's seed gives.
    record = run.chain.task_record(task_id)
    executor, price, seed = record.executor, record.price, record.seed
    assert executor == run.providers[0].address
    final_hash = bytes(run.chain.checkpoint(task_id, K).checkpoint_hash)
    p = run.p
    local = train_segment_in_profile("cpu-avx2-1t", spec_from_prescription(p, run.data.read_bytes(), training_seed(p, bytes(seed))),
                                     None, p.I.steps)
    assert merkle_root(local.checkpoint) == final_hash == merkle_root((tmp_path / "final.ckpt").read_bytes())
    assert local.losses[-1] < local.losses[0]

    names = [e.name for e in task_events(node.http_url, task_id)]
    assert names.count("CheckpointAccepted") == K and "CheckpointRejected" not in names

    for a in run.addresses:
        assert run.chain.stake_of(a).staked == MIN_PROVIDER_STAKE  # nobody was slashed
    assert run.balance_changes() == honest_payments(price, executor, run.addresses, run.client)


def honest_payments(price: int, executor: str, providers: list[str], client: str) -> dict[str, int]:
    """Each account's balance change once an honest task of K accepted checkpoints is confirmed (gas
    added back): the parts of the price, the council share to the three members, the client's refund of
    the rest, and each provider's stake at the minimum (nobody slashed)."""
    members = [a for a in providers if a != executor]
    expected = {a: -MIN_PROVIDER_STAKE for a in providers} | {client: -price}
    for k in range(1, K + 1):
        part = price * k // K - price * (k - 1) // K
        share = part * COUNCIL_SHARE_BPS // BPS // 3
        for m in members:
            expected[m] += share
        expected[executor] += part - 3 * share
    return expected


def test_a_one_wei_cheater_loses_its_collateral_floor_and_pays_the_council(network, tmp_path):
    run = launch(network, tmp_path, cheap_extra=("--fault", "reorder-data", "--cost-per-second", "1"))
    p, providers, addresses, client = run.p, run.providers, run.addresses, run.client
    events = run.wait_until_decided()
    names = [e.name for e in events]
    assert run.state() == "Cancelled", names
    rejected = [e for e in events if e.name == "CheckpointRejected"]
    assert len(rejected) == 1 and rejected[0].args["k"] == 1
    cheat = providers[0].address
    assert rejected[0].args["executor"] == cheat
    assert "CheckpointAccepted" not in names and "ExecutorReplaced" not in names  # all others sat on the council
    cancelled = next(e for e in events if e.name == "TaskCancelled")
    price = next(e for e in events if e.name == "TaskAssigned").args["price"]
    max_payment = p.I.max_payment
    deposit = max_payment * int(GENESIS["clientDepositBps"]) // BPS
    assert cancelled.args["refund"] == max_payment + deposit

    # A 1-wei bid still locks the floor (docs/protocol.md, "Verification that cannot be gamed"); it is
    # slashed whole: each of the three members that voted no gets the fee S first, then a third of the
    # reporter share of the rest; honest members lose nothing and end with more than they had.
    assert price == 1
    fee = max_payment // K * COUNCIL_SHARE_BPS // BPS
    floor = max(max_payment * int(GENESIS["collateralFloorBps"]) // BPS, 3 * fee, int(GENESIS["minCollateral"], 16))
    assert rejected[0].args["penalty"] == floor
    assert run.chain.stake_of(cheat).staked == MIN_PROVIDER_STAKE - floor
    each = fee + (floor - 3 * fee) * int(GENESIS["reporterShareBps"]) // BPS // 3
    expected = {a: -MIN_PROVIDER_STAKE for a in addresses}
    for member in addresses[1:]:
        assert run.chain.stake_of(member).staked == MIN_PROVIDER_STAKE
        expected[member] += each
    expected[client] = 0
    assert run.balance_changes() == expected
    for member in addresses[1:]:  # more than it had, its gas paid
        assert run.w3.eth.get_balance(member) > run.before[member] - MIN_PROVIDER_STAKE
    assert "fault injection" in providers[0].log()
    # The anomaly agents warned before the verdict: another data order gives another loss curve.
    for member in providers[1:]:
        assert f"task {run.task_id}: anomaly: checkpoint 1: " in member.log(), member.log()[-2000:]


def test_a_killed_executor_restarts_and_finishes_the_task_unslashed(network, tmp_path):
    """SIGKILL the executor once it has committed checkpoint 1; restarted on the same datadir, it
    recovers from the chain and its files (committed checkpoints, the reveal owed) and every
    checkpoint is accepted: nobody is slashed or penalized."""
    run = launch(network, tmp_path)
    start, providers = network[3], run.providers
    executor = providers[0]
    wait_for("checkpoint 1 committed", lambda: "committed checkpoint 1" in executor.log(), 300, providers)
    executor.process.kill()
    executor.process.wait(30)
    restarted = start(1, "--cost-per-second", str(10**14), log_name="provider1-restarted.log")
    events = run.wait_until_decided([*providers[1:], restarted])
    names = [e.name for e in events]
    assert run.state() == "AwaitingConfirmation", [(e.name, e.args) for e in events]
    assert names.count("CheckpointAccepted") == K and "CheckpointRejected" not in names
    assert "CheckpointMissed" not in names and "ExecutorReplaced" not in names
    assert "resuming as executor" in restarted.log()
    for provider in providers:
        assert run.chain.stake_of(provider.address).staked == MIN_PROVIDER_STAKE


def test_allclose_task_without_a_numeric_profile_is_verified_and_accepted(network, tmp_path):
    """The other equivalence: members commit to their own result and state first, the executor
    reveals, members compare with allclose, publish and reveal, then judge each other; all accepted,
    nobody found lazy, the result within tolerance of an independent local training."""
    from ogpu_node.compute import equivalence

    run = launch(network, tmp_path, e={"kind": "allclose", "rtol": 1e-3, "atol": 1e-4},
                 I={"numeric_profile": None})
    assert run.p.e.kind == "allclose" and run.p.I.numeric_profile is None
    events = run.wait_until_decided()
    names = [e.name for e in events]
    assert run.state() == "AwaitingConfirmation", [(e.name, e.args) for e in events]
    assert names.count("CheckpointAccepted") == K and "CheckpointRejected" not in names
    # allclose: every member commits before the executor reveals; judging follows the reveals
    for k in range(1, K + 1):
        order = [e.name for e in events if e.args.get("k") == k]
        assert order.count("ResultCommitted") == 3 and order.count("ResultsJudged") == 3, order
        assert max(i for i, n in enumerate(order) if n == "ResultCommitted") < order.index("CheckpointRevealed")
        assert order.index("JudgingPhase") > max(i for i, n in enumerate(order) if n == "ResultRevealed")
    assert "MemberFoundLazy" not in names
    for provider in run.providers:
        assert run.chain.stake_of(provider.address).staked == MIN_PROVIDER_STAKE
    out = tmp_path / "final.ckpt"
    result = cli("task", "result", str(run.task_id), "--out", tmp_path / "model.safetensors", "--checkpoint", out,
                 "--rpc-url", run.node.http_url)
    assert result.returncode == 0, result.stderr
    seed = bytes(run.chain.task_record(run.task_id).seed)
    p = run.p
    local = train_segment_in_profile("cpu-avx2-1t", spec_from_prescription(p, run.data.read_bytes(), training_seed(p, seed)),
                                     None, p.I.steps)
    assert equivalence.allclose(local.checkpoint, out.read_bytes(), 1e-3, 1e-4)


def test_a_lazy_member_under_allclose_loses_its_seat_stake_and_honest_members_never_do(network, tmp_path):
    """issue 15: provider 2 sits on every council without computing (`--council-fault lazy`: random
    commitments, nothing published, every judgement "allclose"). The other two members mark its result
    not allclose, so at each checkpoint it loses councilSeatStake to them and its vote is not counted;
    the two honest votes (2 of 3) accept every checkpoint; honest members are never penalized."""
    seat = int(GENESIS["councilSeatStake"], 16)
    # staked to keep the provider role through K lost seats
    lazy_extra = ("--council-fault", "lazy", "--stake", str(MIN_PROVIDER_STAKE + K * seat))
    run = launch(network, tmp_path, second_extra=lazy_extra, e={"kind": "allclose", "rtol": 1e-3, "atol": 1e-4})
    lazy = run.providers[1]
    honest = [run.providers[0], run.providers[2], run.providers[3]]
    events = run.wait_until_decided()
    names = [e.name for e in events]
    assert run.state() == "AwaitingConfirmation", [(e.name, e.args) for e in events]
    assert names.count("CheckpointAccepted") == K
    found = [e for e in events if e.name == "MemberFoundLazy"]
    assert [(e.args["k"], e.args["member"], e.args["penalty"]) for e in found] == [
        (k, lazy.address, seat) for k in range(1, K + 1)]
    assert run.chain.stake_of(lazy.address).staked == MIN_PROVIDER_STAKE
    for provider in honest:  # never penalized: every honest stake is whole
        assert run.chain.stake_of(provider.address).staked == MIN_PROVIDER_STAKE
    for e in (e for e in events if e.name == "CheckpointAccepted"):
        assert e.args["councilPaid"] > 0
    assert "without computing" in lazy.log()
