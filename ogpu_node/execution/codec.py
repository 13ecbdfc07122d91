"""Bytes in, py-evm objects out (and back): transactions, blocks, receipts."""

from __future__ import annotations

import rlp
from eth.abc import BlockAPI, ReceiptAPI, SignedTransactionAPI
from eth_utils import ValidationError as EthUtilsValidationError

from ogpu_node.execution.errors import InvalidBlock, InvalidTransaction
from ogpu_node.execution.vm import OgpuVM

_TX_BUILDER = OgpuVM.get_transaction_builder()
_RECEIPT_BUILDER = OgpuVM.get_receipt_builder()
_BLOCK_CLASS = OgpuVM.get_block_class()


def decode_transaction(raw: bytes) -> SignedTransactionAPI:
    """Decode a signed transaction (legacy RLP or EIP-2718 typed) and check its fields."""
    if not raw:
        raise InvalidTransaction("typed transaction too short")
    try:
        tx = _TX_BUILDER.decode(raw)
    except (rlp.DecodingError, rlp.DeserializationError, ValueError, TypeError, EthUtilsValidationError) as exc:
        if raw[0] >= 0xC0:
            raise InvalidTransaction(f"rlp: {exc}") from None
        raise InvalidTransaction(f"transaction type not supported or malformed: {exc}") from None
    return tx


def check_transaction(tx: SignedTransactionAPI) -> None:
    """py-evm's static checks: intrinsic gas, signature values. Raises InvalidTransaction."""
    try:
        tx.validate()
    except EthUtilsValidationError as exc:
        message = str(exc)
        if "ntrinsic gas" in message:
            raise InvalidTransaction("intrinsic gas too low") from None
        raise InvalidTransaction(message) from None


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
