"""One transaction factory for the tests and benchmarks: sign locally, get raw bytes, hash and sender.

    from txfactory import sign_tx              # tests (tests/ is on pytest's pythonpath)
    from tests.txfactory import sign_tx        # benchmarks (`python -m benchmarks.run_all` from the root)

    tx = sign_tx(account, 0, to=receiver, value=1)                    # EIP-1559 (type 2), chain id 1337, nonce 0
    tx.raw, tx.hash, tx.sender                                        # bytes, 32-byte hash, 20-byte address
    tx.raw_hex, tx.hash_hex                                           # "0x..." for JSON-RPC
    tx.decoded                                                        # py-evm Prague transaction (for Chain)
    tx.v, tx.r, tx.s                                                  # y parity for typed txs, EIP-155 v for legacy

    sign_tx(key, nonce=3, data=init_code, gas=3_000_000)              # contract creation (`to` left out)
    sign_tx(key, nonce=0, to=addr, tip=2 * GWEI, max_fee=50 * GWEI)   # custom EIP-1559 fees
    sign_tx(key, nonce=0, to=addr, gas_price=10 * GWEI)               # legacy, EIP-155 (chain id in v)
    sign_tx(key, nonce=0, to=addr, gas_price=10 * GWEI, chain_id=None)  # legacy, unprotected (v = 27/28)
    sign_tx(key, nonce=0, to=addr, gas_price=GWEI, access_list=[(addr, [0])])  # EIP-2930 (type 1)
    sign_tx(key, nonce=0, to=addr, access_list=[(addr, [0, 1])])      # EIP-1559 with an access list

`key` is a 32-byte private key or anything with a `private_key` attribute (a dev account's
`Keypair`); `to` is 20 bytes, a hex address (checksummed or not) or None for a contract creation;
`data` is bytes or a 0x-hex string (what web3's `encode_abi` returns). The type follows from the fee fields: `gas_price` makes a legacy
transaction (type 1 with an access list), otherwise `tip`/`max_fee` make an EIP-1559 one.

Signing is eth-keys' deterministic RFC 6979 (the same signature eth-account makes), through py-evm's
transaction builder; the signed object is re-decoded from its raw bytes because py-evm's signer
returns a London-typed transaction under Prague (DESIGN.md §2), so `decoded` is what a block holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from eth.vm.forks.prague import PragueVM
from eth_keys import keys
from eth_utils import keccak, to_bytes, to_canonical_address

CHAIN_ID = 1337  # the dev chain (ogpu_node/config/networks/dev.json)
GWEI = 10**9
TIP = GWEI
MAX_FEE = 10 * GWEI
TRANSFER_GAS = 21_000
BUILDER = PragueVM.get_transaction_builder()

Address = bytes | str
AccessList = Sequence[tuple[Address, Sequence[int]]]


class HasPrivateKey(Protocol):
    private_key: bytes


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction as it goes on the wire, with what tests check about it."""

    raw: bytes
    sender: bytes

    @property
    def hash(self) -> bytes:
        return keccak(self.raw)

    @property
    def raw_hex(self) -> str:
        return "0x" + self.raw.hex()

    @property
    def hash_hex(self) -> str:
        return "0x" + self.hash.hex()

    @cached_property
    def decoded(self) -> Any:
        """The Prague transaction object a block holds (py-evm's `BUILDER.decode(raw)`)."""
        return BUILDER.decode(self.raw)

    @property
    def v(self) -> int:
        """y parity (0/1) for a typed transaction; 27/28 or 2·chain id + 35/36 (EIP-155) for a legacy one."""
        typed = self.raw[0] <= 0x7F  # EIP-2718: a typed envelope starts with its type byte, RLP lists above 0xC0
        return self.decoded.y_parity if typed else self.decoded.v

    @property
    def r(self) -> int:
        return self.decoded.r

    @property
    def s(self) -> int:
        return self.decoded.s


def _private_key(key: bytes | HasPrivateKey) -> keys.PrivateKey:
    return keys.PrivateKey(bytes(key if isinstance(key, bytes | bytearray) else key.private_key))


def _address(to: Address | None) -> bytes:
    if to is None:
        return b""  # contract creation
    return to_canonical_address(to)


def _data(data: bytes | str) -> bytes:
    """Calldata as bytes; a hex string (what web3's `encode_abi` returns) is decoded."""
    return to_bytes(hexstr=data) if isinstance(data, str) else bytes(data)


def _access_list(entries: AccessList) -> list[tuple[bytes, list[int]]]:
    return [(_address(address), list(slots)) for address, slots in entries]


def sign_tx(
    key: bytes | HasPrivateKey,
    nonce: int,
    *,
    to: Address | None = None,
    value: int = 0,
    data: bytes | str = b"",
    gas: int = TRANSFER_GAS,
    tip: int = TIP,
    max_fee: int = MAX_FEE,
    gas_price: int | None = None,
    access_list: AccessList | None = None,
    chain_id: int | None = CHAIN_ID,
) -> SignedTx:
    """Sign one transaction; the fee fields choose its type (see the module docstring).

    `chain_id=None` is only for a legacy transaction (unprotected, pre-EIP-155 signature).
    """
    private_key = _private_key(key)
    common = {"nonce": nonce, "gas": gas, "to": _address(to), "value": value, "data": _data(data)}
    if gas_price is None:
        if chain_id is None:
            raise ValueError("an EIP-1559 transaction always carries a chain id")
        unsigned = BUILDER.new_unsigned_dynamic_fee_transaction(
            chain_id=chain_id, max_priority_fee_per_gas=tip, max_fee_per_gas=max_fee,
            access_list=_access_list(access_list or ()), **common,
        )
    elif access_list is not None:
        if chain_id is None:
            raise ValueError("an EIP-2930 transaction always carries a chain id")
        unsigned = BUILDER.new_unsigned_access_list_transaction(
            chain_id=chain_id, gas_price=gas_price, access_list=_access_list(access_list), **common,
        )
    else:
        unsigned = BUILDER.create_unsigned_transaction(gas_price=gas_price, **common)
    raw = unsigned.as_signed_transaction(private_key, chain_id=chain_id).encode()
    return SignedTx(raw, private_key.public_key.to_canonical_address())
