"""The block tree and LMD-GHOST fork choice from the justified checkpoint (docs/consensus.md, "Fork
choice"), as phase0's `fork-choice.md`: `on_block`, `on_attestation`, `get_head`."""

from __future__ import annotations

from ogpu_node.consensus.state import (
    BlockInput,
    BranchState,
    Checkpoint,
    InvalidConsensus,
    Rules,
    advance_to_epoch,
    apply_block,
    attestation_signer,
    check_attestation,
)
from ogpu_node.types.signing import SignedAttestation


class UnknownParent(InvalidConsensus):
    """The block's parent is not known (yet): fetch it, or keep the block until it comes."""


class ForkChoice:
    def __init__(self, rules: Rules, anchor: BranchState) -> None:
        self.rules = rules
        self.states: dict[bytes, BranchState] = {anchor.root: anchor}
        self.parents: dict[bytes, bytes | None] = {anchor.root: None}
        self.children: dict[bytes, list[bytes]] = {anchor.root: []}
        self.latest: dict[bytes, tuple[int, bytes]] = {}  # validator -> (target epoch, head)
        self.justified: Checkpoint = anchor.current_justified
        self.finalized: Checkpoint = anchor.finalized

    # -- the tree --

    def ancestor_at(self, root: bytes, slot: int) -> bytes:
        """The block of ``root``'s branch at ``slot``, or the last one before it."""
        while self.states[root].slot > slot:
            parent = self.parents[root]
            if parent is None:
                break
            root = parent
        return root

    def is_descendant(self, root: bytes, ancestor: bytes) -> bool:
        if ancestor not in self.states:
            return False
        return self.ancestor_at(root, self.states[ancestor].slot) == ancestor

    # -- handlers --

    def on_block(self, block: BlockInput) -> BranchState:
        """Import a block: its consensus state, its attestations as latest messages, justification and
        finalization. InvalidConsensus (UnknownParent for a missing parent) leaves the tree unchanged."""
        known = self.states.get(block.root)
        if known is not None:
            return known
        parent = self.states.get(block.parent_root)
        if parent is None:
            raise UnknownParent(f"unknown parent 0x{block.parent_root.hex()}")
        if not self.is_descendant(block.parent_root, self.finalized.root):
            raise InvalidConsensus("block conflicts with the finalized checkpoint")
        state = apply_block(self.rules, parent, block)
        self.states[block.root] = state
        self.parents[block.root] = block.parent_root
        self.children[block.root] = []
        self.children[block.parent_root].append(block.root)
        for signed in block.body.attestations:  # valid: apply_block checked them
            signer = attestation_signer(self.rules, signed)
            assert signer is not None
            self._update_latest(signer, signed)
        if state.current_justified.epoch > self.justified.epoch:
            self.justified = state.current_justified
        if state.finalized.epoch > self.finalized.epoch:
            self.finalized = state.finalized
            self._prune()
        return state

    def on_attestation(self, signed: SignedAttestation) -> bytes:
        """Count an attestation from the network as its validator's latest message; the attester."""
        a = signed.message
        head_state = self.states.get(a.head)
        if head_state is None:
            raise UnknownParent(f"attestation head 0x{a.head.hex()} is not known")
        if head_state.slot > a.slot:
            raise InvalidConsensus("attestation head is after the attestation's slot")
        state = advance_to_epoch(self.rules, head_state, a.target_epoch, b"", -1)
        signer, _ = check_attestation(self.rules, state, signed, (frozenset(), frozenset()))
        self._update_latest(signer, signed)
        return signer

    def _update_latest(self, signer: bytes, signed: SignedAttestation) -> None:
        a = signed.message
        previous = self.latest.get(signer)
        if a.head in self.states and (previous is None or a.target_epoch > previous[0]):
            self.latest[signer] = (a.target_epoch, a.head)

    def _prune(self) -> None:
        """Forget the blocks that do not descend from the finalized checkpoint: never head again."""
        keep: set[bytes] = set()
        stack = [self.finalized.root]
        while stack:
            root = stack.pop()
            keep.add(root)
            stack.extend(self.children[root])
        for table in (self.states, self.parents, self.children):
            for root in [r for r in table if r not in keep]:
                del table[root]
        self.parents[self.finalized.root] = None
        self.latest = {v: m for v, m in self.latest.items() if m[1] in keep}

    # -- LMD-GHOST --

    def weights(self) -> dict[bytes, int]:
        """Each block's weight: the stake of the validators whose latest message is it or below it,
        over the blocks descending from the justified checkpoint."""
        root = self.justified.root if self.justified.root in self.states else self.finalized.root
        validators = self.states[root].current.validators
        own: dict[bytes, int] = {}
        for validator, (_, head) in self.latest.items():
            own[head] = own.get(head, 0) + validators.stake_of(validator)
        order, stack = [], [root]
        while stack:
            block = stack.pop()
            order.append(block)
            stack.extend(self.children[block])
        weight: dict[bytes, int] = {}
        for block in reversed(order):  # children before their parents
            weight[block] = own.get(block, 0) + sum(weight[c] for c in self.children[block])
        return weight

    def head(self) -> bytes:
        weight = self.weights()
        block = self.justified.root if self.justified.root in self.states else self.finalized.root
        while self.children[block]:
            block = max(self.children[block], key=lambda c: (weight[c], c))
        return block
