"""The network's numbers, each defined once: sizes, timeouts, topics and protocol ids, peer scores,
rates and bans. docs/network.md ("Constants", "Gossip", "Request/response", "Peer scoring") is the
spec; a value here that differs from it is a bug here.

Sizes are bytes, times are seconds (monotonic), rates are messages per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from ogpu_node.types.merkle import CHUNK_SIZE

KiB = 1024
MiB = 1024 * KiB

# -- Constants table ---------------------------------------------------------------------------
MAX_FRAME = 4 * MiB  # one length-prefixed frame on any stream
MAX_BLOCK_BYTES = 4 * MiB  # rlp([block rlp, consensus body, proposal signature])
MAX_ATTESTATION_BYTES = 512  # a SignedAttestation ABI encoding
MAX_TX_BYTES = 128 * KiB  # a raw transaction, as geth's pool
MAX_EVIDENCE_BYTES = 2 * KiB  # rlp([offence kind, first, second])
MAX_BLOCKS_PER_REQUEST = 64  # blocks by range or by hash
BLOB_CHUNK = CHUNK_SIZE  # a blob response chunk is the blob's Merkle chunk
REQUEST_TIMEOUT = 10.0  # to the first byte of a response
RESPONSE_TIMEOUT = 30.0  # to the whole of a response
MAX_CONCURRENT_REQUESTS = 8  # per peer, in each direction
SEEN_CACHE = 65_536  # message ids remembered for duplicate suppression, per topic

DEFAULT_MAXPEERS = 25
DEFAULT_P2P_PORT = 30303  # as geth's --port

# -- Gossip topics and request protocols -------------------------------------------------------
TOPIC_BLOCKS = "/ogpu/1/blocks"
TOPIC_ATTESTATIONS = "/ogpu/1/attestations"
TOPIC_TXS = "/ogpu/1/txs"
TOPIC_SLASHINGS = "/ogpu/1/slashings"
TOPICS = (TOPIC_BLOCKS, TOPIC_ATTESTATIONS, TOPIC_TXS, TOPIC_SLASHINGS)

PROTOCOL_STATUS = "/ogpu/1/status"
PROTOCOL_BLOCKS_BY_RANGE = "/ogpu/1/blocks_by_range"
PROTOCOL_BLOCKS_BY_HASH = "/ogpu/1/blocks_by_hash"
PROTOCOL_BLOBS_BY_HASH = "/ogpu/1/blobs_by_hash"
PROTOCOL_PEERS = "/ogpu/1/peers"
PROTOCOLS = (PROTOCOL_STATUS, PROTOCOL_BLOCKS_BY_RANGE, PROTOCOL_BLOCKS_BY_HASH, PROTOCOL_BLOBS_BY_HASH,
             PROTOCOL_PEERS)
MAX_PEERS_SHARED = 16  # addresses in a peers response

# A gossip payload over its topic's bound is dropped unread and scores PeerOffence.OVERSIZED.
TOPIC_MAX_BYTES = MappingProxyType({
    TOPIC_BLOCKS: MAX_BLOCK_BYTES,
    TOPIC_ATTESTATIONS: MAX_ATTESTATION_BYTES,
    TOPIC_TXS: MAX_TX_BYTES,
    TOPIC_SLASHINGS: MAX_EVIDENCE_BYTES,
})


class MessageKind(Enum):
    """What a peer sent, for its rate limit: one gossip topic each, and requests of any protocol."""
    BLOCK = "block"
    ATTESTATION = "attestation"
    TX = "tx"
    EVIDENCE = "evidence"
    REQUEST = "request"


TOPIC_KIND = MappingProxyType({
    TOPIC_BLOCKS: MessageKind.BLOCK,
    TOPIC_ATTESTATIONS: MessageKind.ATTESTATION,
    TOPIC_TXS: MessageKind.TX,
    TOPIC_SLASHINGS: MessageKind.EVIDENCE,
})


@dataclass(frozen=True)
class Rate:
    """A token bucket: `burst` messages at once, refilled at `per_second`."""
    per_second: float
    burst: int


RATES = MappingProxyType({
    MessageKind.BLOCK: Rate(4, 16),
    MessageKind.ATTESTATION: Rate(64, 512),
    MessageKind.TX: Rate(100, 1_000),
    MessageKind.EVIDENCE: Rate(4, 16),
    MessageKind.REQUEST: Rate(32, 64),
})

# -- Peer scoring ------------------------------------------------------------------------------


class PeerOffence(Enum):
    """A peer's misbehaviour, scored by SCORE_PENALTY. (Not types.protocol.Offence, a validator's.)"""
    INVALID = "invalid"  # a message that fails its check
    OVERSIZED = "oversized"  # a message over its size bound, or a frame over MAX_FRAME
    UNDECODABLE = "undecodable"  # bytes that do not decode
    OVER_RATE = "over_rate"  # a message over the peer's rate, dropped unread
    BAD_RESPONSE = "bad_response"  # a request timed out or answered with blocks that do not match


SCORE_PENALTY = MappingProxyType({
    PeerOffence.INVALID: -20.0,
    PeerOffence.OVERSIZED: -100.0,
    PeerOffence.UNDECODABLE: -100.0,
    PeerOffence.OVER_RATE: -5.0,
    PeerOffence.BAD_RESPONSE: -10.0,
})
USEFUL_MESSAGE_SCORE = 0.1  # first delivery of a valid block, attestation, tx or evidence
MAX_SCORE = 20.0  # useful messages add up to this, no further
SCORE_KEPT_PER_MINUTE = 0.9  # a score decays toward 0 by 10 % a minute, exponentially

# -- Bans --------------------------------------------------------------------------------------
BAN_THRESHOLD = -50.0  # a peer whose score falls below this is disconnected and banned
FIRST_BAN = 10 * 60.0  # seconds; each further ban of the same peer doubles it ...
MAX_BAN = 24 * 60 * 60.0  # ... up to this

# -- Memory bounds of the peer book (ours, not the spec's) -------------------------------------
# Scores and buckets of this many peers at most: far above --maxpeers, so only peers the host never
# forgot (least recently seen first) are dropped, not a connected one.
MAX_TRACKED_PEERS = 1_024
# Ban records (kept after a ban ends, for the doubling) of this many peers at most, the least recently
# banned dropped first: a peer-id cycling attacker cannot grow memory, only age out old records.
MAX_BAN_RECORDS = 65_536
