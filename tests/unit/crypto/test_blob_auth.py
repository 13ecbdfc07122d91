"""The upload signature is a plain EIP-191 personal message: any wallet's `personal_sign` makes one the
node accepts, and it binds the chain, the blob's hash and its size."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ogpu_node.crypto import Keypair
from ogpu_node.crypto.blob_auth import sign_upload, upload_message, upload_signer
from ogpu_node.crypto.signatures import InvalidSignature

KEY = Keypair.from_private_key(b"\x11" * 32)
HASH = bytes(range(32))


def test_a_wallet_signature_of_the_message_is_accepted():
    text = upload_message(1337, HASH, 12345)
    assert text == f"OpenGPU blob upload\nchain: 1337\nhash: 0x{HASH.hex()}\nsize: 12345"
    signed = Account.sign_message(encode_defunct(text=text), KEY.private_key)
    assert upload_signer(f"OGPU-Blob {signed.signature.hex()}", 1337, HASH, 12345) == KEY.address
    assert sign_upload(KEY, 1337, HASH, 12345).startswith("OGPU-Blob 0x")
    assert upload_signer(sign_upload(KEY, 1337, HASH, 12345), 1337, HASH, 12345) == KEY.address


@pytest.mark.parametrize("chain_id, blob_hash, size", [(1, HASH, 12345), (1337, HASH[::-1], 12345), (1337, HASH, 12346)])
def test_the_signature_binds_chain_hash_and_size(chain_id, blob_hash, size):
    assert upload_signer(sign_upload(KEY, 1337, HASH, 12345), chain_id, blob_hash, size) != KEY.address


@pytest.mark.parametrize("header", [
    "", "OGPU-Blob", "Basic 0x00", "OGPU-Blob 0xnothex", "OGPU-Blob 0x" + "00" * 64, "OGPU-Blob 0x" + "ff" * 65,
    "OGPU-Blob 0x" + "11" * 10_000, b"OGPU-Blob \xff\xfe",
])
def test_malformed_headers_are_refused(header):
    with pytest.raises(InvalidSignature):
        upload_signer(header, 1337, HASH, 1)
