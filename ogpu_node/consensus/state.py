"""A branch's consensus state and its transition per block (docs/consensus.md, "Block validity",
"Casper FFG"), as phase0's `process_block` and `process_justification_and_finalization`.

`BranchState` is immutable: `apply_block` returns the child's state, so every known block keeps its
own and a reorganization needs no undo. Deterministic: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from types import MappingProxyType

import rlp

from ogpu_node.consensus.params import ConsensusParams
from ogpu_node.consensus.randao import next_mix, reveal_matches
from ogpu_node.consensus.rewards import settle_epoch
from ogpu_node.consensus.validators import ValidatorSet, compute_attestation_slots, compute_proposer
from ogpu_node.crypto import keccak
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation

MAX_ATTESTATIONS = 4096  # per block: bounds the work of checking one block


class InvalidConsensus(ValueError):
    """A block or attestation that breaks a consensus rule; the message names the rule."""


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    root: bytes


@dataclass(frozen=True)
class ConsensusBody:
    """The PoS part of a block; the header's extra_data is its `root`."""

    slot: int
    randao_reveal: bytes
    attestations: tuple[SignedAttestation, ...] = ()

    def encode(self) -> bytes:
        return rlp.encode([self.slot, self.randao_reveal, [a.encode() for a in self.attestations]])

    @classmethod
    def decode(cls, data: bytes) -> ConsensusBody:
        try:
            slot, reveal, attestations = rlp.decode(data)
            if len(attestations) > MAX_ATTESTATIONS:
                raise InvalidConsensus(f"more than {MAX_ATTESTATIONS} attestations in a block")
            return cls(int.from_bytes(slot, "big"), reveal, tuple(SignedAttestation.decode(a) for a in attestations))
        except InvalidConsensus:
            raise
        except Exception as exc:  # rlp and ABI decoding errors alike: malformed bytes from a peer
            raise InvalidConsensus(f"malformed consensus body: {exc}") from None

    @cached_property
    def root(self) -> bytes:
        return keccak(self.encode())


@dataclass(frozen=True)
class BlockInput:
    """What consensus checks of a block: its header fields, its body and the proposer's signature."""

    root: bytes
    parent_root: bytes
    timestamp: int
    coinbase: bytes
    mix_hash: bytes
    extra_data: bytes
    body: ConsensusBody
    signature: bytes


@dataclass(frozen=True)
class Rules:
    """The fixed context of a chain: its parameters, the domain of its signatures, and where each
    epoch's validator set comes from (Stake at the epoch's first block; a constant in simulations)."""

    params: ConsensusParams
    chain_id: int
    genesis_hash: bytes
    validator_set: Callable[[bytes, int], ValidatorSet]  # (root of the last block before the epoch, epoch)


@lru_cache(maxsize=65536)
def _recover(message_hash: bytes, signature: bytes) -> bytes | None:
    """The signer of a message; cached, as every node of a simulation checks the same messages."""
    try:
        return recover_signer(message_hash, signature)
    except InvalidSignature:
        return None


@lru_cache(maxsize=65536)
def attestation_signer(rules: Rules, signed: SignedAttestation) -> bytes | None:
    """The address that signed an attestation, or None; cached, as it is checked on arrival, when
    proposing and when imported in a block."""
    return _recover(signed.message.signing_root(rules.chain_id, rules.genesis_hash), signed.signature)


@lru_cache(maxsize=256)
def _attestation_slots(validators: ValidatorSet, seed: bytes, epoch: int, params: ConsensusParams) -> dict:
    return compute_attestation_slots(validators, seed, epoch, params)


@dataclass(frozen=True)
class EpochDuties:
    epoch: int
    seed: bytes
    validators: ValidatorSet
    target_root: bytes  # the branch's checkpoint root of this epoch

    def attestation_slot(self, address: bytes, params: ConsensusParams) -> int | None:
        return _attestation_slots(self.validators, self.seed, self.epoch, params).get(address)


def _frozen(mapping: dict) -> Mapping:
    return MappingProxyType(mapping)


_EMPTY: Mapping = _frozen({})


@dataclass(frozen=True)
class Vote:
    """An included attestation's credit: the proposer that included it, and whether its head vote was
    timely (the branch's block at its slot, included in the next slot)."""

    includer: bytes
    head: bool


Settlement = tuple[tuple[bytes, int], ...]  # (address, signed wei), by address


@dataclass(frozen=True)
class BranchState:
    root: bytes
    slot: int
    mix: bytes
    current: EpochDuties
    previous: EpochDuties
    previous_justified: Checkpoint
    current_justified: Checkpoint
    finalized: Checkpoint
    justification_bits: tuple[bool, bool, bool, bool]  # [0] = the epoch before current, ...
    # Validators whose attestation to the target of current.epoch / previous.epoch is included.
    current_attesters: Mapping[bytes, Vote] = field(default_factory=lambda: _EMPTY)
    previous_attesters: Mapping[bytes, Vote] = field(default_factory=lambda: _EMPTY)
    reveals: Mapping[bytes, tuple[int, bytes]] = field(default_factory=lambda: _EMPTY)
    # Blocks each validator proposed in current.epoch / previous.epoch.
    current_proposals: Mapping[bytes, int] = field(default_factory=lambda: _EMPTY)
    previous_proposals: Mapping[bytes, int] = field(default_factory=lambda: _EMPTY)
    # (slot, root) of the branch's blocks in the last two epochs, oldest first: for head votes.
    recent_roots: tuple[tuple[int, bytes], ...] = ()
    # What the block of this state applies to Stake: the epochs its boundary crossing settled.
    settlement: Settlement = ()

    @property
    def epoch(self) -> int:
        return self.current.epoch


def genesis_state(rules: Rules, genesis_root: bytes, genesis_mix: bytes) -> BranchState:
    validators = rules.validator_set(genesis_root, 0)
    duties = EpochDuties(0, genesis_mix, validators, genesis_root)
    anchor = Checkpoint(0, genesis_root)
    return BranchState(genesis_root, 0, genesis_mix, duties, duties, anchor, anchor, anchor,
                       (False, False, False, False))


# -- epoch processing --

def _attesting_stake(duties: EpochDuties, attesters: Mapping[bytes, Vote]) -> int:
    return sum(duties.validators.stake_of(a) for a in attesters)


def _justify_and_finalize(state: BranchState) -> BranchState:
    """phase0's weigh_justification_and_finalization, run as ``state.current`` ends: `previous` and
    `current` are the epochs Ethereum calls previous and current."""
    if state.current.epoch <= 1:  # as phase0: nothing to justify over genesis
        return state
    old_previous, old_current = state.previous_justified, state.current_justified
    previous_justified = old_current
    bits = [False, *state.justification_bits[:3]]
    current_justified = old_current
    prev, cur = state.previous, state.current
    if 3 * _attesting_stake(prev, state.previous_attesters) >= 2 * prev.validators.total_stake:
        current_justified = Checkpoint(prev.epoch, prev.target_root)
        bits[1] = True
    if 3 * _attesting_stake(cur, state.current_attesters) >= 2 * cur.validators.total_stake:
        current_justified = Checkpoint(cur.epoch, cur.target_root)
        bits[0] = True
    finalized = state.finalized
    epoch = cur.epoch
    if all(bits[1:4]) and old_previous.epoch + 3 == epoch:
        finalized = old_previous
    if all(bits[1:3]) and old_previous.epoch + 2 == epoch:
        finalized = old_previous
    if all(bits[0:3]) and old_current.epoch + 2 == epoch:
        finalized = old_current
    if all(bits[0:2]) and old_current.epoch + 1 == epoch:
        finalized = old_current
    return replace(state, previous_justified=previous_justified, current_justified=current_justified,
                   finalized=finalized, justification_bits=(bits[0], bits[1], bits[2], bits[3]))


def advance_to_epoch(rules: Rules, state: BranchState, epoch: int, block_root: bytes, block_slot: int) -> BranchState:
    """Cross every epoch boundary between ``state`` and ``epoch`` (the epoch of a block at
    ``block_slot`` whose root is ``block_root``): justify, finalize, settle the epoch whose inclusion
    window closed, rotate duties. Skipped epochs' checkpoint roots are the last block before them. The
    result's `settlement` is what this crossing settled (empty when no boundary is crossed)."""
    params = rules.params
    deltas: dict[bytes, int] = {}
    while state.epoch < epoch:
        state = _justify_and_finalize(state)
        if state.previous.epoch > 0:  # epoch 0 is not settled, as phase0 skips the genesis epoch
            settle_epoch(rules.params, state, deltas)
        nxt = state.epoch + 1
        starts_here = block_slot == params.start_slot(nxt) and nxt == epoch
        duties = EpochDuties(nxt, state.mix, rules.validator_set(state.root, nxt),
                             block_root if starts_here else state.root)
        state = replace(state, previous=state.current, current=duties,
                        previous_attesters=state.current_attesters, current_attesters=_EMPTY,
                        previous_proposals=state.current_proposals, current_proposals=_EMPTY)
    settlement = tuple(sorted((a, d) for a, d in deltas.items() if d))
    return state if settlement == state.settlement == () else replace(state, settlement=settlement)


# -- attestations --

def check_attestation(rules: Rules, state: BranchState, signed: SignedAttestation,
                      included: tuple[AbstractSet[bytes], AbstractSet[bytes]] | None = None) -> tuple[bytes, EpochDuties]:
    """The attester and its epoch's duties, if ``signed`` may be included in a block on top of
    ``state`` (whose epoch is the including block's); InvalidConsensus naming the rule otherwise.
    ``included``: the (current, previous) epoch's attesters so far, when not the state's."""
    a: Attestation = signed.message
    params = rules.params
    current_attesters, previous_attesters = included or (state.current_attesters, state.previous_attesters)
    if a.target_epoch == state.current.epoch:
        duties, source, attesters = state.current, state.current_justified, current_attesters
    elif a.target_epoch == state.previous.epoch and state.previous.epoch != state.current.epoch:
        duties, source, attesters = state.previous, state.previous_justified, previous_attesters
    else:
        raise InvalidConsensus(f"attestation target epoch {a.target_epoch} is neither the current "
                               f"({state.current.epoch}) nor the previous epoch")
    if params.epoch_of(a.slot) != a.target_epoch:
        raise InvalidConsensus("attestation slot is not in its target epoch")
    if a.target_root != duties.target_root:
        raise InvalidConsensus(f"attestation target root is not this branch's checkpoint of epoch {a.target_epoch}")
    if (a.source_epoch, a.source_root) != (source.epoch, source.root):
        raise InvalidConsensus("attestation source is not this branch's justified checkpoint")
    signer = attestation_signer(rules, signed)
    if signer is None or signer not in duties.validators:
        raise InvalidConsensus("attestation is not signed by a validator of its epoch")
    if duties.attestation_slot(signer, params) != a.slot:
        raise InvalidConsensus(f"0x{signer.hex()} does not attest at slot {a.slot}")
    if signer in attesters:
        raise InvalidConsensus(f"0x{signer.hex()} already has an attestation for epoch {a.target_epoch} on this branch")
    return signer, duties


def root_at(state: BranchState, slot: int) -> bytes | None:
    """The branch's latest block at or before ``slot``, within its last two epochs."""
    for block_slot, root in reversed(state.recent_roots):
        if block_slot <= slot:
            return root
    return None


def include_attestation(rules: Rules, state: BranchState, block_slot: int, signed: SignedAttestation,
                        included: tuple[dict[bytes, Vote], dict[bytes, Vote]], includer: bytes) -> None:
    """Check ``signed`` for a block at ``block_slot`` by ``includer`` on ``state`` (its inclusion
    window, then `check_attestation` against the (current, previous) epoch's attesters ``included`` so
    far) and credit its attester there; InvalidConsensus naming the rule otherwise."""
    a = signed.message
    if not a.slot < block_slot <= a.slot + rules.params.slots_per_epoch:
        raise InvalidConsensus(f"attestation of slot {a.slot} is outside its inclusion window at slot {block_slot}")
    signer, duties = check_attestation(rules, state, signed, (included[0].keys(), included[1].keys()))
    timely_head = block_slot == a.slot + 1 and root_at(state, a.slot) == a.head
    (included[0] if duties is state.current else included[1])[signer] = Vote(includer, timely_head)


# -- blocks --

def proposer_of(state: BranchState, slot: int) -> bytes:
    """The proposer of ``slot`` on a state already advanced to the slot's epoch."""
    return compute_proposer(state.current.validators, state.current.seed, slot)


def apply_block(rules: Rules, parent: BranchState, block: BlockInput) -> BranchState:
    """The state after ``block`` on ``parent``; InvalidConsensus naming the first rule it breaks."""
    params = rules.params
    body = block.body
    if block.parent_root != parent.root:
        raise InvalidConsensus("block does not extend the given parent")
    if body.slot <= parent.slot:
        raise InvalidConsensus(f"block slot {body.slot} is not after its parent's ({parent.slot})")
    if block.timestamp != params.timestamp(body.slot):
        raise InvalidConsensus(f"block timestamp {block.timestamp} is not slot {body.slot}'s ({params.timestamp(body.slot)})")
    if block.extra_data != body.root:
        raise InvalidConsensus("header extra_data does not commit to the consensus body")
    if len(body.attestations) > MAX_ATTESTATIONS:
        raise InvalidConsensus(f"more than {MAX_ATTESTATIONS} attestations in a block")
    epoch = params.epoch_of(body.slot)
    state = advance_to_epoch(rules, parent, epoch, block.root, body.slot)
    proposer = proposer_of(state, body.slot)
    if block.coinbase != proposer:
        raise InvalidConsensus(f"slot {body.slot}'s proposer is 0x{proposer.hex()}, not 0x{block.coinbase.hex()}")
    proposal = BlockProposal(body.slot, block.root).signing_root(rules.chain_id, rules.genesis_hash)
    if _recover(proposal, block.signature) != proposer:
        raise InvalidConsensus("the proposal signature is not the proposer's")
    known = state.reveals.get(proposer)
    known_epoch, known_value = known if known is not None else (-1, state.current.validators.by_address[proposer].randao_tip)
    if known_epoch == epoch:
        if body.randao_reveal != known_value:
            raise InvalidConsensus(f"a second, different RANDAO reveal for epoch {epoch}")
    elif not reveal_matches(body.randao_reveal, epoch, known_epoch, known_value):
        raise InvalidConsensus(f"the RANDAO reveal is not the proposer's reveal for epoch {epoch}")
    mix = next_mix(state.mix, body.randao_reveal)
    if block.mix_hash != mix:
        raise InvalidConsensus("header mix_hash is not H(parent mix ‖ reveal)")
    current, previous = dict(state.current_attesters), dict(state.previous_attesters)
    for signed in body.attestations:
        include_attestation(rules, state, body.slot, signed, (current, previous), proposer)
    reveals = dict(state.reveals)
    reveals[proposer] = (epoch, body.randao_reveal)
    proposals = dict(state.current_proposals)
    proposals[proposer] = proposals.get(proposer, 0) + 1
    horizon = body.slot - 2 * params.slots_per_epoch
    recent = tuple(r for r in state.recent_roots if r[0] >= horizon) + ((body.slot, block.root),)
    return replace(state, root=block.root, slot=body.slot, mix=mix, reveals=_frozen(reveals),
                   current_attesters=_frozen(current), previous_attesters=_frozen(previous),
                   current_proposals=_frozen(proposals), recent_roots=recent)
