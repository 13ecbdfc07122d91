"""An in-process validator on a real Chain, as `ogpu-node run --keystore` wires it (node/node.py): the
real validator service and consensus core, blocks sealed from a test's pool as Node.seal_block seals
them, the validator's own transactions (its slashing reports) pooled as Node._submit_own pools them,
and trio's mock clock standing in for the wall clock."""

from __future__ import annotations

from typing import Any

import trio

from ogpu_node.chain import Chain
from ogpu_node.consensus import ConsensusCore, InvalidConsensus
from ogpu_node.crypto import Keypair
from ogpu_node.node.pos import ProofOfStake
from ogpu_node.node.validator import ValidatorService
from ogpu_node.node.validator_key import load_validator_key
from ogpu_node.types.signing import Attestation, SignedAttestation


def in_process_validator(chain: Chain, keypair: Keypair, datadir: Any, randao_length: int,
                         pool: list | None = None) -> ValidatorService:
    """``keypair``'s validator service on ``chain`` (genesis time from its consensus section). Each block
    takes every transaction in ``pool`` (all must fit) and empties it."""
    pool = [] if pool is None else pool
    pos = ProofOfStake(chain, chain.genesis.consensus, load_validator_key(datadir, keypair, randao_length))
    genesis_time = chain.genesis.consensus.genesis_time

    async def seal(attrs: Any, build: Any) -> Any:
        executed = build(attrs, list(pool))
        assert not executed.excluded, executed.excluded
        pool.clear()
        return chain.block_by_hash(executed.header.hash)

    def submit(sign: Any) -> bytes:  # the pool's next nonce for the validator
        tx = sign(chain.account(chain.head, keypair.address)[0] + len(pool))
        pool.append(tx)
        return tx.hash

    return ValidatorService(pos, seal, wall_clock=lambda: genesis_time + trio.current_time(), submit=submit)


async def run_for(service: ValidatorService, seconds: float) -> None:
    """Run the service for ``seconds`` of the (mock) clock, then stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


def hear_double_vote(core: ConsensusCore, chain: Chain, offender: Keypair, epoch: int, slots_per_epoch: int) -> None:
    """``offender`` signs two votes for ``epoch``'s target with different heads (the head and its
    parent), and ``core`` hears both, as from the network (neither need be valid on its branch)."""
    for head in (chain.head.hash, chain.head.parent_hash):
        a = Attestation(epoch * slots_per_epoch, head, 0, chain.header_by_number(0).hash, epoch, chain.head.hash)
        try:
            core.on_attestation(SignedAttestation(a, offender.sign_hash(a.signing_root(chain.chain_id, chain.genesis_hash))))
        except InvalidConsensus:
            pass
