"""Gas and CPU time of a full batch-task lifecycle, beside as many plain transfers, in one run.

The lifecycle's transactions: submitTask, 4 bids, K = 4 checkpoints each with the executor's commit
and reveal and a council of 3 committing and revealing, then confirm (38 transactions), in-process on
a fresh chain, block timestamps stepped past each window so the start-of-block system call assigns
the task and draws each council. The baseline is the same number of plain transfers, in as many
blocks, on another fresh chain. CPU time is the process time of building those blocks (execution,
native contracts, system calls, LMDB commit). Neither figure has a target: they are costs to watch.

Also the gas of one checkpoint round under allclose (the executor's commit and reveal, three members'
commits, reveals and judgements: docs/protocol.md, "Lazy members under allclose") beside the same
round under exact, measured in this run, and the allclose round before the binding (the executor
revealed first, members committed a verdict: no state hash, no judging), 1,042,305 gas, measured with
this same task at commit 43b28b9, the last one with that protocol (gas does not depend on the machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from eth_abi import decode, encode
from eth_hash.auto import keccak

from benchmarks import Result
from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.addresses import BID, SLASHING, STAKE, TASK
from ogpu_node.contracts.commitments import checkpoint_commitment, exact_result_commitment
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.db import LMDBStore
from ogpu_node.execution.calls import CallRequest, call
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.types.protocol import Equivalence, Role, TaskKind, TaskState
from ogpu_node.types.records import VIEW_RECORDS, decode_record
from tests.txfactory import sign_tx

NAMES = ("Stake", "Task", "Bid", "Slashing")
ADDRESS = dict(zip(NAMES, (STAKE, TASK, BID, SLASHING), strict=True))
ETHER = 10**18
CHECKPOINTS = 4
ALLCLOSE_ROUND_BEFORE_BINDING = 1_042_305  # gas, at 43b28b9: see the docstring


class Bench:
    def __init__(self) -> None:
        self.chain = Chain(LMDBStore(tempfile.mkdtemp(prefix="ogpu-bench-")), load_genesis(DEV_GENESIS))
        self.nonces: dict[bytes, int] = {}
        self.measured = False
        self.cpu = 0.0
        self.gas = 0
        self.txs = 0
        self.blocks = 0

    def tx(self, who, to: bytes, data: bytes = b"", value: int = 0, gas: int = 3_000_000):
        nonce = self.nonces.get(who.address, 0)
        self.nonces[who.address] = nonce + 1
        return sign_tx(who, nonce, to=to, value=value, data=data, gas=gas, tip=0, max_fee=10**11).decoded

    def call_tx(self, who, contract: str, fn: str, *args, value: int = 0):
        f = load_abi(contract).function(fn)
        return self.tx(who, ADDRESS[contract], f.selector + encode(list(f.inputs), list(args)), value)

    def view(self, contract: str, fn: str, *args):
        """The view's result as its record (types.records) by field name."""
        f = load_abi(contract).function(fn)
        data = f.selector + encode(list(f.inputs), list(args))
        out = decode(list(f.outputs), call(self.chain.execution, self.chain.head, CallRequest(to=ADDRESS[contract], data=data)))
        return decode_record(VIEW_RECORDS[(contract, fn)], out)

    def block(self, txs=(), dt: int = 1) -> None:
        head = self.chain.head
        attrs = BlockAttributes(timestamp=head.timestamp + dt, coinbase=b"\x00" * 20, mix_hash=keccak(head.mix_hash))
        start = time.process_time()
        executed = self.chain.build_block(attrs, list(txs))
        elapsed = time.process_time() - start
        failed = [r for r in executed.receipts if r.state_root != b"\x01"]
        if failed or executed.excluded:
            raise RuntimeError(f"benchmark transaction failed: {len(failed)} reverted, {len(executed.excluded)} left out")
        if self.measured:
            self.cpu += elapsed
            self.blocks += 1
            self.txs += len(executed.receipts)
            self.gas += executed.header.gas_used


def lifecycle() -> Bench:
    b = Bench()
    accounts = derive_dev_accounts(6)
    client, providers = accounts[0], accounts[1:5]
    b.block([tx for p in providers for tx in (
        b.call_tx(p, "Stake", "stake", value=500 * ETHER),
        b.call_tx(p, "Stake", "registerResources", 0, 8_000, 10, ""),
        b.call_tx(p, "Stake", "setRoles", Role.PROVIDER),
    )])
    b.measured = True
    terms = (ETHER, 3, 1_000, CHECKPOINTS, 60, 30, 0, 1, 0, 600, 0, 0, 0, 0, 0, bytes(32))
    b.block([b.call_tx(client, "Task", "submitTask", b"\x11" * 32, TaskKind.BATCH, terms, value=ETHER * 11 // 10)])
    b.block([b.call_tx(p, "Bid", "placeBid", 1, ETHER * 9 // 10 - i * 10**16) for i, p in enumerate(providers)])
    b.block([], dt=31)  # the bid window passes: the system call assigns
    executor_address = bytes.fromhex(b.view("Task", "getTask", 1).executor[2:])
    executor = next(p for p in providers if p.address == executor_address)
    step, salt = keccak(b"step"), b"\x05" * 32
    for k in range(1, CHECKPOINTS + 1):
        checkpoint = keccak(b"checkpoint %d" % k)
        b.block([b.call_tx(executor, "Task", "commitCheckpoint", 1, k, checkpoint_commitment(1, k, executor.address, checkpoint))])
        b.block([])  # the system call draws the council
        council = {bytes.fromhex(a[2:]) for a in b.view("Task", "getCheckpoint", 1, k).council}
        members = [p for p in providers if p.address in council]
        b.block([b.call_tx(m, "Task", "commitResult", 1, k, exact_result_commitment(1, k, m.address, checkpoint, step, salt)) for m in members])
        b.block([b.call_tx(executor, "Task", "revealCheckpoint", 1, k, checkpoint)])
        b.block([b.call_tx(m, "Task", "revealResult", 1, k, True, checkpoint, step, salt, True) for m in members])
    b.block([b.call_tx(client, "Task", "confirm", 1)])
    if b.view("Task", "getTask", 1).state != TaskState.SETTLED:
        raise RuntimeError("the lifecycle did not settle")
    return b


def checkpoint_round(equivalence: Equivalence) -> int:
    """Gas of the transactions of checkpoint 1's round, council of 3, every vote yes."""
    b = Bench()
    accounts = derive_dev_accounts(6)
    client, executor, members = accounts[0], accounts[1], accounts[2:5]
    b.block([tx for p in accounts[1:5] for tx in (
        b.call_tx(p, "Stake", "stake", value=500 * ETHER),
        b.call_tx(p, "Stake", "registerResources", 0, 8_000 if p in members else 1_000, 10, ""),
        b.call_tx(p, "Stake", "setRoles", Role.PROVIDER),
    )])
    terms = (2 * ETHER, 3, 1_000, 2, 100, 1_000, 1, 1, 0, 500, 0, 0, equivalence, 4_000, 0, bytes(32))
    b.block([b.call_tx(client, "Task", "submitTask", b"\x11" * 32, TaskKind.BATCH, terms, value=ETHER * 22 // 10)])
    b.block([b.call_tx(executor, "Bid", "placeBid", 1, ETHER)])
    b.measured = True
    checkpoint, salt = keccak(b"checkpoint 1"), b"\x05" * 32
    b.block([b.call_tx(executor, "Task", "commitCheckpoint", 1, 1, checkpoint_commitment(1, 1, executor.address, checkpoint))])
    b.block([])  # the system call draws the council
    exact = equivalence == Equivalence.EXACT
    # exact: the executor's very hash and one state hash; allclose: each member's own bits
    own = {m.address: (checkpoint, keccak(b"state")) if exact else (keccak(b"result" + m.address), keccak(b"state" + m.address))
           for m in members}
    b.block([b.call_tx(m, "Task", "commitResult", 1, 1, exact_result_commitment(1, 1, m.address, *own[m.address], salt))
             for m in members])
    b.block([b.call_tx(executor, "Task", "revealCheckpoint", 1, 1, checkpoint)])
    b.block([b.call_tx(m, "Task", "revealResult", 1, 1, True, *own[m.address], salt, True) for m in members])
    if not exact:
        b.block([b.call_tx(m, "Task", "judgeResults", 1, 1, [True] * 3) for m in members])
    if b.view("Task", "getCheckpoint", 1, 1).phase != 4:  # Phase.ACCEPTED
        raise RuntimeError("the checkpoint round did not accept")
    return b.gas


def transfers(count: int, blocks: int) -> Bench:
    b = Bench()
    accounts = derive_dev_accounts(10)
    b.measured = True
    per_block = [count // blocks + (1 if i < count % blocks else 0) for i in range(blocks)]
    sent = 0
    for size in per_block:
        b.block([b.tx(accounts[(sent + i) % 10], accounts[9].address, value=1, gas=21_000) for i in range(size)])
        sent += size
    return b


def round_gas() -> Result:
    allclose, exact = checkpoint_round(Equivalence.ALLCLOSE), checkpoint_round(Equivalence.EXACT)
    before = ALLCLOSE_ROUND_BEFORE_BINDING
    print(f"  checkpoint round gas: allclose {allclose:,} (before the binding {before:,}, x{allclose / before:.2f}), "
          f"exact {exact:,}")
    return Result(
        name="allclose checkpoint round",
        unit="gas",
        ours=allclose,
        baseline=exact,
        baseline_name="exact round",
        target=None,
        note=f"before the binding {before:,} gas (x{allclose / before:.2f}); a cost (lower is better)",
    )


def main(argv: list[str]) -> list[Result]:
    argparse.ArgumentParser(prog="python -m benchmarks.task_lifecycle", description=__doc__).parse_args(argv)
    ours = min((lifecycle() for _ in range(3)), key=lambda b: b.cpu)
    base = min((transfers(ours.txs, ours.blocks) for _ in range(3)), key=lambda b: b.cpu)
    print(f"  lifecycle: {ours.txs} txs in {ours.blocks} blocks, {ours.gas:,} gas, {ours.cpu * 1e3:.1f} ms CPU")
    print(f"  transfers: {base.txs} txs in {base.blocks} blocks, {base.gas:,} gas, {base.cpu * 1e3:.1f} ms CPU")
    print(f"  gas: lifecycle / transfers = {ours.gas / base.gas:.2f}; CPU: lifecycle / transfers = {ours.cpu / base.cpu:.2f}")
    return [Result(
        name="task lifecycle",
        unit="ms CPU",
        ours=ours.cpu * 1e3,
        baseline=base.cpu * 1e3,
        baseline_name=f"{base.txs} transfers",
        target=None,
        note=f"{ours.txs} txs, {ours.gas:,} gas vs {base.gas:,} gas for as many transfers "
        f"(x{ours.gas / base.gas:.2f}); CPU ratio is a cost (lower is better)",
    ), round_gas()]


if __name__ == "__main__":
    import sys

    for result in main(sys.argv[1:]):
        print(result.line())
