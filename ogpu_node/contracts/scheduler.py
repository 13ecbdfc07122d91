"""The deadline queue: time-triggered protocol steps kept in contract storage (DESIGN.md §2).

A binary min-heap of 256-bit words `deadline(64) ‖ sequence(64) ‖ kind(8) ‖ subject(120)`, so the
numeric order of the words is the order of due time, then of scheduling. The start-of-block system
call pops the due entries, at most `limit` per block; an entry whose step fails is dropped (the
functions that depend on a deadline check it themselves, so nothing waits on the queue for safety).
"""

from __future__ import annotations

from dataclasses import dataclass

from ogpu_node.contracts.layout import QueueHeader
from ogpu_node.contracts.storage import Storage

_SUBJECT_BITS = 120
_KIND_BITS = 8
_SEQ_BITS = 64


@dataclass(frozen=True)
class Deadline:
    due: int
    sequence: int
    kind: int
    subject: int

    def pack(self) -> int:
        word = self.due
        word = word << _SEQ_BITS | self.sequence
        word = word << _KIND_BITS | self.kind
        return word << _SUBJECT_BITS | self.subject

    @classmethod
    def unpack(cls, word: int) -> Deadline:
        subject = word & ((1 << _SUBJECT_BITS) - 1)
        word >>= _SUBJECT_BITS
        kind = word & ((1 << _KIND_BITS) - 1)
        word >>= _KIND_BITS
        sequence = word & ((1 << _SEQ_BITS) - 1)
        return cls(word >> _SEQ_BITS, sequence, kind, subject)


class DeadlineQueue:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.header = QueueHeader(storage)

    def __len__(self) -> int:
        return self.header.size

    def _at(self, index: int) -> int:
        return self.storage.get("queue", index)

    def _put(self, index: int, word: int) -> None:
        self.storage.set("queue", index, value=word)

    def schedule(self, due: int, kind: int, subject: int) -> None:
        sequence = self.header.sequence + 1
        self.header.sequence = sequence
        word = Deadline(due, sequence, kind, subject).pack()
        index = len(self)
        self.header.size = index + 1
        while index > 0:  # sift up
            parent = (index - 1) // 2
            parent_word = self._at(parent)
            if parent_word <= word:
                break
            self._put(index, parent_word)
            index = parent
        self._put(index, word)

    def peek(self) -> Deadline | None:
        return Deadline.unpack(self._at(0)) if len(self) else None

    def pop(self) -> Deadline:
        size = len(self)
        top = self._at(0)
        last = self._at(size - 1)
        self._put(size - 1, 0)
        size -= 1
        self.header.size = size
        if size:
            index = 0
            while True:  # sift down
                child = 2 * index + 1
                if child >= size:
                    break
                child_word = self._at(child)
                if child + 1 < size:
                    right = self._at(child + 1)
                    if right < child_word:
                        child, child_word = child + 1, right
                if child_word >= last:
                    break
                self._put(index, child_word)
                index = child
            self._put(index, last)
        return Deadline.unpack(top)

    def pop_due(self, now: int, limit: int) -> list[Deadline]:
        due = []
        while len(due) < limit:
            head = self.peek()
            if head is None or head.due > now:
                break
            due.append(self.pop())
        return due
