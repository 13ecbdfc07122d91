"""One node's consensus, sans-IO: blocks, attestations and slots in; head, finality and duties out.

The node (or a simulation) owns the clock and the network: it calls `on_block` and `on_attestation`
with what arrives, asks `propose(slot)` at a slot's start and `attest(slot)` a third into it, builds
the execution block a proposal describes, and gossips what comes out. Nothing here reads a clock,
sleeps or sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from ogpu_node.consensus.forkchoice import ForkChoice, UnknownParent
from ogpu_node.consensus.protection import MemoryGuard, SigningGuard, SigningRefused
from ogpu_node.consensus.randao import HashChain, next_mix
from ogpu_node.consensus.slashings import Evidence, SlashingDetector, signed_proposal
from ogpu_node.consensus.state import (
    MAX_ATTESTATIONS,
    BlockInput,
    BranchState,
    Checkpoint,
    ConsensusBody,
    InvalidConsensus,
    Rules,
    Settlement,
    advance_to_epoch,
    attestation_signer,
    include_attestation,
    proposer_of,
)
from ogpu_node.crypto import Keypair
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation

MAX_ORPHANS = 1024  # blocks waiting for their parent; beyond it the oldest are forgotten
MAX_PENDING_ATTESTATIONS = 4096


@dataclass(frozen=True)
class ValidatorKey:
    keypair: Keypair
    randao: HashChain

    @property
    def address(self) -> bytes:
        return self.keypair.address


@dataclass(frozen=True)
class Proposal:
    """The header fields and body of a block to build on ``parent_root``; its extra_data is
    ``body.root``, and its execution applies ``settlement`` to Stake (the epochs its boundary settles)."""

    parent_root: bytes
    slot: int
    timestamp: int
    coinbase: bytes
    mix_hash: bytes
    body: ConsensusBody
    settlement: Settlement = ()


class ConsensusCore:
    def __init__(self, rules: Rules, anchor: BranchState, key: ValidatorKey | None = None,
                 guard: SigningGuard | None = None) -> None:
        self.rules = rules
        self.key = key
        # Consulted before every signature (slashing protection); a node passes its record on disk.
        self.guard: SigningGuard = guard if guard is not None else MemoryGuard()
        self.fork_choice = ForkChoice(rules, anchor)
        self._orphans: dict[bytes, BlockInput] = {}  # by root, in arrival order
        self._pool: dict[tuple[bytes, int], SignedAttestation] = {}  # (validator, target epoch)
        self._pending: list[SignedAttestation] = []  # heads not known yet
        self.detector = SlashingDetector()
        self._evidence: list[Evidence] = []  # found, not yet taken by the node to report

    # -- views --

    def head(self) -> bytes:
        return self.fork_choice.head()

    @property
    def finalized(self) -> Checkpoint:
        return self.fork_choice.finalized

    @property
    def justified(self) -> Checkpoint:
        return self.fork_choice.justified

    def state(self, root: bytes) -> BranchState:
        return self.fork_choice.states[root]

    def epoch_state(self, epoch: int) -> BranchState:
        """The head's state carried to ``epoch`` (at least the head's own): that epoch's validators,
        seed and justified checkpoints as the head's branch sees them."""
        head = self.fork_choice.states[self.head()]
        return advance_to_epoch(self.rules, head, max(epoch, head.epoch), b"", -1)

    def _head_state_at(self, slot: int) -> BranchState:
        return self.epoch_state(self.rules.params.epoch_of(slot))

    def proposer_at(self, slot: int) -> bytes:
        """The proposer of ``slot`` on the current head's branch."""
        return proposer_of(self._head_state_at(slot), slot)

    def duties(self, address: bytes, epoch: int) -> tuple[list[int], int | None]:
        """``address``'s proposer slots and attestation slot in ``epoch`` on the head's branch (no
        duties when it is not a validator of that epoch)."""
        state = self.epoch_state(epoch)
        if address not in state.current.validators:
            return [], None
        params = self.rules.params
        slots = range(max(1, params.start_slot(state.epoch)), params.start_slot(state.epoch + 1))
        return ([s for s in slots if proposer_of(state, s) == address],
                state.current.attestation_slot(address, params))

    # -- inputs --

    def on_block(self, block: BlockInput) -> list[bytes]:
        """Import ``block`` and any kept block that was waiting for it; the roots imported. A block
        whose parent is unknown is kept (UnknownParent is raised so the caller can fetch the parent);
        an invalid one raises InvalidConsensus and changes nothing."""
        try:
            self.fork_choice.on_block(block)
            self._observe_block(block)
        except UnknownParent:
            self._orphans.pop(block.root, None)
            self._orphans[block.root] = block
            while len(self._orphans) > MAX_ORPHANS:
                del self._orphans[next(iter(self._orphans))]
            raise
        imported = [block.root]
        progress = True
        while progress:
            progress = False
            for root, orphan in list(self._orphans.items()):
                if orphan.parent_root in self.fork_choice.states:
                    del self._orphans[root]
                    try:
                        self.fork_choice.on_block(orphan)
                    except InvalidConsensus:
                        continue
                    self._observe_block(orphan)
                    imported.append(root)
                    progress = True
        self._retry_pending()
        return imported

    def on_attestation(self, signed: SignedAttestation) -> None:
        """Count an attestation for fork choice and keep it for inclusion; InvalidConsensus if invalid.
        One whose head block is unknown is kept until the block comes. Any validator's signed
        attestation, valid here or not, is checked for slashable offences."""
        self._observe_attestation(signed)
        try:
            signer = self.fork_choice.on_attestation(signed)
        except UnknownParent:
            if len(self._pending) < MAX_PENDING_ATTESTATIONS:
                self._pending.append(signed)
            return
        self._pool.setdefault((signer, signed.message.target_epoch), signed)

    # -- slashing detection --

    def _observe_block(self, block: BlockInput) -> None:
        """A block imported (its proposer signature and attestations checked): its proposal and votes."""
        self._found(self.detector.on_proposal(block.coinbase, signed_proposal(block.body.slot, block.root, block.signature)))
        for signed in block.body.attestations:
            signer = attestation_signer(self.rules, signed)
            if signer is not None:
                self._found(self.detector.on_attestation(signer, signed))

    def is_validator(self, address: bytes | None) -> bool:
        """Whether ``address`` validates in the head's current or previous epoch."""
        head = self.fork_choice.states[self.head()]
        return address is not None and (address in head.current.validators or address in head.previous.validators)

    def _observe_attestation(self, signed: SignedAttestation) -> None:
        signer = attestation_signer(self.rules, signed)
        if self.is_validator(signer):
            self._found(self.detector.on_attestation(signer, signed))

    def _found(self, evidence: Evidence | None) -> None:
        if evidence is not None and len(self._evidence) < MAX_PENDING_ATTESTATIONS:
            self._evidence.append(evidence)

    def on_evidence(self, evidence: Evidence) -> bool:
        """Evidence a peer found (checked: one signer, an offence); True if this node had not found it, in
        which case it is reported as the node's own findings are."""
        found = self.detector.remember(evidence)
        self._found(found)
        return found is not None

    def take_evidence(self) -> list[Evidence]:
        """Offences found since the last call, for the node to report (Slashing verifies them)."""
        found, self._evidence = self._evidence, []
        return found

    def _retry_pending(self) -> None:
        pending, self._pending = self._pending, []
        epoch = self.fork_choice.states[self.head()].epoch
        for signed in pending:
            if signed.message.target_epoch + 1 < epoch:
                continue  # no longer includable nor counted: its block never came
            try:
                self.on_attestation(signed)
            except InvalidConsensus:
                pass

    # -- duties --

    def propose(self, slot: int) -> Proposal | None:
        """What to build at ``slot`` if this node's key proposes it on its head; None otherwise."""
        if self.key is None:
            return None
        params = self.rules.params
        parent = self.fork_choice.states[self.head()]
        if slot <= parent.slot:
            return None
        epoch = params.epoch_of(slot)
        state = advance_to_epoch(self.rules, parent, epoch, b"", -1)
        if proposer_of(state, slot) != self.key.address:
            return None
        reveal = self.key.randao.reveal(epoch)
        self._pool = {k: v for k, v in self._pool.items() if k[1] + 1 >= epoch}  # older: never includable
        current, previous = dict(state.current_attesters), dict(state.previous_attesters)
        chosen: list[SignedAttestation] = []
        for signed in sorted(self._pool.values(), key=lambda s: (s.message.slot, s.signature)):
            try:
                include_attestation(self.rules, state, slot, signed, (current, previous), self.key.address)
            except InvalidConsensus:  # not includable here: outside its window, another branch, a duplicate
                continue
            chosen.append(signed)
            if len(chosen) == MAX_ATTESTATIONS:
                break
        return Proposal(parent.root, slot, params.timestamp(slot), self.key.address, next_mix(state.mix, reveal),
                        ConsensusBody(slot, reveal, tuple(chosen)), state.settlement)

    def sign_proposal(self, slot: int, block_root: bytes) -> bytes:
        """The proposal signature of ``block_root`` at ``slot``; SigningRefused, and no signature, when the
        guard refuses it (another block of this slot was signed, or the slot is below its record)."""
        assert self.key is not None
        message = BlockProposal(slot, block_root).signing_root(self.rules.chain_id, self.rules.genesis_hash)
        self.guard.check_and_record_proposal(slot, message)
        return self.key.keypair.sign_hash(message)

    def attest(self, slot: int) -> SignedAttestation | None:
        """This node's attestation if ``slot`` is its attestation slot, voting for its head; None also
        when the guard refuses to sign it (a double or surround vote with one signed before)."""
        if self.key is None:
            return None
        head = self.head()
        state = self._head_state_at(slot)
        if state.current.attestation_slot(self.key.address, self.rules.params) != slot:
            return None
        source = state.current_justified
        attestation = Attestation(slot, head, source.epoch, source.root, state.current.epoch,
                                  state.current.target_root)
        signing_root = attestation.signing_root(self.rules.chain_id, self.rules.genesis_hash)
        try:
            self.guard.check_and_record_attestation(source.epoch, state.current.epoch, signing_root)
        except SigningRefused:
            return None
        signed = SignedAttestation(attestation, self.key.keypair.sign_hash(signing_root))
        self.on_attestation(signed)
        return signed
