"""The start-of-block system call's events reach apps through every log interface (DESIGN.md §2).

A real `ogpu-node run --dev --block-time 1`: a client submits a batch task with a 2 s bid window and
minBids 1, one staked provider bids, and then nobody sends anything. The first block at or after the
bid deadline assigns the task in its system call; its TaskAssigned log must be served by
eth_getLogs, by a filter and by a WebSocket subscription made before the deadline, under the
synthetic transaction hash keccak("ogpu-system" ‖ block hash), whose receipt returns it,
and web3.py must decode it with the ABI of contracts/Task.json.

The test waits on the WebSocket notification itself (a receive with a deadline), never on a sleep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_utils import keccak
from txfactory import sign_tx
from web3 import Web3
from web3.logs import DISCARD
from websockets.sync.client import connect

from ogpu_node.contracts import addresses
from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.types.protocol import Role, TaskState
from ogpu_node.types.records import StakeRecord, TaskRecord, decode_record
from tests.abiterms import struct_arg
from tests.rpccall import rpc

ROOT = Path(__file__).resolve().parents[2]
STAKE, TASK, BID = (Web3.to_checksum_address(a) for a in (addresses.STAKE, addresses.TASK, addresses.BID))
OGPU = 10**18
GAS = 1_000_000
ASSIGNMENT_TIMEOUT_S = 30
RECEIPT_TIMEOUT_S = 30
TASK_ASSIGNED = "0x" + keccak(text="TaskAssigned(uint256,address,uint256,bytes32)").hex()


def abi(name: str) -> list[dict[str, Any]]:
    return json.loads((ABI_DIR / f"{name}.json").read_text())


def send_all(w3: Web3, raws: list[bytes]) -> list[Any]:
    """Send the raw transactions back to back, then wait (polling, with a deadline) for each receipt."""
    hashes = [w3.eth.send_raw_transaction(raw) for raw in raws]
    return [w3.eth.wait_for_transaction_receipt(h, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02) for h in hashes]


def batch_terms(**values: int) -> tuple:
    """The Terms struct in ABI order, from the component names (components not named are their zero)."""
    return struct_arg("Task", "submitTask", "terms", **values)


def test_task_assigned_by_the_system_call_reaches_logs_filters_subscriptions_and_receipts(node_factory, dev_accounts):
    """Rule: an assignment made by the start-of-block system call, in a block with no transaction,
    is served like any log: eth_getLogs, a filter and a `logs` subscription made before the deadline
    all return it, under transactionHash keccak("ogpu-system" ‖ block hash), whose
    eth_getTransactionReceipt has status 1 and exactly the block's system logs; web3 decodes it."""
    node = node_factory("--block-time", "1")
    url = node.http_url
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    task = w3.eth.contract(address=TASK, abi=abi("Task"))
    stake = w3.eth.contract(address=STAKE, abi=abi("Stake"))
    bid = w3.eth.contract(address=BID, abi=abi("Bid"))
    client, provider = dev_accounts[1], dev_accounts[2]
    client_address, provider_address = (Web3.to_checksum_address(a.address) for a in (client, provider))

    # A staked provider with resources and the provider role, in one block.
    nonce = w3.eth.get_transaction_count(provider_address, "pending")
    setup = send_all(w3, [
        sign_tx(provider, nonce, to=STAKE, gas=GAS, data=stake.encode_abi("stake"), value=200 * OGPU).raw,
        sign_tx(provider, nonce + 1, to=STAKE, gas=GAS,
                data=stake.encode_abi("registerResources", args=[0, 8_000, 10, ""])).raw,
        sign_tx(provider, nonce + 2, to=STAKE, gas=GAS, data=stake.encode_abi("setRoles", args=[Role.PROVIDER.value])).raw,
    ])
    assert [r["status"] for r in setup] == [1, 1, 1]
    assert decode_record(StakeRecord, stake.functions.stakeOf(provider_address).call()).roles == Role.PROVIDER

    # Every listener is in place before the task exists, so before its deadline.
    criteria = {"address": TASK, "topics": [TASK_ASSIGNED]}
    filter_id = rpc(url, "eth_newFilter", criteria)
    with connect(node.ws_url, proxy=None, open_timeout=30, close_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["logs", criteria]}))
        subscription = json.loads(ws.recv(timeout=30))["result"]

        # The task (bid window 2 s, minBids 1) and the provider's bid, sent back to back: the bid lands
        # in the same block (after it: equal tips go by arrival) or in the next, both before the deadline.
        task_id = task.functions.taskCount().call() + 1
        max_payment = OGPU
        terms = batch_terms(
            maxPayment=max_payment, councilSize=1, checkpoints=1, segmentWindow=3_600, bidWindow=2,
            minBids=1, confirmWindow=600,
        )
        submit_data = task.encode_abi("submitTask", args=[keccak(text="prescription"), 0, terms])
        price = max_payment // 2
        submitted, placed = send_all(w3, [
            sign_tx(client, w3.eth.get_transaction_count(client_address, "pending"), to=TASK, gas=GAS,
                    data=submit_data, value=2 * max_payment).raw,
            sign_tx(provider, w3.eth.get_transaction_count(provider_address, "pending"), to=BID, gas=GAS,
                    data=bid.encode_abi("placeBid", args=[task_id, price])).raw,
        ])
        assert (submitted["status"], placed["status"]) == (1, 1)
        [submitted_event] = task.events.TaskSubmitted().process_receipt(submitted, errors=DISCARD)
        assert submitted_event["args"]["taskId"] == task_id
        bid_deadline = submitted_event["args"]["bidDeadline"]

        # Nothing more is sent. Wait for the assignment to be pushed (a receive with a deadline).
        message = json.loads(ws.recv(timeout=ASSIGNMENT_TIMEOUT_S))
    assert message["method"] == "eth_subscription" and message["params"]["subscription"] == subscription
    log = message["params"]["result"]

    number = int(log["blockNumber"], 16)
    block = rpc(url, "eth_getBlockByNumber", hex(number), False)
    synthetic = "0x" + keccak(b"ogpu-system" + bytes.fromhex(block["hash"][2:])).hex()
    parent = rpc(url, "eth_getBlockByNumber", hex(number - 1), False)
    # The first block at or after the deadline made the assignment, with no transaction in it.
    assert block["transactions"] == []
    assert int(parent["timestamp"], 16) < bid_deadline <= int(block["timestamp"], 16)
    assert number > placed["blockNumber"]
    assert log["transactionHash"] == synthetic
    assert (log["address"], log["blockHash"], log["removed"]) == (TASK.lower(), block["hash"], False)
    assert log["topics"] == [
        TASK_ASSIGNED, "0x" + task_id.to_bytes(32, "big").hex(), "0x" + provider.address.rjust(32, b"\0").hex(),
    ]

    # eth_getLogs, over the range and by block hash.
    assert rpc(url, "eth_getLogs", {"fromBlock": hex(submitted["blockNumber"]), "toBlock": "latest", **criteria}) == [log]
    block_logs = rpc(url, "eth_getLogs", {"blockHash": block["hash"]})
    assert log in block_logs
    # The filter made before the deadline: its changes hold the log once.
    assert rpc(url, "eth_getFilterChanges", filter_id) == [log]
    assert rpc(url, "eth_getFilterChanges", filter_id) == []

    # The receipt of the synthetic hash: status 1, no gas, exactly the block's (system) logs, first.
    receipt = rpc(url, "eth_getTransactionReceipt", synthetic)
    assert (receipt["status"], receipt["gasUsed"], receipt["transactionHash"], receipt["blockHash"]) == (
        "0x1", "0x0", synthetic, block["hash"],
    )
    assert receipt["logs"] == block_logs
    assert [int(entry["logIndex"], 16) for entry in receipt["logs"]] == list(range(len(block_logs)))
    assert all(entry["transactionHash"] == synthetic for entry in block_logs)

    # web3.py decodes it with the ABI of contracts/Task.json.
    seed = keccak(bytes.fromhex(block["mixHash"][2:]) + task_id.to_bytes(32, "big"))
    [decoded] = task.events.TaskAssigned().process_receipt(
        w3.eth.get_transaction_receipt(synthetic), errors=DISCARD  # BidsClosed is Bid's event
    )
    assert dict(decoded["args"]) == {"taskId": task_id, "executor": provider_address, "price": price, "seed": seed}
    assert decoded["transactionHash"].to_0x_hex() == synthetic
    assert decoded["blockNumber"] == number
    [from_get_logs] = w3.eth.get_logs({"blockHash": block["hash"], **criteria})
    assert dict(task.events.TaskAssigned().process_log(from_get_logs)["args"]) == dict(decoded["args"])
    record = decode_record(TaskRecord, task.functions.getTask(task_id).call())
    assert (record.state, record.executor, record.price, record.seed) == (TaskState.RUNNING, provider_address, price, seed)
