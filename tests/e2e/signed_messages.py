"""What a proof-of-stake node's chain database holds that its validator signed, read with the node's own
code from a stopped node's (or a copied) LMDB directory: each block's proposal signature and the
attestations its consensus body includes (docs/consensus.md, "Running a validator": the record
`ogpu:pos:<block hash>` beside each block). For tests that check, from outside the slashing-protection
record, what a validator let out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import rlp

from ogpu_node.chain import Chain
from ogpu_node.config import GenesisConfig
from ogpu_node.consensus import ConsensusBody
from ogpu_node.crypto.signatures import recover_signer
from ogpu_node.db import LMDBStore
from ogpu_node.node.pos import CONSENSUS_RECORD, ProofOfStake
from ogpu_node.types.signing import BlockProposal, SignedAttestation, SignedProposal


@dataclass
class SignedMessages:
    """Signed messages gathered from one or more chain databases, each once."""

    proposals: dict[bytes, SignedProposal] = field(default_factory=dict)  # by block hash
    attestations: dict[bytes, SignedAttestation] = field(default_factory=dict)  # by ABI encoding
    extra_data: dict[bytes, bytes] = field(default_factory=dict)  # block hash -> the header's extra_data
    heads: list[int] = field(default_factory=list)  # each database's head number, in reading order
    genesis_hash: bytes = b""

    def read(self, chaindata: Path, genesis: GenesisConfig) -> None:
        """Add every canonical block of the database at ``chaindata`` (its node stopped; a node that never
        switched heads, as a lone validator, holds no other)."""
        store = LMDBStore(chaindata, durable=False)
        try:
            chain = Chain(store, genesis)
            self.genesis_hash = chain.genesis_hash
            self.heads.append(chain.head.block_number)
            for number in range(1, chain.head.block_number + 1):
                header = chain.header_by_number(number)
                record = store.get(CONSENSUS_RECORD + header.hash)
                assert record is not None, f"block {number} of {chaindata} has no consensus record"
                body_bytes, signature = rlp.decode(record)
                body = ConsensusBody.decode(body_bytes)
                assert body.root == header.extra_data, f"block {number}: extra_data is not its body's root"
                self.proposals[header.hash] = SignedProposal(BlockProposal(body.slot, header.hash), signature)
                self.extra_data[header.hash] = header.extra_data
                for signed in body.attestations:
                    self.attestations[signed.encode()] = signed
        finally:
            store.close()


def signer(signed: SignedProposal | SignedAttestation, chain_id: int, genesis_hash: bytes) -> bytes:
    """The address whose key made ``signed``'s signature."""
    return recover_signer(signed.message.signing_root(chain_id, genesis_hash), signed.signature)


def vote_source_epoch(chaindata: Path, genesis: GenesisConfig) -> int:
    """The source epoch of every vote the chain in ``chaindata`` leads its validator to from the epoch
    after its head on, as long as no vote is added to it: its justified checkpoint once the votes its
    blocks include are counted at the coming epoch boundaries (two of them count them all). Read as a
    node restarted on it replays it (its node stopped)."""
    store = LMDBStore(chaindata, durable=False)
    try:
        assert genesis.consensus is not None
        core = ProofOfStake(Chain(store, genesis), genesis.consensus).core
        return core.epoch_state(core.state(core.head()).epoch + 2).current_justified.epoch
    finally:
        store.close()
