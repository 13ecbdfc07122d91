"""Task (0x…1001) and Bid (0x…1002) driven by contracts, against a real `ogpu-node run --dev` process.

A Vyper client (tests/contracts/TaskClient.vy) declares Task's Terms struct and interface itself and
submits a batch task with value through `extcall`, keeping the task id Task returns; web3.py decodes
TaskSubmitted with contracts/Task.json and sees the contract as the client. A Solidity provider
(tests/contracts/ProviderAgent.sol, compiled with solcjs against the generated ogpu_node/contracts/abis/I*.sol)
stakes, registers resources, takes the provider role and bids on that task; it reads the task's client
through getTask's eleven return values; a Bid revert bubbles up through it with its reason. Every
transaction is signed locally and sent with eth_sendRawTransaction.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from contracts.compile import Compiled, compile_contract
from contracts.web3tx import checksum, deploy, error_data, send
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from ogpu_node.config import DEV_GENESIS
from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.types.protocol import BPS, Role, TaskKind, TaskState
from ogpu_node.types.records import StakeRecord, TaskRecord, decode_record

ROOT = Path(__file__).resolve().parents[2]
SOLCJS = ROOT / ".tools" / "node_modules" / ".bin" / "solcjs"
ABI = {name: json.loads((ABI_DIR / f"{name}.json").read_text()) for name in ("Stake", "Task", "Bid")}
STAKE, TASK, BID = (checksum(address) for address in (addresses.STAKE, addresses.TASK, addresses.BID))
OGPU = 10**18
GENESIS_OGPU = json.loads((DEV_GENESIS).read_text())["config"]["ogpu"]
CLIENT_DEPOSIT_BPS = GENESIS_OGPU["clientDepositBps"]  # 1000 in dev: 10 %
COLLATERAL_BPS = GENESIS_OGPU["collateralBps"]

MAX_PAYMENT = 10 * OGPU
DEPOSIT = MAX_PAYMENT * CLIENT_DEPOSIT_BPS // BPS
PRESCRIPTION = keccak(text="prescription: resnet-50 fine-tune")
BID_WINDOW = 3_600  # far past the test's end: bidding stays open
# maxPayment, councilSize, councilShareBps, checkpoints, segmentWindow, bidWindow, firstN, minBids,
# latenessBpsPerSecond, confirmWindow, responseMethod, responseWeight, equivalence, minMemoryMiB, deviceMask,
# numericProfile (zero: any provider)
TERMS = (MAX_PAYMENT, 3, 1_000, 2, 600, BID_WINDOW, 0, 1, 5, 900, 0, 0, 0, 16_384, 0, bytes(32))
BID_ABOVE_MAXIMUM = "Bid: price above the task's maximum payment"





def task_record(task: Any, task_id: int) -> TaskRecord:
    return decode_record(TaskRecord, task.functions.getTask(task_id).call())


def stake_record(stake: Any, who: str) -> StakeRecord:
    return decode_record(StakeRecord, stake.functions.stakeOf(who).call())


def transact(w3: Web3, key: Any, contract: Any, function: str, *args: Any, value: int = 0, gas: int = 1_000_000) -> Any:
    data = bytes.fromhex(contract.encode_abi(function, args=list(args))[2:])
    return send(w3, key, gas=gas, to=contract.address, value=value, data=data)


def deploy_compiled(w3: Web3, key: Any, compiled: Compiled) -> Any:
    return w3.eth.contract(address=deploy(w3, key, compiled.bytecode), abi=compiled.abi)


@pytest.fixture(scope="module")
def provider_agent(tmp_path_factory) -> Compiled:
    """tests/contracts/ProviderAgent.sol through solcjs (solc 0.8.30, default EVM version prague, the
    chain's fork), its `ogpu_node/contracts/abis/I*.sol` imports resolved against the repository root."""
    solcjs = shutil.which("solcjs") or (str(SOLCJS) if SOLCJS.exists() else None)
    assert solcjs, "solcjs is missing: `make test` installs it into .tools/"
    out = tmp_path_factory.mktemp("solc")
    subprocess.run(
        [solcjs, "--bin", "--abi", "--base-path", str(ROOT), "-o", str(out),
         str(ROOT / "tests" / "contracts" / "ProviderAgent.sol")],
        check=True, capture_output=True, timeout=120, cwd=ROOT,
    )
    [abi] = out.glob("*ProviderAgent_sol_ProviderAgent.abi")
    [binary] = out.glob("*ProviderAgent_sol_ProviderAgent.bin")
    code = bytes.fromhex(binary.read_text().strip())
    return Compiled("ProviderAgent", json.loads(abi.read_text()), code, b"")


@pytest.fixture
def w3(dev_node) -> Web3:
    return Web3(Web3.HTTPProvider(dev_node.http_url, request_kwargs={"timeout": 30}))


@pytest.fixture
def contracts(w3) -> dict[str, Any]:
    return {name: w3.eth.contract(address=address, abi=ABI[name]) for name, address in
            (("Stake", STAKE), ("Task", TASK), ("Bid", BID))}


def submit_task(w3: Web3, key: Any, task: Any) -> tuple[Any, int, Any]:
    """Deploy TaskClient and submit the batch task through it; return (client, task id, receipt)."""
    client = deploy_compiled(w3, key, compile_contract("TaskClient"))
    receipt = transact(w3, key, client, "submit", PRESCRIPTION, TERMS, value=MAX_PAYMENT + DEPOSIT)
    assert receipt["status"] == 1
    task_id = client.functions.last_task_id().call()
    assert task_id == task.functions.taskCount().call() >= 1
    return client, task_id, receipt


def ready_agent(w3: Web3, key: Any, compiled: Compiled, stake: Any) -> tuple[Any, list[Any]]:
    """Deploy ProviderAgent, stake 200 OGPU, register resources and take the provider role through it."""
    agent = deploy_compiled(w3, key, compiled)
    receipts = [
        transact(w3, key, agent, "stake", value=200 * OGPU),
        transact(w3, key, agent, "register", 1, 81_920, 12, "https://agent.example:8443"),
        transact(w3, key, agent, "becomeProvider"),
    ]
    assert [r["status"] for r in receipts] == [1, 1, 1]
    return agent, receipts


def test_vyper_contract_submits_a_batch_task_and_is_its_client(w3, contracts, dev_accounts):
    """Rule: Task.submitTask reached by a CALL from a contract takes msg.value as escrow + deposit and
    records msg.sender (the contract) as the client; the uint256 task id reaches the contract's code,
    and TaskSubmitted, decoded by web3 from contracts/Task.json, names the contract."""
    task = contracts["Task"]
    key = dev_accounts[1]
    assert w3.eth.get_code(TASK) == b"\xfe"
    task_balance = w3.eth.get_balance(TASK)
    count = task.functions.taskCount().call()
    client, task_id, receipt = submit_task(w3, key, task)
    assert task_id == count + 1
    assert client.functions.submitted().call() == 1
    assert client.functions.task_count().call() == task_id

    (submitted,) = task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)
    assert submitted["address"] == TASK
    timestamp = w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert dict(submitted["args"]) == {
        "taskId": task_id, "client": client.address, "prescriptionHash": PRESCRIPTION, "kind": 0,
        "maxPayment": MAX_PAYMENT, "deposit": DEPOSIT, "bidDeadline": timestamp + BID_WINDOW,
    }
    (own,) = client.events.Submitted().process_receipt(receipt, errors=DISCARD)
    assert dict(own["args"]) == {"taskId": task_id, "value": MAX_PAYMENT + DEPOSIT}
    assert [entry["address"] for entry in receipt["logs"]] == [TASK, client.address]

    record = task_record(task, task_id)
    assert (record.client, record.kind, record.state, record.prescription_hash, record.escrow, record.deposit) == (
        client.address, TaskKind.BATCH, TaskState.BIDDING, PRESCRIPTION, MAX_PAYMENT, DEPOSIT,
    )
    assert tuple(task.functions.getTerms(task_id).call()) == TERMS
    assert w3.eth.get_balance(TASK) == task_balance + MAX_PAYMENT + DEPOSIT
    assert w3.eth.get_balance(client.address) == 0

    # Task's revert reaches the caller through the Vyper contract with its reason.
    short = f"Task: value must cover maxPayment plus a safety deposit of at least {DEPOSIT} wei"
    with pytest.raises(ContractLogicError) as failure:
        client.functions.submit(PRESCRIPTION, TERMS).call({"from": checksum(key.address), "value": MAX_PAYMENT})
    assert failure.value.message == f"execution reverted: {short}"
    assert failure.value.data == "0x" + error_data(short).hex()


def test_solidity_provider_stakes_registers_and_bids_on_the_contract_clients_task(
    w3, contracts, dev_accounts, provider_agent
):
    """Rule: a Solidity contract reaches Stake and Bid through the generated interfaces: stake() (payable,
    returns nothing: the 0xfe code byte passes solc's EXTCODESIZE check), registerResources, setRoles and
    placeBid all succeed with the contract as the account; Bid locks collateralBps of the price from its
    free stake and bidsOf lists it. Its getTask call decodes all eleven return values."""
    stake, task, bid = contracts["Stake"], contracts["Task"], contracts["Bid"]
    client, task_id, _ = submit_task(w3, dev_accounts[1], task)
    owner = dev_accounts[2]
    agent, receipts = ready_agent(w3, owner, provider_agent, stake)

    (staked,) = stake.events.Staked().process_receipt(receipts[0])
    assert dict(staked["args"]) == {"account": agent.address, "amount": 200 * OGPU, "total": 200 * OGPU}
    (registered,) = stake.events.ResourcesRegistered().process_receipt(receipts[1])
    assert dict(registered["args"]) == {
        "account": agent.address, "deviceKind": 1, "memoryMiB": 81_920, "throughputScore": 12,
        "endpoint": "https://agent.example:8443",
    }
    (roles,) = stake.events.RolesChanged().process_receipt(receipts[2])
    assert dict(roles["args"]) == {"account": agent.address, "roles": Role.PROVIDER}
    assert agent.address in stake.functions.providers().call()
    assert w3.eth.get_balance(agent.address) == 0

    # (3) Task's eleven-value getTask, decoded by Solidity, as web3 decodes it directly.
    record = task_record(task, task_id)
    assert agent.functions.clientOf(task_id).call() == client.address == record.client
    assert agent.functions.taskSummary(task_id).call() == [
        client.address, TaskState.BIDDING, MAX_PAYMENT, DEPOSIT, record.bid_deadline,
    ]

    price = 7 * OGPU
    collateral = price * COLLATERAL_BPS // BPS
    receipt = transact(w3, owner, agent, "bid", task_id, price)
    assert receipt["status"] == 1
    (placed,) = bid.events.BidPlaced().process_receipt(receipt, errors=DISCARD)
    assert placed["address"] == BID
    assert dict(placed["args"]) == {"taskId": task_id, "provider": agent.address, "price": price, "collateral": collateral}
    (mine,) = agent.events.Bidding().process_receipt(receipt, errors=DISCARD)
    assert dict(mine["args"]) == {"taskId": task_id, "price": price, "client": client.address}
    assert bid.functions.bidsOf(task_id).call() == [[agent.address], [price]]
    assert agent.functions.bids().call() == 1
    assert agent.functions.myStake().call() == [200 * OGPU, collateral, Role.PROVIDER]
    assert stake_record(stake, agent.address) == StakeRecord(
        staked=200 * OGPU, locked=collateral, unbonding=0, release_time=0, roles=Role.PROVIDER,
    )
    assert task_record(task, task_id).state == TaskState.BIDDING  # no firstN: still open


def test_a_bid_revert_bubbles_up_through_the_solidity_contract_with_its_reason(
    w3, contracts, dev_accounts, provider_agent
):
    """Rule: a Bid rule broken inside a contract's call reverts the whole call with Bid's Error(reason),
    which Solidity re-raises verbatim, so web3.py raises ContractLogicError("execution reverted: <reason>")
    from eth_call and eth_estimateGas, and a mined transaction fails leaving no bid and no lock."""
    stake, task, bid = contracts["Stake"], contracts["Task"], contracts["Bid"]
    _, task_id, _ = submit_task(w3, dev_accounts[3], task)
    owner = dev_accounts[4]
    agent, _ = ready_agent(w3, owner, provider_agent, stake)
    me = checksum(owner.address)

    too_high = agent.functions.bid(task_id, MAX_PAYMENT + 1)
    for attempt in (too_high.call, too_high.estimate_gas):
        with pytest.raises(ContractLogicError) as failure:
            attempt({"from": me})
        assert failure.value.message == f"execution reverted: {BID_ABOVE_MAXIMUM}"
        assert failure.value.data == "0x" + error_data(BID_ABOVE_MAXIMUM).hex()

    receipt = transact(w3, owner, agent, "bid", task_id, MAX_PAYMENT + 1, gas=300_000)
    assert receipt["status"] == 0 and receipt["logs"] == []
    assert bid.functions.bidsOf(task_id).call() == [[], []]
    assert agent.functions.bids().call() == 0
    assert stake_record(stake, agent.address) == StakeRecord(
        staked=200 * OGPU, locked=0, unbonding=0, release_time=0, roles=Role.PROVIDER,
    )

    # A bid at exactly maxPayment is allowed.
    assert transact(w3, owner, agent, "bid", task_id, MAX_PAYMENT)["status"] == 1
    assert bid.functions.bidsOf(task_id).call() == [[agent.address], [MAX_PAYMENT]]
