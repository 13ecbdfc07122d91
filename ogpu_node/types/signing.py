"""Signed consensus messages and their signing roots (DESIGN.md §2).

signing_root = keccak(domain ‖ chain_id ‖ genesis_hash ‖ fields), with a distinct domain per message
kind, so no signature can be replayed across chains or kinds. Consensus signs with these and the
Slashing contract verifies evidence with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

DOMAIN_BLOCK_PROPOSAL = b"ogpu/block-proposal/v1"
DOMAIN_ATTESTATION = b"ogpu/attestation/v1"
DOMAIN_RANDAO = b"ogpu/randao/v1"


def _word(value: int) -> bytes:
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value} is not a uint64")
    return value.to_bytes(32, "big")


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError("a bytes32 field is 32 bytes")
    return value


def signing_root(domain: bytes, chain_id: int, genesis_hash: bytes, fields: bytes) -> bytes:
    return keccak(keccak(domain) + chain_id.to_bytes(32, "big") + genesis_hash + fields)


@dataclass(frozen=True)
class BlockProposal:
    """A proposer's claim: at `slot`, the block is `block_hash`."""

    slot: int
    block_hash: bytes

    def fields(self) -> bytes:  # abi.encode(uint64, bytes32): static words, packed by hand as it is hot
        return _word(self.slot) + _bytes32(self.block_hash)

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_BLOCK_PROPOSAL, chain_id, genesis_hash, self.fields())


@dataclass(frozen=True)
class Attestation:
    """A validator's vote at `slot`: head block, and the source → target checkpoint link (FFG)."""

    slot: int
    head: bytes
    source_epoch: int
    source_root: bytes
    target_epoch: int
    target_root: bytes

    def fields(self) -> bytes:  # abi.encode(uint64, bytes32, uint64, bytes32, uint64, bytes32), by hand (hot)
        return (_word(self.slot) + _bytes32(self.head) + _word(self.source_epoch) + _bytes32(self.source_root)
                + _word(self.target_epoch) + _bytes32(self.target_root))

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_ATTESTATION, chain_id, genesis_hash, self.fields())

    def surrounds(self, other: Attestation) -> bool:
        return self.source_epoch < other.source_epoch and other.target_epoch < self.target_epoch


@dataclass(frozen=True)
class SignedProposal:
    message: BlockProposal
    signature: bytes  # 65 bytes r ‖ s ‖ v, v in {0, 1}

    ABI = ("uint64", "bytes32", "bytes")

    def encode(self) -> bytes:
        return encode(list(self.ABI), [self.message.slot, self.message.block_hash, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedProposal:
        slot, block_hash, signature = decode(list(cls.ABI), data)
        return cls(BlockProposal(slot, block_hash), signature)


@dataclass(frozen=True)
class SignedAttestation:
    message: Attestation
    signature: bytes

    ABI = ("uint64", "bytes32", "uint64", "bytes32", "uint64", "bytes32", "bytes")

    def encode(self) -> bytes:
        m = self.message
        values = [m.slot, m.head, m.source_epoch, m.source_root, m.target_epoch, m.target_root, self.signature]
        return encode(list(self.ABI), values)

    @classmethod
    def decode(cls, data: bytes) -> SignedAttestation:
        *fields, signature = decode(list(cls.ABI), data)
        return cls(Attestation(*fields), signature)


DOMAIN_STREAM_RECEIPT = b"ogpu/stream-receipt/v1"


@dataclass(frozen=True)
class StreamReceipt:
    """A client's acknowledgement: `provider` has served `cumulative_units` under terms version
    `terms_version` of stream task `task_id`. Settlement pays only the increase over earlier receipts."""

    task_id: int
    provider: bytes
    cumulative_units: int
    terms_version: int

    def fields(self) -> bytes:
        return encode(
            ["uint256", "address", "uint256", "uint32"],
            [self.task_id, self.provider, self.cumulative_units, self.terms_version],
        )

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_STREAM_RECEIPT, chain_id, genesis_hash, self.fields())


# -- stream tasks (docs/streams.md): the client's request, a member's response, a member's verdict --

DOMAIN_STREAM_REQUEST = b"ogpu/stream-request/v1"
DOMAIN_STREAM_RESPONSE = b"ogpu/stream-response/v1"
DOMAIN_STREAM_VERDICT = b"ogpu/stream-verdict/v1"
DOMAIN_STREAM_LOGIN = b"ogpu/stream-login/v1"


@dataclass(frozen=True)
class StreamRequest:
    """A request to stream task `task_id`, signed by its client or request key. Its signing root is the
    request id: every response and verdict names it, so none can be moved to another request."""

    task_id: int
    terms_version: int
    block_number: int  # a recent block: its mix and the request id draw the request's council
    seed: int  # members sample with it, so honest answers are byte-identical
    max_tokens: int
    prompt_hash: bytes  # keccak(prompt)
    nonce: int  # the client's, so that two equal prompts are two requests

    ABI = ("uint256", "uint32", "uint64", "uint64", "uint32", "bytes32", "uint64")

    def values(self) -> list:
        return [self.task_id, self.terms_version, self.block_number, self.seed, self.max_tokens,
                self.prompt_hash, self.nonce]

    def fields(self) -> bytes:
        return encode(list(self.ABI), self.values())

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_STREAM_REQUEST, chain_id, genesis_hash, self.fields())

    request_id = signing_root


@dataclass(frozen=True)
class StreamResponse:
    """A council member's answer to a request: `response_hash` = keccak(the response's bytes)."""

    task_id: int
    request_id: bytes
    terms_version: int
    response_hash: bytes

    ABI = ("uint256", "bytes32", "uint32", "bytes32")

    def values(self) -> list:
        return [self.task_id, self.request_id, self.terms_version, self.response_hash]

    def fields(self) -> bytes:
        return encode(list(self.ABI), self.values())

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_STREAM_RESPONSE, chain_id, genesis_hash, self.fields())


@dataclass(frozen=True)
class StreamVerdict:
    """A member's check, with the task's equivalence e, of `member`'s response (`response_hash`) to a
    request: `agrees` is whether it is equivalent to what the checker's model produces or allows."""

    task_id: int
    request_id: bytes
    member: bytes
    response_hash: bytes
    agrees: bool

    ABI = ("uint256", "bytes32", "address", "bytes32", "bool")

    def values(self) -> list:
        return [self.task_id, self.request_id, self.member, self.response_hash, self.agrees]

    def fields(self) -> bytes:
        return encode(list(self.ABI), self.values())

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_STREAM_VERDICT, chain_id, genesis_hash, self.fields())


@dataclass(frozen=True)
class StreamLogin:
    """A provider's proof, to its node, that a WebSocket subscription for stream work is its own."""

    provider: bytes
    timestamp: int  # seconds; the node accepts it within a minute of its clock

    def fields(self) -> bytes:
        return encode(["address", "uint64"], [self.provider, self.timestamp])

    def signing_root(self, chain_id: int, genesis_hash: bytes) -> bytes:
        return signing_root(DOMAIN_STREAM_LOGIN, chain_id, genesis_hash, self.fields())


StreamMessage = StreamRequest | StreamResponse | StreamVerdict


@dataclass(frozen=True)
class SignedStream:
    """A stream message and its 65-byte signature; `encode` is abi.encode(fields…, bytes signature), the
    form Slashing.reportStreamFault takes."""

    message: StreamMessage
    signature: bytes

    def encode(self) -> bytes:
        kind = type(self.message)
        return encode([*kind.ABI, "bytes"], [*self.message.values(), self.signature])

    @classmethod
    def decode(cls, kind: type[StreamRequest] | type[StreamResponse] | type[StreamVerdict], data: bytes) -> SignedStream:
        """Raises ValueError on malformed bytes."""
        try:
            *values, signature = decode([*kind.ABI, "bytes"], data)
        except DecodingError as exc:
            raise ValueError(f"malformed {kind.__name__}: {exc}") from None
        if kind is StreamVerdict:
            values[2] = bytes.fromhex(values[2][2:])  # eth_abi decodes an address as checksummed text
        return cls(kind(*values), signature)
