"""web3.py decodes every event of the native contracts, as the chain emits it, through ogpu_node/contracts/abis/*.json.

In-process scenarios, each on a fresh chain (harness.py; test_task_checkpoints.py's `Scenario` for batch
tasks), together emit every event declared in contracts/Stake.json, Task.json, Bid.json and
Slashing.json at least once. Every log of every sealed block is turned into the entry web3 gets from
eth_getLogs: an AttributeDict with the checksummed address, HexBytes topics and data, block number and
hash, transaction hash and index, log index and `removed`, in the node's order (docs/protocol.md: the
start-of-block system call's logs first, under the synthetic hash keccak("ogpu-system" ‖ block
hash), with transactionIndex = the block's transaction count; then each receipt's). Each entry is
decoded with `Web3().eth.contract(abi=<the JSON>).events.<Name>().process_log(entry)`, the event picked
by web3's own topic for it. web3's decoder is strict (the padding of addresses, bools and small uints,
the offsets of dynamic data), so a log the node encodes wrongly fails here even where the harness's
decoder is lenient.

The checks: the set of decoded (contract, event) pairs equals the set declared in the four ABIs; every
log of the four addresses decodes, and nothing else logs; web3's arguments equal the harness's decoding
of the same log; and a few values are spot-checked against the scenario (TaskAssigned's executor and
price, ReceiptSettled's amount, StakeSlashed's burned + rewarded = amount, CouncilDrawn's members,
ResourcesRegistered's endpoint, the verdicts of ResultRevealed, ...).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from harness import (
    BID_ABI,
    NATIVE,
    OGPU,
    SLASHING_ABI,
    STAKE_ABI,
    TASK_ABI,
    BlockResult,
    Harness,
    decode_logs,
)
from hexbytes import HexBytes
from test_task_checkpoints import WINDOW, Scenario, ckpt, step
from web3 import Web3
from web3.datastructures import AttributeDict

from ogpu_node.chain import Chain
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.db import LMDBStore
from ogpu_node.types.protocol import CancelReason, Outcome, Penalty, Role, TaskState, profile_id
from ogpu_node.types.signing import (
    BlockProposal,
    SignedProposal,
    SignedStream,
    StreamReceipt,
    StreamRequest,
    StreamResponse,
    StreamVerdict,
)

ROOT = Path(__file__).resolve().parents[3]
GENESIS = DEV_GENESIS
NAMES = ("Stake", "Task", "Bid", "Slashing")
ABIS: dict[str, list[dict[str, Any]]] = {n: json.loads((ABI_DIR / f"{n}.json").read_text()) for n in NAMES}
DECLARED = {(name, e["name"]) for name, abi in ABIS.items() for e in abi if e["type"] == "event"}
W3 = Web3()  # no provider: decoding only
CONTRACTS = {
    to_checksum_address(c.address): (c.name, W3.eth.contract(abi=ABIS[c.name])) for c in NATIVE.values()
}
# web3's own topic of each event, by contract
TOPICS = {
    address: {HexBytes(getattr(contract.events, e["name"])().topic): e["name"]
              for e in ABIS[name] if e["type"] == "event"}
    for address, (name, contract) in CONTRACTS.items()
}

MIN_MEMORY = 4_000
PRICE_E = 7 * 10**17 + 1  # the executor's bid
PRICE_Y = 9 * 10**17 + 7  # the replacement's bid
WRONG = keccak(b"a different result")
VALIDATOR_STAKE = 2_000 * OGPU
ENDPOINT = "https://provider.example:8443/v1 — ünïcode"
STREAM_PROVIDER_STAKE = 500 * OGPU
STREAM_PRICE = 10**12
STREAM_BUDGET = 10 * OGPU
STREAM_TERMS = {
    "budget": STREAM_BUDGET, "councilSize": 2, "pricePerUnit": STREAM_PRICE, "responseMethod": 1,
    "responseWeight": 6_000, "maxResponseTime": 5, "settleWindow": 100, "minMemoryMiB": 4_000, "deviceMask": 0,
}
STREAM_UNITS = 1_234
TOP_UP = 3 * 10**17 + 5
PROFILES = [profile_id("cpu-avx2-1t"), profile_id("cuda-sm90-tf32-off")]


# -- raw logs as web3 log entries --


def system_tx_hash(block_hash: bytes) -> bytes:
    return keccak(b"ogpu-system" + bytes(block_hash))


@dataclass(frozen=True)
class Decoded:
    scenario: str
    contract: str
    raw: tuple[bytes, list[bytes], bytes]
    entry: AttributeDict
    event: AttributeDict  # web3's EventData

    @property
    def name(self) -> str:
        return self.event["event"]

    @property
    def args(self) -> AttributeDict:
        return self.event["args"]


class LogRecorder:
    """After every block a harness seals: each log, as a web3 entry, decoded by web3 with the ABI JSON."""

    def __init__(self, h: Harness, scenario: str) -> None:
        self.scenario = scenario
        self.decoded: list[Decoded] = []
        h.after_block.append(self.record)

    def record(self, block: BlockResult) -> None:
        number = block.number
        block_hash = HexBytes(block.header.hash)
        sources = [(log, system_tx_hash(block_hash), len(block.txs)) for log in block.system_logs]
        for index, result in enumerate(block.txs):
            sources += [(log, result.tx.hash, index) for log in result.logs]
        for log_index, ((address, topics, data), tx_hash, tx_index) in enumerate(sources):
            entry = AttributeDict({
                "address": to_checksum_address(address),
                "topics": [HexBytes(t) for t in topics],
                "data": HexBytes(data),
                "blockNumber": number,
                "blockHash": block_hash,
                "transactionHash": HexBytes(tx_hash),
                "transactionIndex": tx_index,
                "logIndex": log_index,
                "removed": False,
            })
            self.decoded.append(self.decode(entry, (address, topics, data)))

    def decode(self, entry: AttributeDict, raw: tuple[bytes, list[bytes], bytes]) -> Decoded:
        assert entry["address"] in CONTRACTS, f"a log from {entry['address']}, not a native contract"
        contract_name, contract = CONTRACTS[entry["address"]]
        assert entry["topics"], f"an anonymous log from {contract_name}"
        name = TOPICS[entry["address"]].get(entry["topics"][0])
        assert name is not None, f"{contract_name} logged topic {entry['topics'][0].hex()}, no event of its ABI"
        event = getattr(contract.events, name)().process_log(entry)
        assert event["event"] == name and event["address"] == entry["address"]
        assert (event["blockNumber"], event["logIndex"], event["transactionHash"]) == (
            entry["blockNumber"], entry["logIndex"], entry["transactionHash"])
        return Decoded(self.scenario, contract_name, raw, entry, event)


# -- scenarios: each on a fresh chain, together emitting every declared event --


def stake_and_slashing(chain: Chain, a: list[Any]) -> LogRecorder:
    """Stake, roles, resources, numeric profiles, unstake, withdraw after the delay; a double proposal reported."""
    h = Harness(chain)
    recorder = LogRecorder(h, "stake")
    validator, provider, staker, reporter = a[3], a[1], a[0], a[5]
    block = h.block(
        h.tx(validator, STAKE_ABI, "stake", value=VALIDATOR_STAKE),
        h.tx(validator, STAKE_ABI, "setRandaoTip", b"\x07" * 32),
        h.tx(validator, STAKE_ABI, "setRoles", Role.VALIDATOR),
        h.tx(provider, STAKE_ABI, "stake", value=200 * OGPU),
        h.tx(provider, STAKE_ABI, "registerResources", 1, 16_000, 42, ENDPOINT),
        h.tx(provider, STAKE_ABI, "setRoles", Role.PROVIDER),
        h.tx(provider, STAKE_ABI, "setProfiles", PROFILES),
        h.tx(staker, STAKE_ABI, "stake", value=50 * OGPU),
    )
    assert [r.reason for r in block.txs] == [None] * 8
    h.ok(staker, STAKE_ABI, "requestUnstake", 20 * OGPU)
    release = h.view(STAKE_ABI, "stakeOf", staker.address)["releaseTime"]
    h.ok(staker, STAKE_ABI, "withdraw", at=release)

    def proposal(block_hash: bytes) -> bytes:
        message = BlockProposal(7, block_hash)
        return SignedProposal(message, validator.sign_hash(message.signing_root(chain.chain_id, chain.genesis_hash))).encode()

    h.ok(reporter, SLASHING_ABI, "reportDoubleProposal", proposal(b"\x01" * 32), proposal(b"\x02" * 32))
    h.block()  # the next epoch boundary (every block under --dev) ejects the slashed validator
    h.block(settlement=((provider.address, OGPU), (staker.address, -OGPU)))  # a consensus settlement
    return recorder


def batch_cast(s: Scenario, a: list[Any], *executors: Any) -> tuple[Any, list[Any]]:
    """The client a[0]; `executors` can bid but never sit on a council (1000 MiB, below the tasks'
    minMemoryMiB); a[2:5] are exactly councilSize qualifying providers, so every council is them."""
    members = list(a[2:5])
    s.providers(list(executors), memory_mib=1_000)
    s.providers(members, memory_mib=8_000)
    return a[0], members


def batch_reject_and_replace(chain: Chain, a: list[Any]) -> LogRecorder:
    """K = 2: bids, assignment, checkpoint 1 accepted, checkpoint 2 rejected (slash, dust burned, the
    replacement resumes), the replacement's checkpoint 2 accepted, confirm settles."""
    s = Scenario(chain, a)
    recorder = LogRecorder(s.h, "batch: reject and replace")
    e, y = a[1], a[6]
    client, members = batch_cast(s, a, e, y)
    task = s.submit(client, minMemoryMiB=MIN_MEMORY, firstN=2, checkpoints=2)
    s.assign(task, [(e, PRICE_E), (y, PRICE_Y)])
    s.commit(task, 1, e, ckpt(1))
    s.verify_exact(task, 1, e, members, ckpt(1))
    s.commit(task, 2, e, ckpt(2))
    s.draw(task, 2)
    votes = {m: (WRONG, step(2)) for m in members}
    s.commit_exact(task, 2, votes)
    s.reveal_checkpoint(task, 2, e, ckpt(2))
    s.reveal_exact(task, 2, votes)
    s.commit(task, 2, y, ckpt(2))
    s.verify_exact(task, 2, y, members, ckpt(2))
    s.h.ok(client, TASK_ABI, "confirm", task)
    return recorder


def batch_missed_and_unbid(chain: Chain, a: list[Any]) -> LogRecorder:
    """A missed checkpoint with nobody to take over (cancelled), and a task nobody bid on (cancelled at
    its bid deadline), both by the start-of-block system call."""
    s = Scenario(chain, a)
    recorder = LogRecorder(s.h, "batch: missed and unbid")
    e = a[1]
    client, _ = batch_cast(s, a, e)
    task = s.submit(client, minMemoryMiB=MIN_MEMORY, checkpoints=1)
    s.assign(task, [(e, PRICE_E)])
    s.h.block(at=s.task(task)["assignedAt"] + 2 * WINDOW)  # due(1) + the grace window
    unbid = s.submit(client, bidWindow=10)
    s.h.block(at=s.task(unbid)["bidDeadline"])
    return recorder


def batch_dispute(chain: Chain, a: list[Any]) -> LogRecorder:
    """The client disputes a finished task and the council upholds it: the deposit pays the council and
    the rest is burned (FundsBurned), TaskSettled outcome 3."""
    s = Scenario(chain, a)
    recorder = LogRecorder(s.h, "batch: dispute")
    e = a[1]
    client, members = batch_cast(s, a, e)
    task = s.submit(client, minMemoryMiB=MIN_MEMORY, checkpoints=1)
    s.assign(task, [(e, PRICE_E)])
    s.commit(task, 1, e, ckpt(1))
    s.verify_exact(task, 1, e, members, ckpt(1))
    s.h.ok(client, TASK_ABI, "dispute", task)
    s.draw(task, 1)
    votes = {m: (ckpt(1), step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    s.reveal_exact(task, 1, votes)
    return recorder


def batch_inconclusive(chain: Chain, a: list[Any]) -> LogRecorder:
    """All three agree but only one attests it fetched the blob: inconclusive."""
    s = Scenario(chain, a)
    recorder = LogRecorder(s.h, "batch: inconclusive")
    e = a[1]
    client, members = batch_cast(s, a, e)
    task = s.submit(client, minMemoryMiB=MIN_MEMORY, checkpoints=1)
    s.assign(task, [(e, PRICE_E)])
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    votes = {m: (ckpt(1), step(1)) for m in members}
    s.commit_exact(task, 1, votes)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    s.reveal_exact(task, 1, {members[0]: votes[members[0]]})
    s.reveal_exact(task, 1, {m: votes[m] for m in members[1:]}, fetched=False)
    return recorder


def batch_allclose_lazy(chain: Chain, a: list[Any]) -> LogRecorder:
    """allclose: members commit, the executor reveals, members reveal and judge; the third member's
    result is marked not allclose by the other two: lazy (seat stake to them); accepted 2 of 3."""
    s = Scenario(chain, a)
    recorder = LogRecorder(s.h, "batch: allclose lazy")
    e = a[1]
    client, members = batch_cast(s, a, e)
    task = s.submit(client, minMemoryMiB=MIN_MEMORY, checkpoints=1, equivalence=1)
    s.assign(task, [(e, PRICE_E)])
    s.commit(task, 1, e, ckpt(1))
    s.draw(task, 1)
    own = {m: (keccak(b"own" + m.address), step(1)) for m in members}
    s.commit_exact(task, 1, own)
    s.reveal_checkpoint(task, 1, e, ckpt(1))
    s.reveal_allclose(task, 1, {m: (True, *own[m]) for m in members})
    s.judge(task, 1, members, lazy=(members[2],))
    return recorder


def stream(chain: Chain, a: list[Any]) -> LogRecorder:
    """submitStream, subscribe (Active), unsubscribe (Interrupted), subscribe (Active), a reported
    consensus failure, terms version 2, a request key, a top-up, a receipt signed by the key settled at
    version 2, p0's response proved faulty by p1 and p2 (StreamFault), retract (Closing), and the close by
    the system call (subscribers released, settled)."""
    h = Harness(chain)
    recorder = LogRecorder(h, "stream")
    client, (p0, p1, p2), key, outsider = a[0], a[1:4], a[7], a[9]
    h.make_providers([p0, p1, p2], STREAM_PROVIDER_STAKE)
    deposit = STREAM_BUDGET * chain.genesis.protocol.client_deposit_bps // 10_000
    submitted = h.ok(client, TASK_ABI, "submitStream", keccak(b"stream prescription"), STREAM_TERMS,
                     value=STREAM_BUDGET + deposit)
    task = TASK_ABI.decode_output("submitStream", submitted.output)
    block = h.block(h.tx(p0, BID_ABI, "subscribe", task), h.tx(p1, BID_ABI, "subscribe", task))
    assert [r.reason for r in block.txs] == [None, None]
    h.ok(p1, BID_ABI, "unsubscribe", task)
    h.ok(p2, BID_ABI, "subscribe", task)
    h.ok(client, TASK_ABI, "reportConsensusFailure", task)
    h.ok(client, TASK_ABI, "updateTerms", task, 2 * STREAM_PRICE, 2, 5_000)
    h.ok(client, TASK_ABI, "setRequestKey", task, key.address)
    h.ok(outsider, TASK_ABI, "topUp", task, value=TOP_UP)
    root = StreamReceipt(task, p0.address, STREAM_UNITS, 2).signing_root(chain.chain_id, chain.genesis_hash)
    h.ok(p2, TASK_ABI, "settle", task, p0.address, STREAM_UNITS, 2, key.sign_hash(root))
    h.ok(p1, BID_ABI, "subscribe", task)
    h.ok(outsider, SLASHING_ABI, "reportStreamFault", *stream_fault(chain, task, key, p0, [p1, p2]))
    h.ok(client, TASK_ABI, "retract", task)
    h.block(at=h.view(TASK_ABI, "getStream", task)["closeDeadline"])
    return recorder


def stream_fault(chain: Chain, task: int, key: Any, offender: Any, against: list[Any]) -> tuple[bytes, bytes, list[bytes]]:
    """reportStreamFault's arguments: a request signed by `key`, `offender`'s response, verdicts against it."""

    def signed(signer: Any, message: Any) -> bytes:
        root = message.signing_root(chain.chain_id, chain.genesis_hash)
        return SignedStream(message, signer.sign_hash(root)).encode()

    request = StreamRequest(task, 2, chain.head.block_number, 1, 8, keccak(b"prompt"), 1)
    request_id = request.request_id(chain.chain_id, chain.genesis_hash)
    verdict = StreamVerdict(task, request_id, offender.address, WRONG, False)
    return (signed(key, request), signed(offender, StreamResponse(task, request_id, 2, WRONG)),
            [signed(member, verdict) for member in against])


SCENARIOS = (stake_and_slashing, batch_reject_and_replace, batch_missed_and_unbid, batch_dispute,
             batch_inconclusive, batch_allclose_lazy, stream)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory, dev_accounts) -> list[Decoded]:
    out: list[Decoded] = []
    for scenario in SCENARIOS:
        store = LMDBStore(tmp_path_factory.mktemp(scenario.__name__) / "chaindata")
        try:
            out += scenario(Chain(store, load_genesis(GENESIS)), dev_accounts).decoded
        finally:
            store.close()
    return out


def of(decoded: list[Decoded], name: str, scenario: str | None = None) -> list[Decoded]:
    return [d for d in decoded if d.name == name and (scenario is None or d.scenario == scenario)]


def checksum(account: Any) -> str:
    return to_checksum_address(account.address)


# -- coverage and agreement --


def test_every_declared_event_is_emitted_and_decoded(decoded):
    assert len({name for _, name in DECLARED}) == len(DECLARED)  # no name declared twice
    seen = {(d.contract, d.name) for d in decoded}
    assert seen == DECLARED, {"never emitted": sorted(DECLARED - seen), "not declared": sorted(seen - DECLARED)}
    assert {d.name for d in decoded} == {name for _, name in DECLARED}
    counts = Counter(d.name for d in decoded)
    assert min(counts.values()) >= 1
    assert any(d.entry["transactionHash"] == HexBytes(system_tx_hash(d.entry["blockHash"])) for d in decoded)


def normalized(param: dict[str, Any], value: Any) -> Any:
    """web3's decoded value as the harness gives it: addresses as 20 bytes, bytes as bytes, lists."""
    kind = param["type"]
    if kind == "address":
        assert value == to_checksum_address(value), value  # web3 returns checksummed addresses
        return bytes.fromhex(value[2:])
    if kind.endswith("[]"):
        return [normalized(dict(param, type=kind[:-2]), v) for v in value]
    if kind.startswith("bytes"):
        return bytes(value)
    return value


def test_web3_agrees_with_the_harness_on_every_argument(decoded):
    assert len(decoded) > 200
    for d in decoded:
        [expected] = decode_logs([d.raw])
        assert (expected.contract, expected.name) == (d.contract, d.name)
        inputs = next(e["inputs"] for e in ABIS[d.contract] if e.get("name") == d.name and e["type"] == "event")
        assert list(d.args) == [p["name"] for p in inputs]
        got = {p["name"]: normalized(p, d.args[p["name"]]) for p in inputs}
        assert got == expected.args, (d.scenario, d.name)
        for p in inputs:
            if p["type"] == "bool":
                assert isinstance(d.args[p["name"]], bool)


def test_entries_follow_the_node_log_order(decoded):
    """Within a block, logIndex counts from 0 over the system call's logs, then the receipts'."""
    blocks: dict[tuple[str, int], list[Decoded]] = {}
    for d in decoded:
        blocks.setdefault((d.scenario, d.entry["blockNumber"]), []).append(d)
    for entries in blocks.values():
        assert [d.entry["logIndex"] for d in entries] == list(range(len(entries)))
        indexes = [d.entry["transactionIndex"] for d in entries]
        system = [d for d in entries if d.entry["transactionHash"] == HexBytes(system_tx_hash(d.entry["blockHash"]))]
        assert entries[: len(system)] == system
        assert indexes[len(system):] == sorted(indexes[len(system):])


# -- spot checks --


def test_batch_values(decoded, dev_accounts):
    a = dev_accounts
    e, y, members = a[1], a[6], a[2:5]
    reject = "batch: reject and replace"

    [assigned] = of(decoded, "TaskAssigned", reject)
    assert (assigned.args["taskId"], assigned.args["executor"], assigned.args["price"]) == (1, checksum(e), PRICE_E)
    assert isinstance(assigned.args["seed"], bytes) and len(assigned.args["seed"]) == 32
    assert [d.args["price"] for d in of(decoded, "BidPlaced", reject)] == [PRICE_E, PRICE_Y]
    [closed] = of(decoded, "BidsClosed", reject)
    assert closed.args["count"] == 2

    for drawn in of(decoded, "CouncilDrawn"):
        assert sorted(drawn.args["members"]) == sorted(checksum(m) for m in members)
    [replaced] = of(decoded, "ExecutorReplaced", reject)
    assert dict(replaced.args) == {"taskId": 1, "previous": checksum(e), "executor": checksum(y), "price": PRICE_Y,
                                   "resumeFrom": 1}
    [rejected] = of(decoded, "CheckpointRejected", reject)
    assert (rejected.args["k"], rejected.args["executor"], rejected.args["penalty"]) == (2, checksum(e), PRICE_E)
    verdicts = [d.args["verdict"] for d in of(decoded, "ResultRevealed", reject)]
    assert verdicts == [True] * 3 + [False] * 3 + [True] * 3
    [settled] = of(decoded, "TaskSettled", reject)
    assert settled.args["outcome"] == Outcome.CONFIRMED

    slashes = of(decoded, "StakeSlashed")
    assert len(slashes) == 5  # the rejected executor, the missed one, the lazy member, the double proposer,
    # the stream's faulty member
    for slashed in slashes:
        args = slashed.args
        assert args["burned"] + args["rewarded"] == args["amount"] > 0
    penalties = of(decoded, "ComputationPenalty")
    assert sorted((p.args["kind"], p.args["penalty"]) for p in penalties) == [
        (Penalty.REJECTED, PRICE_E), (Penalty.MISSED_CHECKPOINT, PRICE_E), (Penalty.LAZY_MEMBER, 10 * OGPU)]
    [burned_rest] = of(decoded, "FundsBurned", reject)
    fee = 2 * OGPU // 2 // 10  # S: the council share of ⌊maxPayment / K⌋, to each rejecting member first
    rest = PRICE_E - 3 * fee
    assert burned_rest.args["amount"] == rest - rest // 10 // 3 * 3  # what the reporter share leaves

    lazy = "batch: allclose lazy"
    [judging] = of(decoded, "JudgingPhase", lazy)
    assert (judging.args["k"], judging.args["round"]) == (1, 0)
    judged = of(decoded, "ResultsJudged", lazy)
    assert [(d.args["member"], list(d.args["allclose"])) for d in judged] == [
        (checksum(members[0]), [True, True, False]), (checksum(members[1]), [True, True, False]),
        (checksum(members[2]), [True, True, True])]
    [found] = of(decoded, "MemberFoundLazy", lazy)
    assert dict(found.args) == {"taskId": 1, "k": 1, "member": checksum(members[2]), "round": 0, "penalty": 10 * OGPU}
    [accepted] = of(decoded, "CheckpointAccepted", lazy)
    assert accepted.args["councilPaid"] == PRICE_E // 10 // 2 * 2  # the two that were counted

    [missed] = of(decoded, "CheckpointMissed")
    assert (missed.args["k"], missed.args["executor"], missed.args["penalty"]) == (1, checksum(e), PRICE_E)
    cancels = {d.args["reason"] for d in of(decoded, "TaskCancelled", "batch: missed and unbid")}
    assert cancels == {CancelReason.NO_REPLACEMENT, CancelReason.TOO_FEW_BIDS}

    [disputed] = of(decoded, "TaskDisputed")
    assert dict(disputed.args) == {"taskId": 1}
    [lost] = of(decoded, "TaskSettled", "batch: dispute")
    assert lost.args["outcome"] == Outcome.CLIENT_LOST
    [burned] = of(decoded, "FundsBurned", "batch: dispute")
    assert burned.args["amount"] > 0
    [inconclusive] = of(decoded, "CheckpointInconclusive")
    assert (inconclusive.args["k"], inconclusive.args["round"]) == (1, 0)


def test_stake_and_slashing_values(decoded, dev_accounts):
    validator, provider, staker, reporter = dev_accounts[3], dev_accounts[1], dev_accounts[0], dev_accounts[5]
    [resources] = of(decoded, "ResourcesRegistered", "stake")
    assert dict(resources.args) == {"account": checksum(provider), "deviceKind": 1, "memoryMiB": 16_000,
                                    "throughputScore": 42, "endpoint": ENDPOINT}
    assert [(d.args["account"], d.args["roles"]) for d in of(decoded, "RolesChanged", "stake")][:2] == [
        (checksum(validator), Role.VALIDATOR), (checksum(provider), Role.PROVIDER)]
    [profiles] = of(decoded, "ProfilesSet", "stake")
    assert dict(profiles.args) == {"account": checksum(provider), "profiles": PROFILES}
    [unstake] = of(decoded, "UnstakeRequested", "stake")
    [withdrawn] = of(decoded, "Withdrawn", "stake")
    assert (unstake.args["account"], unstake.args["amount"]) == (checksum(staker), 20 * OGPU)
    assert dict(withdrawn.args) == {"account": checksum(staker), "amount": 20 * OGPU}
    assert withdrawn.entry["blockNumber"] == unstake.entry["blockNumber"] + 1
    [offence] = of(decoded, "ConsensusOffence", "stake")
    assert (offence.args["offender"], offence.args["reporter"]) == (checksum(validator), checksum(reporter))
    [slashed] = of(decoded, "StakeSlashed", "stake")
    # The validator holds most of the stake here: 3 × its stake passes the total, so it loses it all
    # (the correlation penalty, docs/consensus.md "Slashing").
    assert slashed.args["amount"] == offence.args["penalty"] == VALIDATOR_STAKE
    assert slashed.args["rewarded"] == offence.args["penalty"] // 10
    assert slashed.args["beneficiary"] == to_checksum_address(SLASHING_ABI.address)  # passed on to reporter and proposer


def test_stream_values(decoded, dev_accounts):
    client, (p0, p1, p2), key = dev_accounts[0], dev_accounts[1:4], dev_accounts[7]
    [settled_receipt] = of(decoded, "ReceiptSettled")
    assert dict(settled_receipt.args) == {"taskId": 1, "provider": checksum(p0), "termsVersion": 2,
                                          "units": STREAM_UNITS, "amount": STREAM_UNITS * 2 * STREAM_PRICE}
    assert [(d.args["state"], d.args["subscribers"]) for d in of(decoded, "StreamStateChanged")] == [
        (TaskState.ACTIVE, 2), (TaskState.INTERRUPTED, 1), (TaskState.ACTIVE, 2), (TaskState.INTERRUPTED, 2),
        (TaskState.ACTIVE, 3), (TaskState.CLOSING, 2)]
    assert [(d.args["version"], d.args["pricePerUnit"]) for d in of(decoded, "TermsUpdated")] == [
        (1, STREAM_PRICE), (2, 2 * STREAM_PRICE)]
    [request_key] = of(decoded, "RequestKeySet")
    assert request_key.args["key"] == checksum(key)
    [topped] = of(decoded, "ToppedUp")
    assert (topped.args["amount"], topped.args["escrow"]) == (TOP_UP, STREAM_BUDGET + TOP_UP)
    subscribed = [d.args["provider"] for d in of(decoded, "Subscribed")]
    assert subscribed == [checksum(p0), checksum(p1), checksum(p2), checksum(p1)]
    left = [d.args["provider"] for d in of(decoded, "Unsubscribed")]
    assert left[:2] == [checksum(p1), checksum(p0)] and sorted(left[2:]) == sorted([checksum(p1), checksum(p2)])
    [fault] = of(decoded, "StreamFault")
    seat = 10 * OGPU
    assert (fault.args["taskId"], fault.args["offender"], fault.args["amount"], fault.args["reporter"]) == (
        1, checksum(p0), seat, checksum(dev_accounts[9]))
    [fault_slash] = of(decoded, "StakeSlashed", "stream")
    assert (fault_slash.args["amount"], fault_slash.args["rewarded"]) == (seat, seat // 10)
    [closed] = of(decoded, "TaskSettled", "stream")
    paid = STREAM_UNITS * 2 * STREAM_PRICE
    assert (closed.args["paid"], closed.args["refund"]) == (paid, STREAM_BUDGET + TOP_UP - paid + STREAM_BUDGET // 10)
    assert closed.entry["transactionHash"] == HexBytes(system_tx_hash(closed.entry["blockHash"]))
    assert closed.args["taskId"] == 1
    [submitted] = of(decoded, "TaskSubmitted", "stream")
    assert (submitted.args["client"], submitted.args["kind"], submitted.args["bidDeadline"]) == (checksum(client), 1, 0)
