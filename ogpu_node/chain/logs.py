"""Log queries (eth_getLogs, filters, subscriptions): one matcher, with a bloom pre-check per block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from eth_bloom import BloomFilter


@dataclass(frozen=True)
class LogFilter:
    """Addresses: any of them (empty = all). Topics: per position, any of a set (None = wildcard)."""

    addresses: Set[bytes] = frozenset()
    topics: tuple[Set[bytes] | None, ...] = ()

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.addresses and entry["address"] not in self.addresses:
            return False
        topics = entry["topics"]
        for position, wanted in enumerate(self.topics):
            if wanted is None:
                continue
            if position >= len(topics) or topics[position] not in wanted:
                return False
        return True

    @cached_property
    def _bloom_bits(self) -> tuple[list[int], list[list[int]]]:
        # Each value's three bloom bits, hashed once per filter rather than once per block scanned
        # (a query may name up to the RPC's limit of addresses and topics).
        return ([_bits(a) for a in self.addresses],
                [[_bits(t) for t in wanted] for wanted in self.topics if wanted is not None])

    def may_match_bloom(self, bloom: int) -> bool:
        addresses, topics = self._bloom_bits
        if addresses and not any(bloom & bits == bits for bits in addresses):
            return False
        return all(any(bloom & bits == bits for bits in wanted) for wanted in topics)

    def logs_of(self, block: Any, removed: bool = False) -> Iterator[dict[str, Any]]:
        """Matching logs of a StoredBlock, in block order; `removed`: as copies marked `removed: true`,
        for a block a head switch abandoned."""
        if not self.may_match_bloom(block.bloom):
            return
        for entry in block.logs_json():
            if self.matches(entry):
                yield {**entry, "removed": True} if removed else entry


def _bits(value: bytes) -> int:
    return int(BloomFilter.from_iterable((value,)))


def collect_logs(blocks: Sequence[Any], log_filter: LogFilter, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in blocks:
        out.extend(log_filter.logs_of(block))
        if len(out) > limit:
            raise ValueError(f"query returned more than {limit} results")
    return out
