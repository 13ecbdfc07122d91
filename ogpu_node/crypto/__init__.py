"""Keys, signatures and hashing on the coincurve backend."""

from ogpu_node.crypto.keys import (
    DEV_MNEMONIC,
    Keypair,
    derive_dev_accounts,
    keccak,
    private_key_to_address,
)

__all__ = ["DEV_MNEMONIC", "Keypair", "derive_dev_accounts", "keccak", "private_key_to_address"]
