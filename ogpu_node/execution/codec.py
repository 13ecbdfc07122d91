"""Bytes in, py-evm objects out (and back): transactions, blocks, receipts."""

from __future__ import annotations

import rlp
from eth.abc import BlockAPI, ReceiptAPI, SignedTransactionAPI
from eth.constants import GAS_TX
from eth.exceptions import UnrecognizedTransactionType
from eth.vm.forks.cancun.constants import BLOB_TX_TYPE as BLOB_TX_TYPE
from eth.vm.forks.prague.constants import SET_CODE_TRANSACTION_TYPE as SET_CODE_TRANSACTION_TYPE
from eth.vm.forks.prague.constants import STANDARD_TOKEN_COST, TOTAL_COST_FLOOR_PER_TOKEN
from eth.vm.forks.shanghai.constants import MAX_INITCODE_SIZE as MAX_INITCODE_SIZE
from eth_hash.auto import keccak
from eth_utils import ValidationError as EthUtilsValidationError

from ogpu_node.crypto.signatures import InvalidSignature, recover_address
from ogpu_node.execution.errors import InvalidBlock, InvalidTransaction
from ogpu_node.execution.vm import OgpuVM

# BLOB_TX_TYPE, SET_CODE_TRANSACTION_TYPE and MAX_INITCODE_SIZE are re-exported for txpool/, which may not
# import py-evm itself.
_TX_BUILDER = OgpuVM.get_transaction_builder()
_RECEIPT_BUILDER = OgpuVM.get_receipt_builder()
_BLOCK_CLASS = OgpuVM.get_block_class()


def floor_data_gas(data: bytes) -> int:
    """EIP-7623: the least gas a transaction carrying `data` may have (21000 + 10 per calldata token)."""
    zeros = data.count(0)
    tokens = zeros + (len(data) - zeros) * STANDARD_TOKEN_COST
    return GAS_TX + tokens * TOTAL_COST_FLOOR_PER_TOKEN


def decode_transaction(raw: bytes) -> SignedTransactionAPI:
    """Decode a signed transaction (legacy RLP or EIP-2718 typed) and check its fields."""
    if not raw:
        raise InvalidTransaction("typed transaction too short")
    try:
        tx = _TX_BUILDER.decode(raw)
    except UnrecognizedTransactionType:
        raise InvalidTransaction("transaction type not supported") from None
    except (rlp.DecodingError, rlp.DeserializationError, ValueError, TypeError, EthUtilsValidationError) as exc:
        if raw[0] >= 0xC0:
            raise InvalidTransaction(f"rlp: {exc}") from None
        raise InvalidTransaction(f"transaction type not supported or malformed: {exc}") from None
    return tx


def check_gas(tx: SignedTransactionAPI) -> None:
    """Intrinsic gas and the EIP-7623 floor, which py-evm does not check for every type."""
    if tx.gas < tx.intrinsic_gas:
        raise InvalidTransaction(f"intrinsic gas too low: gas {tx.gas}, minimum needed {tx.intrinsic_gas}")
    floor = floor_data_gas(tx.data)
    if tx.gas < floor:
        raise InvalidTransaction(f"insufficient gas for floor data gas cost: gas {tx.gas}, minimum needed {floor}")


def check_transaction(tx: SignedTransactionAPI) -> None:
    """Every static check of a transaction: gas, then py-evm's field checks. Raises InvalidTransaction."""
    check_gas(tx)
    try:
        tx.validate()
    except EthUtilsValidationError as exc:
        raise InvalidTransaction(str(exc)) from None


def recover_sender(tx: SignedTransactionAPI) -> bytes:
    """The sender, recovered once with libsecp256k1 directly and cached where py-evm's own
    `tx.sender` property caches it (a quarter faster than going through eth-keys)."""
    cached = tx.__dict__.get("sender")
    if cached is None:
        try:
            cached = recover_address(keccak(tx.get_message_for_signing()), tx.r, tx.s, tx.y_parity)
        except InvalidSignature:
            raise InvalidTransaction("invalid sender") from None
        tx.__dict__["sender"] = cached
    return cached


def encode_transaction(tx: SignedTransactionAPI) -> bytes:
    return tx.encode()


def decode_receipt(raw: bytes) -> ReceiptAPI:
    return _RECEIPT_BUILDER.decode(raw)


def encode_block(block: BlockAPI) -> bytes:
    return rlp.encode(block)


def decode_block(raw: bytes) -> BlockAPI:
    try:
        return rlp.decode(raw, sedes=_BLOCK_CLASS)
    except (rlp.DecodingError, rlp.DeserializationError, ValueError, TypeError) as exc:
        raise InvalidBlock(f"malformed block: {exc}") from None


def make_block(header, transactions) -> BlockAPI:  # type: ignore[no-untyped-def]
    return _BLOCK_CLASS(header, transactions=list(transactions), uncles=[], withdrawals=[])
