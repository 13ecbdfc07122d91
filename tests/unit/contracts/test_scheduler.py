"""The deadline queue (DESIGN.md §2): a min-heap of packed words in contract storage.

A pure data-structure test over a dict-backed host: no chain, no VM.
"""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from ogpu_node.contracts.host import Host
from ogpu_node.contracts.scheduler import Deadline, DeadlineQueue
from ogpu_node.contracts.storage import Storage, slot_of

ADDRESS = b"\x00" * 18 + b"\x10\x01"
U64 = (1 << 64) - 1
U120 = (1 << 120) - 1


class DictHost:
    """The host interface over a plain dict of (address, slot) -> word; only storage is needed."""

    caller = b"\x00" * 20
    value = 0
    is_static = False
    block_number = 1
    timestamp = 0
    mix_hash = b"\x00" * 32

    def __init__(self) -> None:
        self.words: dict[tuple[bytes, int], int] = {}

    def sload(self, address: bytes, slot: int) -> int:
        return self.words.get((address, slot), 0)

    def sstore(self, address: bytes, slot: int, value: int) -> None:
        assert 0 <= value < 1 << 256
        self.words[(address, slot)] = value

    def balance(self, address: bytes) -> int:
        raise AssertionError("the queue never reads balances")

    def transfer(self, sender: bytes, recipient: bytes, amount: int) -> None:
        raise AssertionError("the queue never moves value")

    def burn(self, holder: bytes, amount: int) -> None:
        raise AssertionError("the queue never burns")

    def log(self, address: bytes, topics: list[bytes], data: bytes) -> None:
        raise AssertionError("the queue never logs")

    def charge(self, gas: int) -> None:
        pass


def new_queue() -> tuple[DictHost, DeadlineQueue]:
    host = DictHost()
    typed: Host = host  # DictHost satisfies the Protocol the contracts are written against
    return host, DeadlineQueue(Storage(typed, ADDRESS))


def drain(queue: DeadlineQueue) -> list[Deadline]:
    return [queue.pop() for _ in range(len(queue))]


def test_pops_in_due_order_then_scheduling_order():
    """Rule: entries come out by due time; entries due at the same time in the order scheduled,
    whatever their kind or subject (the sequence number sits above them in the packed word)."""
    _, queue = new_queue()
    queue.schedule(30, 1, 7)
    queue.schedule(10, 2, 900)
    queue.schedule(30, 1, 3)  # same due as the first, scheduled later, smaller subject
    queue.schedule(20, 9, 1)
    queue.schedule(10, 1, 5)  # same due as the second, smaller kind
    assert len(queue) == 5
    assert queue.peek() == Deadline(10, 2, 2, 900)
    assert drain(queue) == [
        Deadline(10, 2, 2, 900), Deadline(10, 5, 1, 5), Deadline(20, 4, 9, 1),
        Deadline(30, 1, 1, 7), Deadline(30, 3, 1, 3),
    ]
    assert len(queue) == 0
    assert queue.peek() is None


def test_sequence_numbers_keep_counting_after_the_queue_empties():
    """Rule: the scheduling sequence is never reused, so ties stay ordered across drains."""
    _, queue = new_queue()
    queue.schedule(5, 1, 1)
    queue.schedule(5, 1, 2)
    assert drain(queue) == [Deadline(5, 1, 1, 1), Deadline(5, 2, 1, 2)]
    queue.schedule(5, 1, 3)
    assert queue.pop() == Deadline(5, 3, 1, 3)


def test_pop_due_takes_only_entries_due_by_now():
    """Rule: pop_due(now, limit) returns the entries with due <= now (inclusive), oldest first, and
    leaves later ones in the queue."""
    _, queue = new_queue()
    for due, subject in ((100, 1), (101, 2), (99, 3), (150, 4)):
        queue.schedule(due, 1, subject)
    assert queue.pop_due(98, 10) == []
    assert len(queue) == 4
    assert queue.pop_due(100, 10) == [Deadline(99, 3, 1, 3), Deadline(100, 1, 1, 1)]
    assert len(queue) == 2
    assert queue.peek() == Deadline(101, 2, 1, 2)
    assert queue.pop_due(149, 10) == [Deadline(101, 2, 1, 2)]
    assert queue.pop_due(10**6, 10) == [Deadline(150, 4, 1, 4)]
    assert queue.pop_due(10**6, 10) == []


def test_pop_due_stops_at_the_limit_and_the_rest_waits():
    """Rule: at most `limit` entries per call; the due entries left over come first next time."""
    _, queue = new_queue()
    for subject in range(1, 6):
        queue.schedule(50, 1, subject)
    queue.schedule(40, 1, 99)
    first = queue.pop_due(50, 2)
    assert first == [Deadline(40, 6, 1, 99), Deadline(50, 1, 1, 1)]
    assert len(queue) == 4
    assert queue.pop_due(50, 0) == []
    assert queue.pop_due(50, 3) == [Deadline(50, 2, 1, 2), Deadline(50, 3, 1, 3), Deadline(50, 4, 1, 4)]
    assert queue.pop_due(50, 3) == [Deadline(50, 5, 1, 5)]
    assert len(queue) == 0


def test_draining_leaves_no_stale_words_in_storage():
    """Rule: popping clears the vacated heap slot, so an empty queue holds only its size (0) and
    sequence counter: no stale entry can resurface and the cleared slots earn their refunds."""
    host, queue = new_queue()
    for due in (7, 3, 9, 3, 1, 8, 2):
        queue.schedule(due, 1, due)
    drain(queue)
    nonzero = {slot: word for (_, slot), word in host.words.items() if word}
    assert nonzero == {slot_of("queue", "sequence"): 7}


def test_pack_unpack_round_trip_at_field_limits():
    """Rule: a word is due(64) ‖ sequence(64) ‖ kind(8) ‖ subject(120); each field round-trips,
    including its maximum, and the packed word fits one storage slot."""
    for entry in (Deadline(0, 0, 0, 0), Deadline(1, 2, 3, 4), Deadline(U64, U64, 255, U120)):
        word = entry.pack()
        assert 0 <= word < 1 << 256
        assert Deadline.unpack(word) == entry
    assert Deadline(U64, U64, 255, U120).pack() == (1 << 256) - 1
    assert Deadline(1, 0, 0, 0).pack() == 1 << 192
    assert Deadline(0, 1, 0, 0).pack() == 1 << 128
    assert Deadline(0, 0, 1, 0).pack() == 1 << 120


fields = st.builds(
    Deadline,
    st.integers(0, U64), st.integers(0, U64), st.integers(0, 255), st.integers(0, U120),
)


@settings(max_examples=60, deadline=None, database=None)
@given(fields, fields)
def test_packed_order_is_due_then_sequence(a, b):
    """Rule: comparing packed words compares (due, sequence, kind, subject), so the heap needs no
    other key."""
    assert Deadline.unpack(a.pack()) == a
    assert (a.pack() < b.pack()) == ((a.due, a.sequence, a.kind, a.subject) < (b.due, b.sequence, b.kind, b.subject))


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 255), st.integers(0, U120)), max_size=40))
def test_random_schedules_pop_sorted(entries):
    """Rule: whatever the schedule, draining yields the entries sorted by (due, scheduling order)."""
    _, queue = new_queue()
    for due, kind, subject in entries:
        queue.schedule(due, kind, subject)
    expected = sorted(
        (Deadline(due, seq, kind, subject) for seq, (due, kind, subject) in enumerate(entries, start=1)),
        key=lambda d: (d.due, d.sequence),
    )
    assert drain(queue) == expected


operations = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 30), st.integers(0, 3)),
        st.tuples(st.just("pop_due"), st.integers(0, 30), st.integers(0, 4)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, database=None)
@given(operations)
def test_interleaved_schedule_and_pop_due_match_a_reference_heap(ops):
    """Rule: under any interleaving of schedule and pop_due(now, limit), the queue returns what a
    reference heap of (due, sequence) returns, and its size matches."""
    _, queue = new_queue()
    reference: list[tuple[int, int, int]] = []
    sequence = 0
    for op, a, b in ops:
        if op == "schedule":
            sequence += 1
            queue.schedule(a, 1, b)
            heapq.heappush(reference, (a, sequence, b))
        else:
            expected = []
            while reference and len(expected) < b and reference[0][0] <= a:
                due, seq, subject = heapq.heappop(reference)
                expected.append(Deadline(due, seq, 1, subject))
            assert queue.pop_due(a, b) == expected
        assert len(queue) == len(reference)
