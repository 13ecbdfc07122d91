"""The signature that admits a blob upload (docs/rpc.md, "Blobs"): an EIP-191 personal message over the
chain id, the blob's hash and its size, so any wallet can sign it (`personal_sign`) and a signature
admits exactly one blob on one chain. The node recovers the signer and charges the upload to it.

Sent as `Authorization: OGPU-Blob 0x<r ‖ s ‖ v>` with `PUT /blobs/<hash>`.
"""

from __future__ import annotations

from ogpu_node.crypto.keys import Keypair, keccak
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer

SCHEME = "OGPU-Blob"
_MAX_HEADER = 2 + len(SCHEME) + 2 + 130 + 16  # the scheme, "0x", 65 bytes in hex and some spaces


def upload_message(chain_id: int, blob_hash: bytes, size: int) -> str:
    """The text the uploader signs; one line per field, readable in a wallet's signing prompt."""
    if len(blob_hash) != 32:
        raise ValueError("a blob hash is 32 bytes")
    if size < 0:
        raise ValueError("a blob size is not negative")
    return f"OpenGPU blob upload\nchain: {chain_id}\nhash: 0x{blob_hash.hex()}\nsize: {size}"


def upload_digest(chain_id: int, blob_hash: bytes, size: int) -> bytes:
    """keccak("\\x19Ethereum Signed Message:\\n" ‖ len ‖ message): what `personal_sign` signs (EIP-191 0x45)."""
    message = upload_message(chain_id, blob_hash, size).encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def sign_upload(key: Keypair, chain_id: int, blob_hash: bytes, size: int) -> str:
    """The `Authorization` header value for uploading this blob, signed by ``key``."""
    signature = key.sign_hash(upload_digest(chain_id, blob_hash, size))
    return f"{SCHEME} 0x{signature.hex()}"


def upload_signer(authorization: str | bytes, chain_id: int, blob_hash: bytes, size: int) -> bytes:
    """The address that signed this upload; InvalidSignature (a ValueError) for a malformed header or
    signature. A signature over another hash, size or chain recovers some other address."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("ascii", errors="replace")
    if len(authorization) > _MAX_HEADER:
        raise InvalidSignature("the Authorization header is too long")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        raise InvalidSignature(f"the Authorization scheme must be {SCHEME}")
    value = value.strip()
    digits = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        signature = bytes.fromhex(digits)
    except ValueError:
        raise InvalidSignature("the signature is not hex") from None
    return recover_signer(upload_digest(chain_id, blob_hash, size), signature)


__all__ = ["SCHEME", "sign_upload", "upload_digest", "upload_message", "upload_signer"]
