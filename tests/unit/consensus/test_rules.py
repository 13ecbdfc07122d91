"""Each consensus rule of docs/consensus.md, broken once: the block or attestation is refused with the
rule's words and the tree is unchanged."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from ogpu_node.consensus import (
    BlockInput,
    ConsensusBody,
    ConsensusCore,
    InvalidConsensus,
    Validator,
    ValidatorSet,
    compute_attestation_slots,
    compute_proposer,
    genesis_state,
)
from ogpu_node.consensus.randao import hash_times
from ogpu_node.crypto import keccak
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation
from tests.unit.consensus.sim import (
    GENESIS_MIX,
    GENESIS_ROOT,
    RANDAO_LENGTH,
    block_root,
    make_keys,
    make_rules,
)


def node_with(count: int = 1, index: int = 0) -> ConsensusCore:
    keys = make_keys(count)
    rules = make_rules(keys)
    return ConsensusCore(rules, genesis_state(rules, GENESIS_ROOT, GENESIS_MIX), keys[index])


def build(node: ConsensusCore, slot: int, **changes) -> BlockInput:
    """The block ``node`` proposes at ``slot``, with ``changes`` to its fields, signed over its root."""
    p = node.propose(slot)
    assert p is not None
    body = changes.pop("body", p.body)
    fields = dict(parent_root=p.parent_root, timestamp=p.timestamp, coinbase=p.coinbase, mix_hash=p.mix_hash,
                  extra_data=body.root)
    fields.update(changes)
    root = block_root(fields["parent_root"], fields["timestamp"], fields["coinbase"], fields["mix_hash"],
                      fields["extra_data"])
    # Signed with the key itself: these tests sign conflicting blocks of one slot, which the core's
    # slashing protection (node.sign_proposal) refuses.
    message = BlockProposal(body.slot, root).signing_root(node.rules.chain_id, node.rules.genesis_hash)
    return BlockInput(root, body=body, signature=node.key.keypair.sign_hash(message), **fields)


def refused(node: ConsensusCore, block: BlockInput, words: str) -> None:
    head, known = node.head(), set(node.fork_choice.states)
    with pytest.raises(InvalidConsensus, match=words):
        node.on_block(block)
    assert node.head() == head and set(node.fork_choice.states) == known


def test_a_proposer_cannot_choose_its_reveal():
    node = node_with()
    first = build(node, 1)
    node.on_block(first)
    # a second block of the same epoch must carry the same reveal: any other is refused
    other = ConsensusBody(2, keccak(b"a reveal I like better"))
    refused(node, build(node, 2, body=other, mix_hash=keccak(first.mix_hash + other.randao_reveal)),
            "a second, different RANDAO reveal for epoch 0")
    # the next epoch's reveal is one value only: the preimage one step down the chain
    chain = node.key.randao
    assert keccak(chain.reveal(1)) == chain.reveal(0) and hash_times(chain.reveal(0), 1) == chain.tip
    slot = node.rules.params.start_slot(1)
    wrong = ConsensusBody(slot, chain.reveal(2))  # a real value of the chain, for the wrong epoch
    refused(node, build(node, slot, body=wrong, mix_hash=keccak(first.mix_hash + wrong.randao_reveal)),
            "the RANDAO reveal is not the proposer's reveal for epoch 1")
    node.on_block(build(node, 2))  # the honest reveal is accepted
    assert node.state(node.head()).reveals[node.key.address] == (0, chain.reveal(0))
    assert RANDAO_LENGTH > 2


def test_header_and_signature_rules():
    node = node_with(2, 0)
    slot = next(s for s in range(1, 30) if node.proposer_at(s) == node.key.address)
    good = build(node, slot)
    other = make_keys(2)[1].keypair.address
    refused(node, build(node, slot, timestamp=good.timestamp + 1), f"block timestamp {good.timestamp + 1} is not slot")
    refused(node, build(node, slot, coinbase=other), f"slot {slot}'s proposer is")
    refused(node, build(node, slot, extra_data=b"\0" * 32), "extra_data does not commit to the consensus body")
    refused(node, build(node, slot, mix_hash=b"\0" * 32), r"mix_hash is not H\(parent mix ‖ reveal\)")
    refused(node, replace(good, signature=make_keys(2)[1].keypair.sign_hash(b"\1" * 32)),
            "the proposal signature is not the proposer's")
    refused(node, replace(good, body=replace(good.body, slot=0), extra_data=replace(good.body, slot=0).root),
            "block slot 0 is not after its parent's")
    node.on_block(good)
    assert node.head() == good.root


def test_attestation_rules():
    keys = make_keys(4)
    rules = make_rules(keys)
    anchor = genesis_state(rules, GENESIS_ROOT, GENESIS_MIX)
    nodes = [ConsensusCore(rules, anchor, key) for key in keys]
    slots = compute_attestation_slots(anchor.current.validators, GENESIS_MIX, 0, rules.params)
    attester = next(i for i, k in enumerate(keys) if slots[k.address] >= 1)
    a_slot = slots[keys[attester].address]
    signed = nodes[attester].attest(a_slot)
    assert signed is not None and nodes[attester].attest(a_slot + 1) is None  # once per epoch
    a = signed.message

    def signed_as(message: Attestation, key=keys[attester]) -> SignedAttestation:
        return SignedAttestation(message, key.keypair.sign_hash(message.signing_root(rules.chain_id, rules.genesis_hash)))

    observer = nodes[(attester + 1) % 4]
    for message, words in [
        (replace(a, target_root=b"\5" * 32), "target root is not this branch's checkpoint"),
        (replace(a, source_epoch=1), "source is not this branch's justified checkpoint"),
        (replace(a, slot=(a_slot + 1) % 8 or 1), "does not attest at slot"),
        (replace(a, target_epoch=3), "attestation slot is not in its target epoch"),
    ]:
        with pytest.raises(InvalidConsensus, match=words):
            observer.on_attestation(signed_as(message))
    with pytest.raises(InvalidConsensus, match="not signed by a validator"):
        observer.on_attestation(signed_as(a, make_keys(5)[4]))
    observer.on_attestation(signed)
    # included once; again in a later block of the branch it is a duplicate
    proposer_slot = next(s for s in range(a_slot + 1, a_slot + 9)
                         if compute_proposer(anchor.current.validators, GENESIS_MIX, s) is not None)
    proposer = next(n for n in nodes if n.proposer_at(proposer_slot) == n.key.address)
    proposer.on_attestation(signed)
    block = build(proposer, proposer_slot)
    assert signed in block.body.attestations
    proposer.on_block(block)
    later = next(s for s in range(proposer_slot + 1, proposer_slot + 20) if proposer.proposer_at(s) == proposer.key.address)
    p = proposer.propose(later)
    assert signed not in p.body.attestations  # the proposer leaves it out
    again = ConsensusBody(later, p.body.randao_reveal, (signed,))
    refused(proposer, build(proposer, later, body=again), "already has an attestation for epoch 0 on this branch")
    early = signed_as(replace(a, slot=later))  # an attestation cannot be included in its own slot
    refused(proposer, build(proposer, later, body=ConsensusBody(later, p.body.randao_reveal, (early,))),
            f"attestation of slot {later} is outside its inclusion window at slot {later}")


def test_proposers_are_drawn_by_stake_and_everyone_attests_once_per_epoch():
    keys = make_keys(4)
    validators = ValidatorSet.of([Validator(k.address, stake, k.randao.tip) for k, stake in zip(keys, (1, 1, 1, 7), strict=True)])
    drawn = Counter(compute_proposer(validators, GENESIS_MIX, slot) for slot in range(2000))
    assert drawn[keys[3].address] > 1200 and all(drawn[k.address] > 100 for k in keys[:3])
    big = ValidatorSet.of([Validator(keccak(b"%d" % i)[:20], 32, b"\0" * 32) for i in range(100)])
    params = make_rules(keys).params
    slots = compute_attestation_slots(big, GENESIS_MIX, 3, params)
    assert set(slots) == set(big.by_address) and set(Counter(slots.values()).values()) <= {12, 13}
    assert set(slots.values()) == set(range(24, 32))


def test_malformed_bodies_and_conflicts_with_finality_are_refused():
    for data in (b"", b"\xc0", b"\xc3\x01\x02\x03", b"\xf8" + b"\xff" * 10):
        with pytest.raises(InvalidConsensus, match="malformed consensus body"):
            ConsensusBody.decode(data)
    body = ConsensusBody(5, b"\1" * 32)
    assert ConsensusBody.decode(body.encode()) == body


def test_a_hash_chain_rebuilt_from_its_checkpoints_gives_the_same_reveals():
    from ogpu_node.consensus import HashChain

    chain = HashChain(keccak(b"secret"), 3000)
    again = HashChain.from_checkpoints(3000, chain.checkpoints(), chain.tip)
    assert [again.reveal(e) for e in (0, 1, 1500, 2999)] == [chain.reveal(e) for e in (0, 1, 1500, 2999)]
    assert again.secret == keccak(b"secret")
    with pytest.raises(ValueError, match="do not end at the tip"):
        HashChain.from_checkpoints(3000, chain.checkpoints(), keccak(b"another tip"))
    with pytest.raises(ValueError, match="keeps 3 checkpoints"):
        HashChain.from_checkpoints(3000, chain.checkpoints()[:2], chain.tip)
