"""Secp256k1 keys (eth-keys over coincurve) and the well-known dev accounts."""

from __future__ import annotations

from dataclasses import dataclass

from eth_hash.auto import keccak as _keccak
from eth_keys import KeyAPI
from eth_keys.backends import CoinCurveECCBackend

# The same mnemonic as anvil and hardhat, so dev accounts match what users already know.
DEV_MNEMONIC = "test test test test test test test test test test test junk"

_KEYS = KeyAPI(CoinCurveECCBackend)


def keccak(data: bytes) -> bytes:
    return _keccak(data)


def private_key_to_address(private_key: bytes) -> bytes:
    return _KEYS.PrivateKey(private_key).public_key.to_canonical_address()


@dataclass(frozen=True)
class Keypair:
    private_key: bytes
    address: bytes

    @classmethod
    def from_private_key(cls, private_key: bytes) -> Keypair:
        return cls(private_key, private_key_to_address(private_key))

    def sign_hash(self, message_hash: bytes) -> bytes:
        """65-byte r ‖ s ‖ v (v in {0, 1}) signature over a 32-byte hash."""
        return _KEYS.PrivateKey(self.private_key).sign_msg_hash(message_hash).to_bytes()


def derive_dev_accounts(count: int = 10, mnemonic: str = DEV_MNEMONIC) -> list[Keypair]:
    """BIP-44 accounts m/44'/60'/0'/0/i of the mnemonic."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    accounts = []
    for i in range(count):
        acct = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}")
        accounts.append(Keypair(bytes(acct.key), bytes.fromhex(acct.address[2:])))
    return accounts
