"""The deterministic rules of serving a stream request (docs/streams.md): who sits on a request's council,
how many matching answers each response method needs, and how many verdicts make a fault. Pure: the
node, the provider app and the Slashing contract all decide with these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_hash.auto import keccak

from ogpu_node.types.protocol import BPS, ResponseMethod

MAX_PROMPT_BYTES = 4_096  # a request's prompt
MAX_RESPONSE_TOKENS = 1_024  # a request's max_tokens; a response is at most this many bytes (byte vocabulary)
RECENT_BLOCKS = 64  # a request must name one of the head's last RECENT_BLOCKS blocks (its mix draws the council)


def response_hash(response: bytes) -> bytes:
    """What a member signs and the council compares: keccak of the response's bytes (its tokens)."""
    return keccak(response)


def stream_fault_id(task_id: int, request_id: bytes, offender: bytes) -> bytes:
    """A stream fault's evidence id, keccak("stream-fault" ‖ taskId ‖ requestId ‖ offender): each member
    is punished at most once per request (Slashing.reportStreamFault, docs/streams.md rule 4)."""
    return keccak(b"stream-fault" + task_id.to_bytes(32, "big") + request_id + offender)


def council_seed(request_id: bytes, mix: bytes) -> bytes:
    """keccak(request id ‖ mix of the block the request names): neither the client (who cannot know a
    future mix) nor a proposer (who cannot know the request id) chooses the council alone."""
    return keccak(request_id + mix)


def draw_council(subscribers: Sequence[bytes], seed: bytes, size: int) -> list[bytes]:
    """`size` distinct subscribers, uniformly, in draw order: a Fisher–Yates shuffle of the sorted set
    driven by keccak(seed ‖ i), stopped after `size` picks. All of them if there are no more than that."""
    pool = sorted(set(subscribers))
    picks = min(size, len(pool))
    for i in range(picks):
        j = i + int.from_bytes(keccak(seed + i.to_bytes(32, "big")), "big") % (len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:picks]


def agreement_needed(method: int, weight_bps: int, council_size: int) -> int:
    """Matching responses the node waits for before it answers: optimistic 1 (the first), weighted
    ⌈w·c⌉ (at least 1), unanimous c."""
    if method == ResponseMethod.OPTIMISTIC:
        return 1
    if method == ResponseMethod.WEIGHTED:
        return max(1, -(-weight_bps * council_size // BPS))
    if method == ResponseMethod.UNANIMOUS:
        return council_size
    raise ValueError(f"unknown response method {method}")


def fault_quorum(council_size: int) -> int:
    """Signed verdicts against a response that prove it faulty: ⌈2c/3⌉ (Slashing.reportStreamFault)."""
    return -(-2 * council_size // 3)
