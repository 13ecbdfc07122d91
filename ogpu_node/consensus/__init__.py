"""Proof of stake (Gasper-lite), deterministic and sans-IO (docs/consensus.md).

- `params`: the parameters and the slot clock;
- `randao`: reveals from a validator's hash chain, the mix;
- `validators`: validator sets, proposer and attestation-slot duties;
- `state`: a branch's consensus state, block validity, Casper FFG;
- `rewards`: the rewards and penalties an epoch settles, the inactivity leak;
- `forkchoice`: the block tree and LMD-GHOST;
- `core`: one node's consensus: inputs in, head, finality and duties out;
- `protection`: slashing protection, the record every signature of the core is checked against.
"""

from ogpu_node.consensus.core import ConsensusCore, Proposal, ValidatorKey
from ogpu_node.consensus.forkchoice import ForkChoice, UnknownParent
from ogpu_node.consensus.params import ConsensusParams
from ogpu_node.consensus.protection import MemoryGuard, SigningGuard, SigningHistory, SigningRefused
from ogpu_node.consensus.randao import HashChain
from ogpu_node.consensus.state import (
    BlockInput,
    BranchState,
    Checkpoint,
    ConsensusBody,
    InvalidConsensus,
    Rules,
    Settlement,
    apply_block,
    genesis_state,
)
from ogpu_node.consensus.validators import (
    Validator,
    ValidatorSet,
    compute_attestation_slots,
    compute_proposer,
)

__all__ = [
    "MemoryGuard", "SigningGuard", "SigningHistory", "SigningRefused",
    "BlockInput", "BranchState", "Checkpoint", "ConsensusBody", "ConsensusCore", "ConsensusParams", "ForkChoice",
    "HashChain", "InvalidConsensus", "Proposal", "Rules", "Settlement", "UnknownParent", "Validator", "ValidatorKey",
    "ValidatorSet", "apply_block", "compute_attestation_slots", "compute_proposer", "genesis_state",
]
