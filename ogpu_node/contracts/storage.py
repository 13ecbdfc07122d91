"""Typed access to a native contract's EVM storage: named slots, mappings, strings, address sets.

A slot is keccak(name ‖ keys), like a Solidity mapping, so each field of each record has its own slot
and the layout needs no declaration beyond the names used here.
"""

from __future__ import annotations

from collections.abc import Iterator

from eth_hash.auto import keccak

from ogpu_node.contracts.host import Host


def _key(part: bytes | int | str) -> bytes:
    if isinstance(part, bytes):
        return part.rjust(32, b"\x00")
    if isinstance(part, str):
        return keccak(part.encode())
    return part.to_bytes(32, "big")


def slot_of(name: str, *keys: bytes | int | str) -> int:
    return int.from_bytes(keccak(name.encode() + b"".join(_key(k) for k in keys)), "big")


class Storage:
    """Storage of one contract address, read and written through the host (which charges gas)."""

    def __init__(self, host: Host, address: bytes) -> None:
        self.host = host
        self.address = address

    def get(self, name: str, *keys: bytes | int | str) -> int:
        return self.host.sload(self.address, slot_of(name, *keys))

    def set(self, name: str, *keys: bytes | int | str, value: int) -> None:
        if value < 0 or value >= 1 << 256:
            raise OverflowError(f"{name}: {value} does not fit in a storage word")
        self.host.sstore(self.address, slot_of(name, *keys), value)

    def add(self, name: str, *keys: bytes | int | str, delta: int) -> int:
        """Checked add (delta may be negative): over- and underflow raise instead of wrapping."""
        value = self.get(name, *keys) + delta
        self.set(name, *keys, value=value)
        return value

    def get_address(self, name: str, *keys: bytes | int | str) -> bytes:
        return self.get(name, *keys).to_bytes(20, "big")

    def set_address(self, name: str, *keys: bytes | int | str, value: bytes) -> None:
        self.set(name, *keys, value=int.from_bytes(value, "big"))

    def get_bytes(self, name: str, *keys: bytes | int | str) -> bytes:
        length = self.get(name, *keys, "length")
        words = [self.get(name, *keys, i).to_bytes(32, "big") for i in range((length + 31) // 32)]
        return b"".join(words)[:length]

    def set_bytes(self, name: str, *keys: bytes | int | str, value: bytes) -> None:
        old_words = (self.get(name, *keys, "length") + 31) // 32
        self.set(name, *keys, "length", value=len(value))
        padded = value + b"\x00" * (-len(value) % 32)
        new_words = len(padded) // 32
        for i in range(new_words):
            self.set(name, *keys, i, value=int.from_bytes(padded[32 * i : 32 * i + 32], "big"))
        for i in range(new_words, old_words):
            self.set(name, *keys, i, value=0)


class AddressSet:
    """An enumerable set of addresses in storage (count, 1-based index, item by index)."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name

    def __len__(self) -> int:
        return self.storage.get(self.name, "count")

    def __contains__(self, address: bytes) -> bool:
        return self.storage.get(self.name, "index", address) != 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(1, len(self) + 1):
            yield self.storage.get_address(self.name, "item", i)

    def add(self, address: bytes) -> bool:
        if address in self:
            return False
        count = len(self) + 1
        self.storage.set(self.name, "count", value=count)
        self.storage.set_address(self.name, "item", count, value=address)
        self.storage.set(self.name, "index", address, value=count)
        return True

    def remove(self, address: bytes) -> bool:
        index = self.storage.get(self.name, "index", address)
        if index == 0:
            return False
        count = len(self)
        if index != count:  # move the last item into the hole
            last = self.storage.get_address(self.name, "item", count)
            self.storage.set_address(self.name, "item", index, value=last)
            self.storage.set(self.name, "index", last, value=index)
        self.storage.set(self.name, "item", count, value=0)
        self.storage.set(self.name, "index", address, value=0)
        self.storage.set(self.name, "count", value=count - 1)
        return True
