"""Plain-data views of py-evm objects (ints, bytes, lists, dicts) for the layers above.

Field names are the JSON-RPC ones, so `rpc/` only turns ints and bytes into hex.
"""

from __future__ import annotations

from typing import Any

from eth._utils.address import generate_contract_address
from eth.abc import BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI

Json = dict[str, Any]


def tx_type(tx: SignedTransactionAPI) -> int:
    return 0 if tx.type_id is None else tx.type_id


def effective_gas_price(tx: SignedTransactionAPI, base_fee: int) -> int:
    if tx.type_id is None or tx.type_id == 1:
        return tx.gas_price
    return min(tx.max_fee_per_gas, base_fee + tx.max_priority_fee_per_gas)


def effective_tip(tx: SignedTransactionAPI, base_fee: int) -> int:
    return effective_gas_price(tx, base_fee) - base_fee


def header_view(header: BlockHeaderAPI) -> Json:
    return {
        "hash": header.hash,
        "parentHash": header.parent_hash,
        "sha3Uncles": header.uncles_hash,
        "miner": header.coinbase,
        "stateRoot": header.state_root,
        "transactionsRoot": header.transaction_root,
        "receiptsRoot": header.receipt_root,
        "logsBloom": header.bloom.to_bytes(256, "big"),
        "difficulty": header.difficulty,
        "number": header.block_number,
        "gasLimit": header.gas_limit,
        "gasUsed": header.gas_used,
        "timestamp": header.timestamp,
        "extraData": header.extra_data,
        "mixHash": header.mix_hash,
        "nonce": header.nonce,
        "baseFeePerGas": header.base_fee_per_gas,
        "withdrawalsRoot": header.withdrawals_root,
        "blobGasUsed": header.blob_gas_used,
        "excessBlobGas": header.excess_blob_gas,
        "parentBeaconBlockRoot": header.parent_beacon_block_root,
        "requestsHash": header.requests_hash,
    }


def transaction_view(tx: SignedTransactionAPI, sender: bytes) -> Json:
    kind = tx_type(tx)
    view: Json = {
        "hash": tx.hash,
        "type": kind,
        "nonce": tx.nonce,
        "from": sender,
        "to": tx.to or None,
        "value": tx.value,
        "gas": tx.gas,
        "input": tx.data,
        "r": tx.r,
        "s": tx.s,
    }
    if kind == 0:
        view["gasPrice"] = tx.gas_price
        view["v"] = tx.v
        if tx.chain_id is not None:
            view["chainId"] = tx.chain_id
        return view
    view["chainId"] = tx.chain_id
    view["v"] = tx.y_parity
    view["yParity"] = tx.y_parity
    view["accessList"] = [
        {"address": address, "storageKeys": [slot.to_bytes(32, "big") for slot in slots]}
        for address, slots in tx.access_list
    ]
    if kind == 1:
        view["gasPrice"] = tx.gas_price
    else:
        view["maxFeePerGas"] = tx.max_fee_per_gas
        view["maxPriorityFeePerGas"] = tx.max_priority_fee_per_gas
    if kind == 4:
        view["authorizationList"] = [
            {
                "chainId": auth.chain_id,
                "address": auth.address,
                "nonce": auth.nonce,
                "yParity": auth.y_parity,
                "r": auth.r,
                "s": auth.s,
            }
            for auth in tx.authorization_list
        ]
    return view


def receipt_view(
    receipt: ReceiptAPI,
    tx: SignedTransactionAPI,
    sender: bytes,
    previous_cumulative_gas: int,
    base_fee: int,
) -> Json:
    """Receipt fields that do not depend on the block's position (the caller adds block and log indexes)."""
    contract = generate_contract_address(sender, tx.nonce) if not tx.to else None
    return {
        "transactionHash": tx.hash,
        "type": tx_type(tx),
        "from": sender,
        "to": tx.to or None,
        "status": 1 if receipt.state_root == b"\x01" else 0,
        "cumulativeGasUsed": receipt.gas_used,
        "gasUsed": receipt.gas_used - previous_cumulative_gas,
        "effectiveGasPrice": effective_gas_price(tx, base_fee),
        "contractAddress": contract,
        "logsBloom": receipt.bloom.to_bytes(256, "big"),
        "logs": [
            {"address": log.address, "topics": [t.to_bytes(32, "big") for t in log.topics], "data": log.data}
            for log in receipt.logs
        ],
    }
