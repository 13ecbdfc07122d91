"""Recovery of the signer of a 32-byte hash (65-byte r ‖ s ‖ v signatures, v in {0, 1} or {27, 28})."""

from __future__ import annotations

from eth_hash.auto import keccak
from eth_keys import KeyAPI
from eth_keys.backends import CoinCurveECCBackend
from eth_keys.constants import SECPK1_N
from eth_keys.exceptions import BadSignature, ValidationError

_KEYS = KeyAPI(CoinCurveECCBackend)
SECP256K1_N = SECPK1_N  # order of the secp256k1 group: private keys and r, s lie in 1..n-1
SECP256K1_HALF_N = SECPK1_N // 2  # EIP-2: s above this has a twin (n - s) that verifies too


class InvalidSignature(ValueError):
    pass


def is_canonical_rs(r: int, s: int) -> bool:
    """Whether (r, s) is in range with a low s (EIP-2), so that a signature has only one valid form."""
    return 0 < r < SECP256K1_N and 0 < s <= SECP256K1_HALF_N


def recover_signer(message_hash: bytes, signature: bytes) -> bytes:
    """The address that signed `message_hash`; rejects malformed and high-s (malleable) signatures."""
    if len(signature) != 65:
        raise InvalidSignature("signature must be 65 bytes")
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise InvalidSignature("signature recovery id must be 0 or 1")
    if int.from_bytes(signature[32:64], "big") > SECP256K1_HALF_N:
        raise InvalidSignature("signature s value is in the upper half of the curve order")
    try:
        sig = _KEYS.Signature(signature[:64] + bytes([v]))
        return sig.recover_public_key_from_msg_hash(message_hash).to_canonical_address()
    except (BadSignature, ValidationError) as exc:
        raise InvalidSignature(f"cannot recover signer: {exc}") from None


def recover_address(message_hash: bytes, r: int, s: int, y_parity: int) -> bytes:
    """The signer's address straight from libsecp256k1 (coincurve), without eth-keys' objects:
    the hot path of transaction admission and block import."""
    from coincurve import PublicKey

    try:
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([y_parity])
        public_key = PublicKey.from_signature_and_message(signature, message_hash, hasher=None)
    except (ValueError, OverflowError, TypeError) as exc:
        raise InvalidSignature(f"cannot recover signer: {exc}") from None
    return keccak(public_key.format(compressed=False)[1:])[-20:]
