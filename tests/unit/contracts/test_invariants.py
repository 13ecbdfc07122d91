"""Random protocol traffic from many accounts, with the invariants of DESIGN.md §3 after every block.

Supply = genesis supply − burnt base fees − burnt slashes and task burns (block reward is 0 and tips
are 0 here); Stake's balance = Σ staked + Σ unbonding; Task's balance = Σ escrow + deposit of its
tasks; locked ≤ staked; each checkpoint is paid at most once and no task is paid more than its price.
"""

from __future__ import annotations

from collections import Counter

from eth_abi import decode, encode
from eth_hash.auto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from txfactory import sign_tx

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.commitments import checkpoint_commitment, exact_result_commitment
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.db import LMDBStore
from ogpu_node.execution.calls import CallRequest, call
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.types.protocol import Role
from ogpu_node.types.signing import BlockProposal, SignedProposal

GENESIS = load_genesis(DEV_GENESIS)
ACCOUNTS = derive_dev_accounts(10)
NAMES = ("Stake", "Task", "Bid", "Slashing")
ADDRESS = {name: bytes.fromhex(f"00000000000000000000000000000000000010{i:02d}") for i, name in enumerate(NAMES)}
ABI = {name: load_abi(name) for name in NAMES}
TOPICS = {e.topic: (name, e) for name in NAMES for e in ABI[name].events.values()}
ETHER = 10**18


class World:
    def __init__(self, path) -> None:
        self.chain = Chain(LMDBStore(path), GENESIS)
        self.nonces: Counter[bytes] = Counter()
        self.burnt = 0
        self.minted = 0
        self.accepted: Counter[tuple[int, int]] = Counter()
        self.paid: Counter[int] = Counter()
        self.tasks = 0
        self.events: Counter[str] = Counter()  # how often each event was emitted in this run

    def data(self, contract: str, fn: str, *args) -> bytes:
        f = ABI[contract].function(fn)
        return f.selector + encode(list(f.inputs), list(args))

    def tx(self, who, contract: str, fn: str, *args, value: int = 0):
        nonce = self.nonces[who.address]
        self.nonces[who.address] += 1
        return sign_tx(
            who, nonce, to=ADDRESS[contract], value=value, data=self.data(contract, fn, *args), gas=3_000_000,
            tip=0, max_fee=10**11,
        ).decoded

    def view(self, contract: str, fn: str, *args):
        f = ABI[contract].function(fn)
        out = call(self.chain.execution, self.chain.head, CallRequest(to=ADDRESS[contract], data=self.data(contract, fn, *args)))
        return decode(list(f.outputs), out)

    def block(self, txs=(), dt: int = 1, settlement: tuple[tuple[bytes, int], ...] = ()) -> None:
        head = self.chain.head
        executed = self.chain.build_block(
            BlockAttributes(timestamp=head.timestamp + dt, coinbase=b"\x00" * 20, mix_hash=keccak(head.mix_hash),
                            settlement=settlement), list(txs)
        )
        # A nonce the block did not use (a skipped tx) must be reused.
        for tx, _ in executed.excluded:
            self.nonces[tx.sender] = min(self.nonces[tx.sender], tx.nonce)
        header = executed.header
        self.burnt += header.gas_used * header.base_fee_per_gas
        logs = [(a, t, d) for a, t, d in executed.system_logs]
        for receipt in executed.receipts:
            logs += [(log.address, [x.to_bytes(32, "big") for x in log.topics], log.data) for log in receipt.logs]
        for _, topics, data in logs:
            entry = TOPICS.get(topics[0])
            if entry is None:
                continue
            _, event = entry
            self.events[event.name] += 1
            values = decode([t for _, t, indexed in event.inputs if not indexed], data)
            named = dict(zip([n for n, _, indexed in event.inputs if not indexed], values, strict=True))
            if event.name == "StakeSlashed":
                self.burnt += named["burned"]
            elif event.name == "FundsBurned":
                self.burnt += named["amount"]
            elif event.name == "EpochSettled":  # consensus rewards minted, penalties burned
                self.minted += named["minted"]
                self.burnt += named["burned"]
            elif event.name == "ReceiptSettled":
                self.paid[int.from_bytes(topics[1], "big")] += named["amount"]
            elif event.name == "CheckpointAccepted":
                task_id, k = int.from_bytes(topics[1], "big"), int.from_bytes(topics[2], "big")
                self.accepted[(task_id, k)] += 1
                self.paid[task_id] += named["executorPaid"] + named["councilPaid"]
        self.check()

    def balance(self, address: bytes) -> int:
        return self.chain.account(self.chain.head, address)[1]

    def check(self) -> None:
        stakes = [self.view("Stake", "stakeOf", a.address) for a in ACCOUNTS]
        for staked, locked, _, _, _ in stakes:
            assert locked <= staked
        assert self.balance(ADDRESS["Stake"]) == sum(s[0] + s[2] for s in stakes)
        held = 0
        for task_id in range(1, self.view("Task", "taskCount")[0] + 1):
            task = self.view("Task", "getTask", task_id)
            held += task[4] + task[5]
            assert self.paid[task_id] == self.view("Task", "getProgress", task_id)[2]
            if task[1] == 0:  # batch: never more than the price cap
                assert self.paid[task_id] <= self.view("Task", "getTerms", task_id)[0][0]
        assert self.balance(ADDRESS["Task"]) == held
        assert all(count == 1 for count in self.accepted.values())
        supply = sum(self.balance(a.address) for a in ACCOUNTS) + sum(self.balance(a) for a in ADDRESS.values())
        supply += self.balance(b"\x00" * 20)
        assert supply == GENESIS.total_supply + self.minted - self.burnt


# -- operations: each is one block; many revert, which must not break an invariant either --

def op_stake(w: World, who: int, units: int) -> None:
    w.block([w.tx(ACCOUNTS[who], "Stake", "stake", value=units * 50 * ETHER)])


def op_provider(w: World, who: int, _: int) -> None:
    a = ACCOUNTS[who]
    w.block([w.tx(a, "Stake", "registerResources", 0, 8_000, 10, ""), w.tx(a, "Stake", "setRandaoTip", keccak(a.address)),
             w.tx(a, "Stake", "setRoles", Role.PROVIDER | (who % 2))])


def op_settle(w: World, who: int, units: int) -> None:
    """A consensus settlement: a reward to one account, a penalty to the next (never cutting locked
    stake, whatever its size)."""
    penalized = ACCOUNTS[(who + 1) % len(ACCOUNTS)].address
    w.block(settlement=tuple(sorted({ACCOUNTS[who].address: units * ETHER // 3 + 1,
                                     penalized: -(units * 60 * ETHER)}.items())))


def op_unstake(w: World, who: int, units: int) -> None:
    w.block([w.tx(ACCOUNTS[who], "Stake", "requestUnstake", units * 25 * ETHER)])


def op_withdraw(w: World, who: int, _: int) -> None:
    w.block([w.tx(ACCOUNTS[who], "Stake", "withdraw")], dt=1_800)


def op_submit(w: World, who: int, units: int) -> None:
    price = (1 + units) * ETHER // 4
    terms = (price, 3, 1_000, 1 + units % 3, 40, 60, 0, 1, 100, 60, 0, 0, units % 2, 0, 0, bytes(32))
    w.block([w.tx(ACCOUNTS[who], "Task", "submitTask", keccak(bytes([units])), 0, terms, value=price * 2)])


def _newest(w: World, states: tuple[int, ...]):
    """The newest batch task in one of `states`: traffic concentrates on it, so tasks get somewhere."""
    for task_id in range(w.view("Task", "taskCount")[0], 0, -1):
        task = w.view("Task", "getTask", task_id)
        if task[1] == 0 and task[2] in states:
            return task_id, task, w.view("Task", "getProgress", task_id)
    return None


def op_bid(w: World, who: int, units: int) -> None:
    found = _newest(w, (1,))
    if found:
        task_id = found[0]
        cap = w.view("Task", "getTerms", task_id)[0][0]
        w.block([w.tx(ACCOUNTS[who], "Bid", "placeBid", task_id, cap * (40 + 7 * units) // 100)])


def _running(w: World, units: int):
    return _newest(w, (2, 4, 5))


def _account(address: str):
    return next(a for a in ACCOUNTS if a.address == bytes.fromhex(address[2:]))


def op_commit(w: World, _: int, units: int) -> None:
    found = _running(w, units)
    if found and found[1][2] == 2:
        task_id, task, progress = found
        k = progress[1] + 1
        executor = _account(task[6])
        w.block([w.tx(executor, "Task", "commitCheckpoint", task_id, k, checkpoint_commitment(task_id, k, executor.address, keccak(b"c%d" % k)))])


def op_council(w: World, pattern: int, units: int) -> None:
    """The sitting council commits (and later reveals) yes, no or nothing per member, by `pattern`."""
    found = _running(w, units)
    if not found or found[1][2] not in (2, 5):  # task state Running or Disputed
        return
    task_id, task, progress = found
    terms = w.view("Task", "getTerms", task_id)[0]
    k = terms[3] if task[2] == 5 else progress[0] + 1
    phase, _, _, _, _, council, _ = w.view("Task", "getCheckpoint", task_id, k)
    members = [_account(m) for m in council]
    executor = _account(task[6])
    good = keccak(b"c%d" % k)
    choices = [(pattern >> (2 * i)) & 3 for i in range(len(members))]  # 0/1 yes, 2 no, 3 absent
    if phase == 2:
        txs = []
        for member, choice in zip(members, choices, strict=True):
            if choice == 3:
                continue
            result = good if choice < 2 else keccak(b"bad")
            commitment = exact_result_commitment(task_id, k, member.address, result, b"\x01" * 32, b"\x02" * 32)
            txs.append(w.tx(member, "Task", "commitResult", task_id, k, commitment))
        w.block(txs)
    elif phase == 3:
        txs = [w.tx(executor, "Task", "revealCheckpoint", task_id, k, good)]
        for member, choice in zip(members, choices, strict=True):
            if choice != 3:
                result = good if choice < 2 else keccak(b"bad")
                txs.append(w.tx(member, "Task", "revealResult", task_id, k, choice < 2, result, b"\x01" * 32, b"\x02" * 32, True))
        w.block(txs)
    elif phase == 5:  # allclose judging: a "no" member's result is not allclose to a "yes" member's
        txs = [
            w.tx(member, "Task", "judgeResults", task_id, k, [(c < 2) == (choice < 2) for c in choices])
            for member, choice in zip(members, choices, strict=True) if choice != 3
        ]
        w.block(txs)


def op_client(w: World, choice: int, units: int) -> None:
    found = _running(w, units)
    if found and found[1][2] == 4:
        client = _account(found[1][0])
        w.block([w.tx(client, "Task", "dispute" if choice % 3 == 0 else "confirm", found[0])])


def op_report(w: World, who: int, units: int) -> None:
    offender = ACCOUNTS[units % 10]
    signed = []
    for block_hash in (b"\x01" * 32, b"\x02" * 32):
        message = BlockProposal(units, block_hash)
        signature = offender.sign_hash(message.signing_root(1337, w.chain.genesis_hash))
        signed.append(SignedProposal(message, signature).encode())
    w.block([w.tx(ACCOUNTS[who], "Slashing", "reportDoubleProposal", *signed)])


def _stream(w: World, units: int):
    count = w.view("Task", "taskCount")[0]
    for offset in range(count):
        task_id = 1 + (units + offset) % count
        task = w.view("Task", "getTask", task_id)
        if task[1] == 1:
            return task_id, task
    return None


def op_stream_submit(w: World, who: int, units: int) -> None:
    budget = (1 + units) * ETHER // 10
    terms = (budget, 1 + units % 3, 10**14 * (1 + units), units % 3, 5_000, 1_000, 30, 0, 0, bytes(32))
    w.block([w.tx(ACCOUNTS[who], "Task", "submitStream", keccak(b"s" + bytes([units])), terms, value=budget * 2)])


def op_stream_member(w: World, who: int, units: int) -> None:
    found = _stream(w, units)
    if found:
        fn = "unsubscribe" if units % 3 == 0 else "subscribe"
        w.block([w.tx(ACCOUNTS[who], "Bid", fn, found[0])])


def op_stream_settle(w: World, who: int, units: int) -> None:
    """The client signs a receipt for a provider; anyone submits it; sometimes the client retracts."""
    found = _stream(w, units)
    if not found:
        return
    task_id, task = found
    client = _account(task[0])
    if units % 4 == 0:
        w.block([w.tx(client, "Task", "retract", task_id)])
        return
    from ogpu_node.types.signing import StreamReceipt

    provider = ACCOUNTS[who]
    version = w.view("Task", "getStream", task_id)[0]
    cumulative = w.view("Task", "settledUnits", task_id, provider.address, version)[0] + 1 + units * 50
    receipt = StreamReceipt(task_id, provider.address, cumulative, version)
    signature = client.sign_hash(receipt.signing_root(1337, w.chain.genesis_hash))
    w.block([w.tx(ACCOUNTS[(who + 1) % 10], "Task", "settle", task_id, provider.address, cumulative, version, signature)])


def op_wait(w: World, _: int, units: int) -> None:
    w.block([], dt=1 + units * 7)


# Weighted by repetition toward the steps that move a task forward, so random traffic reaches
# councils, payments, rejections and settlements rather than stopping at bidding.
OPERATIONS = [
    op_stake, op_provider, op_unstake, op_withdraw, op_report, op_settle,
    op_submit, op_submit, op_bid, op_bid, op_bid, op_bid,
    op_commit, op_commit, op_commit, op_council, op_council, op_council, op_council, op_council,
    op_client, op_client, op_wait, op_wait,
    op_stream_submit, op_stream_member, op_stream_member, op_stream_settle, op_stream_settle,
]

operation = st.tuples(st.integers(0, len(OPERATIONS) - 1), st.integers(0, 9), st.integers(0, 9))


# What a run must reach for the invariants to have been checked on the protocol's later steps: a
# council's verdict on a checkpoint (accepted, rejected or inconclusive) and a task settled.
VERDICTS = ("CheckpointAccepted", "CheckpointRejected", "CheckpointInconclusive")
SETTLEMENTS = ("TaskSettled",)


def test_invariants_hold_after_every_block(tmp_path_factory):
    """Rule: the invariants hold after every block of random traffic; and the traffic reaches council
    verdicts and settlements in some runs (counted), so the test cannot silently stop exercising them."""
    reached: Counter[str] = Counter()

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(st.lists(operation, min_size=30, max_size=60))
    def run(ops):
        world = World(tmp_path_factory.mktemp("inv"))
        # Everyone stakes and most are providers first, so tasks get bids and councils.
        world.block([world.tx(a, "Stake", "stake", value=400 * ETHER) for a in ACCOUNTS[1:]])
        world.block([tx for a in ACCOUNTS[1:8] for tx in (
            world.tx(a, "Stake", "registerResources", 0, 8_000, 10, ""), world.tx(a, "Stake", "setRoles", Role.PROVIDER))])
        for index, who, units in ops:
            OPERATIONS[index](world, who, units)
        world.chain.store.close()
        reached["runs"] += 1
        reached["verdict"] += any(world.events[name] for name in VERDICTS)
        reached["settlement"] += any(world.events[name] for name in SETTLEMENTS)

    run()
    assert reached["verdict"] > 0, f"no run reached a council verdict: {dict(reached)}"
    assert reached["settlement"] > 0, f"no run reached a settlement: {dict(reached)}"
