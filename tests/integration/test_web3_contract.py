"""web3.py 8 against a real `ogpu-node run --dev`: a Vyper contract's life (deploy, view, events,
revert), log queries and filters, transfers of both fee types with exact balances, receipts and
transaction lookups. Every transaction is signed locally and sent with eth_sendRawTransaction.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from contracts.compile import compile_contract
from eth_abi import encode
from eth_utils import keccak
from txfactory import CHAIN_ID, GWEI, MAX_FEE, TIP, sign_tx
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.utils import get_create_address

OGPU = 10**18
STORED = keccak(text="Stored(address,uint256)")
CLEARED = keccak(text="Cleared(address)")
RECEIPT_TIMEOUT_S = 30


# -- helpers --


def checksum(address: bytes) -> str:
    return Web3.to_checksum_address(address)


def topic_of(address: bytes) -> bytes:
    return address.rjust(32, b"\x00")


def send(w3: Web3, raw: bytes) -> Any:
    """Send a raw transaction and wait (polling, with a deadline) for its receipt."""
    tx_hash = w3.eth.send_raw_transaction(raw)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02)


def next_nonce(w3: Web3, key: Any) -> int:
    return w3.eth.get_transaction_count(checksum(key.address), "pending")


def rpc_batch(url: str, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """One HTTP request carrying a JSON-RPC batch (web3 would split it into several requests)."""
    body = json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    ).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    # No proxy handler: the request goes straight to the node on 127.0.0.1, whatever the environment.
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
        return sorted(json.loads(response.read()), key=lambda r: r["id"])


class Store:
    """A deployed tests/contracts/Store.vy."""

    def __init__(self, w3: Web3, deployer: Any, initial: int = 7) -> None:
        compiled = compile_contract("Store")
        self.w3 = w3
        init_code = compiled.bytecode + encode(["uint256"], [initial])
        nonce = next_nonce(w3, deployer)
        gas = w3.eth.estimate_gas({"from": checksum(deployer.address), "data": init_code})
        self.deploy_gas_limit = gas
        self.receipt = send(w3, sign_tx(deployer, nonce, gas=gas, data=init_code).raw)
        self.deployer = deployer
        self.deploy_nonce = nonce
        self.address = self.receipt["contractAddress"]
        self.contract = w3.eth.contract(address=self.address, abi=compiled.abi)

    def tx(self, key: Any, function: str, *args: Any, gas: int = 200_000, nonce: int | None = None, **fee: Any) -> bytes:
        data = self.contract.encode_abi(function, args=list(args))
        nonce = next_nonce(self.w3, key) if nonce is None else nonce
        return sign_tx(key, nonce, to=self.address, gas=gas, data=data, **fee).raw

    def call(self, key: Any, function: str, *args: Any) -> Any:
        return send(self.w3, self.tx(key, function, *args))

    def decode(self, logs: list[Any]) -> list[tuple[str, str, int | None]]:
        """(event, who, value) of each log, decoded with the contract ABI."""
        out = []
        for entry in logs:
            name = {STORED: "Stored", CLEARED: "Cleared"}[bytes(entry["topics"][0])]
            event = getattr(self.contract.events, name)().process_log(entry)
            out.append((event["event"], event["args"]["who"], event["args"].get("value")))
        return out


@pytest.fixture
def w3(dev_node) -> Web3:
    return Web3(Web3.HTTPProvider(dev_node.http_url, request_kwargs={"timeout": 30}))


# -- tests --


def test_deploy_receipt_names_the_create_address_and_the_view_reads_constructor_state(w3, dev_accounts):
    """Rule: a CREATE transaction's receipt carries contractAddress = keccak(rlp(sender, nonce))[12:],
    `to` null, status 1; the code is there and views (eth_call) read the state the constructor wrote."""
    deployer = dev_accounts[0]
    store = Store(w3, deployer, initial=21)
    receipt = store.receipt
    assert receipt["status"] == 1
    assert receipt["type"] == 2
    assert receipt["from"] == checksum(deployer.address)
    assert receipt["to"] is None
    assert store.address == get_create_address(checksum(deployer.address), store.deploy_nonce)
    assert receipt["blockNumber"] == 1
    assert receipt["transactionIndex"] == 0
    assert receipt["cumulativeGasUsed"] == receipt["gasUsed"]
    assert 53_000 < receipt["gasUsed"] <= store.deploy_gas_limit
    assert receipt["logs"] == []
    block = w3.eth.get_block(1)
    assert receipt["blockHash"] == block["hash"]
    assert block["transactions"] == [receipt["transactionHash"]]
    assert block["gasUsed"] == receipt["gasUsed"]
    assert receipt["effectiveGasPrice"] == block["baseFeePerGas"] + TIP
    assert w3.eth.get_code(store.address) == compile_contract("Store").runtime

    assert store.contract.functions.value().call() == 21
    assert store.contract.functions.doubled().call() == 42
    assert store.contract.functions.writes().call() == 0
    # A view at an earlier block reads that block's state: before the deploy there is no code.
    assert w3.eth.get_code(store.address, block_identifier=0) == b""


def test_get_logs_filters_by_address_topic_positions_or_lists_and_block_range(w3, dev_accounts):
    """Rule: eth_getLogs returns, in chain order, exactly the logs whose address is one of `address`
    and whose topic at each position is one of that position's list (null = any), within
    [fromBlock, toBlock], or within one block given by blockHash."""
    a, b, c = dev_accounts[1], dev_accounts[2], dev_accounts[3]
    store = Store(w3, dev_accounts[0])
    other = Store(w3, dev_accounts[0])
    r1 = store.call(a, "store", 1)
    r2 = store.call(b, "store", 2)
    r3 = store.call(a, "clear")
    r4 = other.call(c, "store", 3)
    r5 = store.call(c, "store_pair", 4, 5)
    assert [r["status"] for r in (r1, r2, r3, r4, r5)] == [1, 1, 1, 1, 1]
    assert [r["blockNumber"] for r in (r1, r2, r3, r4, r5)] == [3, 4, 5, 6, 7]
    A, B, C = checksum(a.address), checksum(b.address), checksum(c.address)

    def logs(**criteria: Any) -> list[Any]:
        return w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", **criteria})

    by_stored = logs(address=store.address, topics=[STORED])
    assert store.decode(by_stored) == [("Stored", A, 1), ("Stored", B, 2), ("Stored", C, 4), ("Stored", C, 5)]
    either = logs(address=store.address, topics=[[STORED, CLEARED]])
    assert store.decode(either) == [
        ("Stored", A, 1), ("Stored", B, 2), ("Cleared", A, None), ("Stored", C, 4), ("Stored", C, 5)
    ]
    # Only position 1 constrained: both event kinds of sender a.
    by_sender = logs(address=store.address, topics=[None, topic_of(a.address)])
    assert store.decode(by_sender) == [("Stored", A, 1), ("Cleared", A, None)]
    # No address: both contracts; an OR-list in position 1.
    by_senders = logs(topics=[STORED, [topic_of(b.address), topic_of(c.address)]])
    assert [(entry["address"], entry["blockNumber"]) for entry in by_senders] == [
        (store.address, 4), (other.address, 6), (store.address, 7), (store.address, 7)
    ]
    assert store.decode(by_senders) == [("Stored", B, 2), ("Stored", C, 3), ("Stored", C, 4), ("Stored", C, 5)]
    # A block range, both addresses.
    ranged = logs(address=[store.address, other.address], topics=[STORED], fromBlock=4, toBlock=6)
    assert store.decode(ranged) == [("Stored", B, 2), ("Stored", C, 3)]
    assert logs(address=store.address, fromBlock=5, toBlock=5) == [r3["logs"][0]]
    # One block by hash: the two logs of one transaction, consecutive log indexes.
    pair = w3.eth.get_logs({"blockHash": r5["blockHash"]})
    assert pair == r5["logs"]
    assert [(e["logIndex"], e["transactionIndex"], e["transactionHash"]) for e in pair] == [
        (0, 0, r5["transactionHash"]), (1, 0, r5["transactionHash"])
    ]
    # A null inside an OR-list makes that position a wildcard (geth's reading of [null, X]).
    raw = w3.provider.make_request(
        "eth_getLogs", [{"fromBlock": "0x0", "address": store.address, "topics": [[None, "0x" + CLEARED.hex()]]}]
    )["result"]
    assert [entry["transactionHash"] for entry in raw] == [
        r["transactionHash"].to_0x_hex() for r in (r1, r2, r3, r5, r5)
    ]
    # Nothing matches an unknown topic, a position past the log's topics, or another address.
    assert logs(topics=[keccak(text="Nope()")]) == []
    assert logs(topics=[STORED, None, topic_of(a.address)]) == []
    assert logs(address=checksum(b"\x42" * 20)) == []
    # Each returned log is the one in its receipt, field for field.
    assert by_stored[0] == r1["logs"][0]
    assert by_stored[0]["removed"] is False
    assert by_stored[0]["data"] == encode(["uint256"], [1])
    assert by_stored[0]["topics"] == [STORED, topic_of(a.address)]


def test_log_filter_and_block_filter_report_each_change_once(w3, dev_accounts):
    """Rule: eth_getFilterChanges returns what arrived since the previous poll (logs of a log
    filter, block hashes of a block filter), each once; eth_getFilterLogs returns every log in the
    filter's range; an uninstalled filter is gone."""
    a = dev_accounts[1]
    store = Store(w3, dev_accounts[0])
    deployed_at = store.receipt["blockNumber"]
    log_filter = w3.eth.filter({"address": store.address, "topics": [STORED], "fromBlock": deployed_at})
    block_filter = w3.eth.filter("latest")
    bounded = w3.eth.filter({"address": store.address, "fromBlock": deployed_at, "toBlock": deployed_at + 2})
    assert log_filter.get_new_entries() == []
    assert block_filter.get_new_entries() == []

    r1 = store.call(a, "store", 1)
    r2 = store.call(a, "store", 2)
    r3 = store.call(a, "clear")  # Cleared: not Stored, and past the bounded filter's toBlock
    assert [r["blockNumber"] for r in (r1, r2, r3)] == [deployed_at + 1, deployed_at + 2, deployed_at + 3]

    changes = log_filter.get_new_entries()
    assert store.decode(changes) == [("Stored", checksum(a.address), 1), ("Stored", checksum(a.address), 2)]
    assert changes == [r1["logs"][0], r2["logs"][0]]
    assert log_filter.get_new_entries() == []
    assert block_filter.get_new_entries() == [r1["blockHash"], r2["blockHash"], r3["blockHash"]]
    assert block_filter.get_new_entries() == []

    r4 = store.call(a, "store", 4)
    assert log_filter.get_new_entries() == r4["logs"]
    assert block_filter.get_new_entries() == [r4["blockHash"]]
    assert store.decode(log_filter.get_all_entries()) == [
        ("Stored", checksum(a.address), 1), ("Stored", checksum(a.address), 2), ("Stored", checksum(a.address), 4)
    ]
    # The bounded filter (deployed_at .. deployed_at+2) never reports logs past its toBlock.
    assert bounded.get_all_entries() == [r1["logs"][0], r2["logs"][0]]
    assert bounded.get_new_entries() == [r1["logs"][0], r2["logs"][0]]
    # A block filter has no logs to list.
    response = w3.provider.make_request("eth_getFilterLogs", [block_filter.filter_id])
    assert response["error"] == {"code": -32000, "message": "filter not found"}

    assert w3.eth.uninstall_filter(log_filter.filter_id) is True
    assert w3.eth.uninstall_filter(log_filter.filter_id) is False
    response = w3.provider.make_request("eth_getFilterChanges", [log_filter.filter_id])
    assert response["error"] == {"code": -32000, "message": "filter not found"}


def test_transfers_of_both_fee_types_move_exact_balances(w3, dev_accounts):
    """Rule: a transfer debits the sender value + gasUsed * effectiveGasPrice and credits the receiver
    value; effectiveGasPrice is min(maxFee, baseFee + tip) for EIP-1559 and gasPrice for legacy."""
    sender, receiver = dev_accounts[4], dev_accounts[5]
    legacy_sender, legacy_receiver = dev_accounts[6], dev_accounts[7]
    S, R = checksum(sender.address), checksum(receiver.address)
    LS, LR = checksum(legacy_sender.address), checksum(legacy_receiver.address)
    value = 3 * OGPU // 2

    signature = sign_tx(sender, 0, to=R, value=value, gas=21_000)
    raw = signature.raw
    receipt = send(w3, raw)
    n = receipt["blockNumber"]
    block = w3.eth.get_block(n)
    assert receipt["status"] == 1
    assert receipt["type"] == 2
    assert (receipt["from"], receipt["to"], receipt["contractAddress"]) == (S, R, None)
    assert (receipt["gasUsed"], receipt["cumulativeGasUsed"], receipt["logs"]) == (21_000, 21_000, [])
    assert receipt["effectiveGasPrice"] == min(MAX_FEE, block["baseFeePerGas"] + TIP)
    assert receipt["transactionHash"] == keccak(raw)
    fee = 21_000 * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(S, n - 1) == 10_000 * OGPU
    assert w3.eth.get_balance(S, n) == 10_000 * OGPU - value - fee
    assert w3.eth.get_balance(R, n) == 10_000 * OGPU + value
    assert w3.eth.get_transaction_count(S) == 1

    tx = w3.eth.get_transaction(receipt["transactionHash"])
    assert tx["hash"] == keccak(raw)
    assert (tx["type"], tx["chainId"], tx["nonce"], tx["from"], tx["to"]) == (2, CHAIN_ID, 0, S, R)
    assert (tx["value"], tx["gas"], tx["input"]) == (value, 21_000, b"")
    assert (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (MAX_FEE, TIP)
    assert tx["gasPrice"] == receipt["effectiveGasPrice"]
    assert (tx["blockHash"], tx["blockNumber"], tx["transactionIndex"]) == (block["hash"], n, 0)
    assert tx["accessList"] == []
    # r and s are quantities (no leading zeros), as geth serves them.
    assert (int.from_bytes(tx["r"]), int.from_bytes(tx["s"]), tx["v"], tx["yParity"]) == (
        signature.r, signature.s, signature.v, signature.v
    )

    legacy_price = 2 * GWEI
    value2 = OGPU // 4
    signature2 = sign_tx(legacy_sender, 0, to=LR, value=value2, gas=21_000, gas_price=legacy_price)
    receipt2 = send(w3, signature2.raw)
    n2 = receipt2["blockNumber"]
    assert receipt2["status"] == 1
    assert receipt2["type"] == 0
    assert (receipt2["from"], receipt2["to"], receipt2["contractAddress"]) == (LS, LR, None)
    assert (receipt2["gasUsed"], receipt2["cumulativeGasUsed"]) == (21_000, 21_000)
    assert receipt2["effectiveGasPrice"] == legacy_price
    assert w3.eth.get_balance(LS, n2 - 1) == 10_000 * OGPU
    assert w3.eth.get_balance(LS, n2) == 10_000 * OGPU - value2 - 21_000 * legacy_price
    assert w3.eth.get_balance(LR, n2) == 10_000 * OGPU + value2
    tx2 = w3.eth.get_transaction(receipt2["transactionHash"])
    assert (tx2["type"], tx2["nonce"], tx2["from"], tx2["to"], tx2["value"]) == (0, 0, LS, LR, value2)
    assert tx2["gasPrice"] == legacy_price
    assert tx2["chainId"] == CHAIN_ID
    assert tx2["v"] == signature2.v and signature2.v in (2 * CHAIN_ID + 35, 2 * CHAIN_ID + 36)  # EIP-155
    assert (int.from_bytes(tx2["r"]), int.from_bytes(tx2["s"])) == (signature2.r, signature2.s)
    assert "maxFeePerGas" not in tx2


def test_two_transactions_in_one_block_number_receipts_and_logs_in_order(w3, dev_node, dev_accounts):
    """Rule: within a block, transactionIndex follows block order, cumulativeGasUsed sums gasUsed up
    to the transaction, logIndex counts across the whole block; eth_getBlockReceipts and
    eth_getTransactionByBlockNumberAndIndex agree with the per-hash lookups."""
    key = dev_accounts[8]
    store = Store(w3, dev_accounts[0])
    nonce = next_nonce(w3, key)
    first = store.tx(key, "store_pair", 4, 5, nonce=nonce)
    second = store.tx(key, "store", 9, nonce=nonce + 1)
    # One HTTP batch: both reach the pool before the producer wakes, so they share a block.
    replies = rpc_batch(dev_node.http_url, [
        ("eth_sendRawTransaction", ["0x" + first.hex()]), ("eth_sendRawTransaction", ["0x" + second.hex()]),
    ])
    assert [r["result"] for r in replies] == ["0x" + keccak(first).hex(), "0x" + keccak(second).hex()]
    r1 = w3.eth.wait_for_transaction_receipt(keccak(first), timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02)
    r2 = w3.eth.wait_for_transaction_receipt(keccak(second), timeout=RECEIPT_TIMEOUT_S, poll_latency=0.02)
    n = r1["blockNumber"]
    assert r2["blockNumber"] == n and r2["blockHash"] == r1["blockHash"]
    block = w3.eth.get_block(n)
    assert block["transactions"] == [keccak(first), keccak(second)]
    assert (r1["transactionIndex"], r2["transactionIndex"]) == (0, 1)
    assert r1["cumulativeGasUsed"] == r1["gasUsed"]
    assert r2["cumulativeGasUsed"] == r1["gasUsed"] + r2["gasUsed"] == block["gasUsed"]
    K = checksum(key.address)
    assert [(e["logIndex"], e["transactionIndex"], e["blockHash"], e["blockNumber"]) for e in r1["logs"] + r2["logs"]] == [
        (0, 0, block["hash"], n), (1, 0, block["hash"], n), (2, 1, block["hash"], n)
    ]
    assert store.decode(r1["logs"] + r2["logs"]) == [("Stored", K, 4), ("Stored", K, 5), ("Stored", K, 9)]
    assert store.contract.functions.value().call() == 9
    assert store.contract.functions.writes().call() == 3

    assert w3.eth.get_block_receipts(n) == [r1, r2]
    by_hash = w3.provider.make_request("eth_getBlockReceipts", [{"blockHash": "0x" + block["hash"].hex()}])
    assert [entry["transactionHash"] for entry in by_hash["result"]] == ["0x" + keccak(first).hex(), "0x" + keccak(second).hex()]
    by_index = [w3.eth.get_transaction_by_block(n, i) for i in (0, 1)]
    assert by_index == [w3.eth.get_transaction(keccak(first)), w3.eth.get_transaction(keccak(second))]
    assert [tx["nonce"] for tx in by_index] == [nonce, nonce + 1]
    assert by_index[0]["input"].to_0x_hex() == store.contract.encode_abi("store_pair", args=[4, 5])
    response = w3.provider.make_request("eth_getTransactionByBlockNumberAndIndex", [hex(n), "0x2"])
    assert response["result"] is None


def test_reverting_transaction_is_mined_with_status_0_and_charged_gas(w3, dev_accounts):
    """Rule: eth_call of a reverting function reports the revert reason (code 3, Error(string) data);
    the same call sent as a transaction with explicit gas is mined with status 0, no logs, no state
    change, and the sender pays gasUsed * effectiveGasPrice and uses up its nonce."""
    key = dev_accounts[9]
    K = checksum(key.address)
    store = Store(w3, dev_accounts[0], initial=7)
    with pytest.raises(ContractLogicError) as failure:
        store.contract.functions.store(13).call({"from": K})
    assert failure.value.message == "execution reverted: unlucky number"
    assert failure.value.data == "0x08c379a0" + encode(["string"], ["unlucky number"]).hex()
    response = w3.provider.make_request(
        "eth_estimateGas", [{"from": K, "to": store.address, "data": store.contract.encode_abi("store", args=[13])}]
    )
    assert response["error"]["code"] == 3
    assert response["error"]["message"] == "execution reverted: unlucky number"

    receipt = send(w3, store.tx(key, "store", 13, gas=100_000))
    n = receipt["blockNumber"]
    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert 21_000 < receipt["gasUsed"] < 100_000
    assert w3.eth.get_block(n)["gasUsed"] == receipt["gasUsed"]
    assert w3.eth.get_balance(K, n) == w3.eth.get_balance(K, n - 1) - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_transaction_count(K) == 1
    assert store.contract.functions.value().call() == 7
    assert store.contract.functions.writes().call() == 0
    # The next transaction from the same sender (nonce 1) succeeds.
    assert store.call(key, "store", 14)["status"] == 1
    assert store.contract.functions.value().call() == 14


def test_unknown_transaction_hash_has_no_receipt_and_no_transaction(w3):
    """Rule: eth_getTransactionReceipt and eth_getTransactionByHash of an unknown hash return null."""
    unknown = "0x" + "ab" * 32
    assert w3.provider.make_request("eth_getTransactionReceipt", [unknown])["result"] is None
    assert w3.provider.make_request("eth_getTransactionByHash", [unknown])["result"] is None
    with pytest.raises(TransactionNotFound):
        w3.eth.get_transaction_receipt(unknown)


def test_block_receipts_accept_a_plain_block_hash(w3, dev_accounts):
    """Rule: eth_getBlockReceipts takes a block number, tag, EIP-1898 object or a plain block hash."""
    receipt = send(w3, sign_tx(dev_accounts[1], 0, to=dev_accounts[2].address, value=1).raw)
    assert w3.eth.get_block_receipts(receipt["blockHash"]) == [receipt]
