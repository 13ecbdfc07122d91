"""Typed access to a native contract's EVM storage: slots, strings, address sets and stored records.

A slot is keccak(name ‖ keys), like a Solidity mapping, so each field of each record has its own slot.
Records (`StoredRecord`, declared in layout.py) name their fields once; contracts read and write them
by attribute, never by a field name in a string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

from eth_hash.auto import keccak

from ogpu_node.contracts.host import Host

R = TypeVar("R")


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


# -- records: each stored record declared once, read and written field by field --

Key = bytes | int | str


class Slot:
    """One word of a stored record, read with one SLOAD and written with one SSTORE.

    Declared as a class attribute of a `StoredRecord`; `name` is the storage name the slot is derived
    from (the attribute's name unless given), so renaming an attribute keeps the chain's layout.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute
        if self.name is None:
            self.name = attribute

    def __get__(self, record: StoredRecord | None, owner: type) -> Any:
        if record is None:
            return self
        return self.decode(record._store.get(*record._path(self.name)))

    def __set__(self, record: StoredRecord, value: Any) -> None:
        record._store.set(*record._path(self.name), value=self.encode(value))

    def decode(self, word: int) -> Any:
        return word

    def encode(self, value: Any) -> int:
        return int(value)


class Uint(Slot):
    """An unsigned integer; writing a negative value or one above 2²⁵⁶ − 1 raises OverflowError."""


class Flag(Slot):
    def decode(self, word: int) -> bool:
        return word != 0


class Address(Slot):
    def decode(self, word: int) -> bytes:
        return word.to_bytes(20, "big")

    def encode(self, value: bytes) -> int:
        return int.from_bytes(value, "big")


class Bytes32(Slot):
    def decode(self, word: int) -> bytes:
        return word.to_bytes(32, "big")

    def encode(self, value: bytes) -> int:
        return int.from_bytes(value, "big")


class Text(Slot):
    """A UTF-8 string of any length: a length word and as many data words (Storage.get_bytes)."""

    def __get__(self, record: StoredRecord | None, owner: type) -> Any:
        if record is None:
            return self
        return record._store.get_bytes(*record._path(self.name)).decode(errors="replace")

    def __set__(self, record: StoredRecord, value: str) -> None:
        record._store.set_bytes(*record._path(self.name), value=value.encode())


class StoredRecord:
    """A record in a contract's storage at `keys` (a task id, an account, …), one slot per field.

    Two layouts, as the contracts have always stored them: by default each field is its own mapping,
    slot keccak(field ‖ keys); a record declared with `prefix=` keeps its fields under one mapping,
    slot keccak(prefix ‖ keys ‖ keccak(field)). Fields are `Slot` class attributes; reading or writing
    any other attribute raises AttributeError, so a misspelled field never reads 0. A record declared
    with `fields_of=` a dataclass gets one `Uint` per field of it, named as the dataclass's field.
    """

    __slots__ = ("_store", "_keys")
    PREFIX: ClassVar[str | None] = None
    SLOTS: ClassVar[tuple[Slot, ...]] = ()

    def __init_subclass__(cls, prefix: str | None = None, fields_of: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if prefix is not None:
            cls.PREFIX = prefix
        if fields_of is not None:
            for f in dataclasses.fields(fields_of):
                if f.name in cls.__dict__:
                    raise TypeError(f"{cls.__name__}.{f.name} is declared twice")
                slot = Uint(f.name)
                setattr(cls, f.name, slot)
                slot.__set_name__(cls, f.name)
        slots = tuple(v for base in reversed(cls.__mro__) for v in vars(base).values() if isinstance(v, Slot))
        names = [slot.name for slot in slots]
        duplicate = {name for name in names if names.count(name) > 1}
        if duplicate:
            raise TypeError(f"{cls.__name__}: storage names used twice: {sorted(duplicate)}")
        cls.SLOTS = slots

    def __init__(self, store: Storage, *keys: Key) -> None:
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_keys", keys)

    def __setattr__(self, name: str, value: Any) -> None:
        if not isinstance(getattr(type(self), name, None), Slot):
            raise AttributeError(f"{type(self).__name__} has no stored field {name!r}")
        object.__setattr__(self, name, value)

    @property
    def key(self) -> Key:
        """The record's first key (a task's id, an account)."""
        return self._keys[0]

    def _path(self, name: str) -> tuple[Key, ...]:
        if self.PREFIX is None:
            return (name, *self._keys)
        return (self.PREFIX, *self._keys, name)

    def load(self, record_class: type[R]) -> R:
        """`record_class` (a dataclass) built from the fields of this record it names, read in its order."""
        return record_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(record_class)})

    def write(self, record: Any) -> None:
        """Write every field of the dataclass `record` into the field of the same name, in its order."""
        for f in dataclasses.fields(record):
            setattr(self, f.name, getattr(record, f.name))


class AddressQueue:
    """A first-in, first-out queue of addresses in storage (head, tail, item by position)."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name

    def __len__(self) -> int:
        return self.storage.get(self.name, "tail") - self.storage.get(self.name, "head")

    def push(self, address: bytes) -> None:
        tail = self.storage.get(self.name, "tail") + 1
        self.storage.set(self.name, "tail", value=tail)
        self.storage.set_address(self.name, "item", tail, value=address)

    def peek(self) -> bytes:
        if not len(self):
            raise IndexError(f"{self.name}: queue is empty")
        return self.storage.get_address(self.name, "item", self.storage.get(self.name, "head") + 1)

    def pop(self) -> bytes:
        head = self.storage.get(self.name, "head") + 1
        if head > self.storage.get(self.name, "tail"):
            raise IndexError(f"{self.name}: queue is empty")
        self.storage.set(self.name, "head", value=head)
        address = self.storage.get_address(self.name, "item", head)
        self.storage.set(self.name, "item", head, value=0)  # the refund of a cleared slot
        return address
