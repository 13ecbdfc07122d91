"""Log queries (eth_getLogs, filters, subscriptions): one matcher, with a bloom pre-check per block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eth_bloom import BloomFilter


@dataclass(frozen=True)
class LogFilter:
    """Addresses: any of them (empty = all). Topics: per position, any of a set (None = wildcard)."""

    addresses: tuple[bytes, ...] = ()
    topics: tuple[tuple[bytes, ...] | None, ...] = ()

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

    def may_match_bloom(self, bloom_value: int) -> bool:
        bloom = BloomFilter(bloom_value)
        if self.addresses and not any(address in bloom for address in self.addresses):
            return False
        for wanted in self.topics:
            if wanted is not None and not any(topic in bloom for topic in wanted):
                return False
        return True

    def logs_of(self, block: Any) -> Iterator[dict[str, Any]]:
        """Matching logs of a StoredBlock, in block order."""
        if not self.may_match_bloom(block.bloom):
            return
        for entry in block.logs_json():
            if self.matches(entry):
                yield entry


def collect_logs(blocks: Sequence[Any], log_filter: LogFilter, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in blocks:
        out.extend(log_filter.logs_of(block))
        if len(out) > limit:
            raise ValueError(f"query returned more than {limit} results")
    return out
