"""Signed blob uploads for tests that speak raw HTTP (the apps sign through `Client`)."""

from __future__ import annotations

from ogpu_node.crypto import Keypair, derive_dev_accounts
from ogpu_node.crypto.blob_auth import sign_upload
from ogpu_node.types.merkle import merkle_root

DEV_CHAIN_ID = 1337
FUNDED = derive_dev_accounts(2)[1]  # a funded dev account that is not the dev signer
UNFUNDED = Keypair.from_private_key(b"\x07" * 32)  # no stake, no balance


def upload_headers(data: bytes, key: Keypair = FUNDED, chain_id: int = DEV_CHAIN_ID, **extra: str) -> dict[str, str]:
    """Headers of a `PUT /blobs/0x<merkle_root(data)>` of ``data`` signed by ``key``."""
    return {
        "Content-Type": "application/octet-stream",
        "Authorization": sign_upload(key, chain_id, merkle_root(data), len(data)),
        **extra,
    }


def blob_path(data: bytes) -> str:
    return f"/blobs/0x{merkle_root(data).hex()}"
