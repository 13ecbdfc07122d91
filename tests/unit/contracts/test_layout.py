"""The stored records of contracts/layout.py: fields at the slots the contracts always used, and a
misspelled field raises instead of reading 0."""

from __future__ import annotations

from dataclasses import fields

import pytest

from ogpu_node.contracts.layout import CheckpointEntry, StreamEntry, StreamTerms, TaskEntry, TermsEntry
from ogpu_node.contracts.storage import Storage, StoredRecord, Uint, slot_of
from ogpu_node.types.records import TermsRecord

ADDRESS = b"\x00" * 18 + b"\x10\x01"


class DictHost:
    """Storage only, counting reads."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}
        self.reads = 0

    def sload(self, address: bytes, slot: int) -> int:
        self.reads += 1
        return self.slots.get(slot, 0)

    def sstore(self, address: bytes, slot: int, value: int) -> None:
        self.slots[slot] = value


def test_fields_sit_at_their_storage_names_slots_one_read_each():
    host = DictHost()
    store = Storage(host, ADDRESS)  # type: ignore[arg-type]
    task = TaskEntry(store, 7)
    task.bid_deadline = 99
    task.client = b"\x01" * 20
    assert host.slots[slot_of("bidDeadline", 7)] == 99
    assert host.slots[slot_of("client", 7)] == int.from_bytes(b"\x01" * 20, "big")
    checkpoint = CheckpointEntry(store, 7, 3)
    checkpoint.phase_ends = 5
    checkpoint.revealed = True
    assert host.slots[slot_of("ck", 7, 3, "phaseEnds")] == 5
    assert host.slots[slot_of("ck", 7, 3, "revealed")] == 1
    TermsEntry(store, 7).segment_window = 60
    assert host.slots[slot_of("terms", 7, "segment_window")] == 60
    host.reads = 0
    assert (task.bid_deadline, checkpoint.revealed, task.client) == (99, True, b"\x01" * 20)
    assert host.reads == 3
    host.reads = 0
    assert TermsEntry(store, 7).load(TermsRecord).segment_window == 60
    assert host.reads == len(TermsEntry.SLOTS) == 16


def test_the_terms_records_store_every_field_of_their_abi_tuples():
    """TermsEntry and StreamEntry declare their fields one by one (numericProfile is a bytes32): each
    field of the ABI tuple has a slot under its own name, and the profile reads back as 32 bytes."""
    assert [s.attribute for s in TermsEntry.SLOTS] == [f.name for f in fields(TermsRecord)]
    assert [s.attribute for s in StreamEntry.SLOTS][: len(fields(StreamTerms))] == [f.name for f in fields(StreamTerms)]
    store = Storage(DictHost(), ADDRESS)  # type: ignore[arg-type]
    TermsEntry(store, 7).numeric_profile = b"\x01" * 32
    assert TermsEntry(store, 7).load(TermsRecord).numeric_profile == b"\x01" * 32
    assert StreamEntry(store, 7).numeric_profile == bytes(32)


def test_a_misspelled_field_raises():
    store = Storage(DictHost(), ADDRESS)  # type: ignore[arg-type]
    task = TaskEntry(store, 1)
    with pytest.raises(AttributeError):
        task.bid_dedline  # noqa: B018
    with pytest.raises(AttributeError):
        task.bid_dedline = 5


def test_a_storage_name_declared_twice_fails_at_import():
    with pytest.raises(TypeError):
        class Twice(StoredRecord):
            a = Uint("x")
            b = Uint("x")


def test_a_negative_value_is_not_stored():
    store = Storage(DictHost(), ADDRESS)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        TaskEntry(store, 1).escrow = -1
