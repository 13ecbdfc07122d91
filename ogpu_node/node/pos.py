"""A proof-of-stake node's consensus: the genesis section as consensus parameters, each epoch's
validator set read from Stake, each block's consensus record beside it in the chain's store, and the
ConsensusCore rebuilt from those records on start (docs/consensus.md, "Running a validator").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import rlp
from eth_abi import encode

from ogpu_node.chain import Chain, ChainError
from ogpu_node.config import ConsensusConfig
from ogpu_node.consensus import (
    BlockInput,
    ConsensusBody,
    ConsensusCore,
    ConsensusParams,
    InvalidConsensus,
    Proposal,
    Rules,
    SigningGuard,
    Validator,
    ValidatorKey,
    ValidatorSet,
    apply_block,
    genesis_state,
)
from ogpu_node.consensus.slashings import Evidence
from ogpu_node.contracts.abi import load_abi
from ogpu_node.contracts.addresses import SLASHING
from ogpu_node.execution.calls import signed_call
from ogpu_node.execution.state import BlockAttributes, ExecutedBlock

log = logging.getLogger("ogpu.consensus")

_SLASHING_ABI = load_abi("Slashing")
REPORT_TIP = 10**9  # wei per gas: a slashing report pays a proposer to include it
CONSENSUS_RECORD = b"ogpu:pos:"  # + block hash -> rlp([consensus body, proposal signature])


def consensus_params(config: ConsensusConfig) -> ConsensusParams:
    return ConsensusParams(config.genesis_time, config.slot_time, config.slots_per_epoch, config.randao_length,
                           config.base_reward_ppb, config.block_reward, config.inactivity_quotient)


def slashing_report_data(evidence: Evidence) -> bytes:
    """The calldata of the Slashing report of ``evidence`` (to the SLASHING address)."""
    function = _SLASHING_ABI.function(evidence.function)
    return function.selector + encode(list(function.inputs), [evidence.first, evidence.second])


def chain_rules(chain: Chain, config: ConsensusConfig) -> Rules:
    """The consensus rules of ``chain``: its parameters, its signing domain, and each epoch's validator
    set, read from Stake in the state of the last block before the epoch (Stake changes its set only
    at epoch boundaries, so that is the set its first block's system call left)."""
    execution = chain.execution

    @lru_cache(maxsize=1024)
    def validators_at(root: bytes) -> ValidatorSet:
        header = chain.header_by_hash(root)
        if header is None:
            raise ChainError(f"no stored block 0x{root.hex()} to read its validator set from")
        active = execution.stake.active_validators(execution.read_host(header))
        return ValidatorSet.of([Validator(address, staked, tip) for address, staked, tip in active])

    return Rules(consensus_params(config), chain.chain_id, chain.genesis_hash, lambda root, epoch: validators_at(root))


def block_input(header: Any, body: ConsensusBody, signature: bytes) -> BlockInput:
    return BlockInput(header.hash, header.parent_hash, header.timestamp, header.coinbase, header.mix_hash,
                      header.extra_data, body, signature)


class ProofOfStake:
    """The consensus core over one Chain: what the validator service, the RPC and the (future) network
    share. Its state changes on the trio thread only; block building reads immutable states."""

    def __init__(self, chain: Chain, config: ConsensusConfig, key: ValidatorKey | None = None,
                 guard: SigningGuard | None = None) -> None:
        """``guard``: the key's slashing protection, consulted before every signature (a node passes its
        record on disk, node/slashing_protection.py; None keeps one in memory)."""
        self.chain = chain
        self.params = consensus_params(config)
        if key is not None:
            _check_key(chain, config, key)
        self.rules = chain_rules(chain, config)
        genesis = chain.header_by_number(0)
        self.core = ConsensusCore(self.rules, genesis_state(self.rules, genesis.hash, genesis.mix_hash), key, guard)
        self._replay()

    @property
    def key(self) -> ValidatorKey | None:
        return self.core.key

    def _replay(self) -> None:
        """Feed the core every stored block from genesis to the head, so a restarted node has the
        fork-choice and finality state it had."""
        head = self.chain.head.block_number
        for number in range(1, head + 1):
            header = self.chain.header_by_number(number)
            record = self.chain.store.get(CONSENSUS_RECORD + header.hash)
            if record is None:
                raise ChainError(f"block {number} has no consensus record: this datadir was not made by a "
                                 "proof-of-stake node of this genesis")
            body, signature = rlp.decode(record)
            try:
                self.core.on_block(block_input(header, ConsensusBody.decode(body), signature))
            except InvalidConsensus as exc:  # another consensus section than the one this chain was made with
                raise ChainError(f"block {number} does not replay under this genesis's consensus section: {exc}") from None
        if head:
            finalized = self.core.finalized
            log.info("consensus replayed blocks=%d head=0x%s finalized_epoch=%d",
                     head, self.core.head().hex(), finalized.epoch)

    def import_block(self, block: Any, inp: BlockInput, settlement: Any) -> ExecutedBlock:
        """Execute and store a block that consensus accepted (``settlement``: what its parent's consensus
        state derives for it), with its consensus record in the same write transaction, so a crash keeps
        both or neither and a restarted node replays it. The head stays; fork choice moves it."""
        with self.chain.store.write_session():
            executed = self.chain.import_block(block, settlement=settlement)
            self.chain.store[CONSENSUS_RECORD + inp.root] = rlp.encode([inp.body.encode(), inp.signature])
        return executed

    def report_transaction(self, evidence: Evidence, nonce: int, gas: int) -> Any:
        """The Slashing report of ``evidence``, signed by this validator with ``nonce``; fees from the
        head's base fee (twice it, as a wallet would, so a rising fee does not strand it)."""
        assert self.key is not None
        data = slashing_report_data(evidence)
        base_fee = self.chain.head.base_fee_per_gas
        return signed_call(self.key.keypair.private_key, self.chain.chain_id, nonce, SLASHING, data, gas=gas,
                           max_fee_per_gas=2 * base_fee + REPORT_TIP, max_priority_fee_per_gas=REPORT_TIP)

    def builder(self, proposal: Proposal, built: list[BlockInput]) -> Callable[[BlockAttributes, Sequence[Any]], ExecutedBlock]:
        """A block builder for Node.seal_block (it runs in a worker thread): builds the proposal's block,
        signs it, checks it against the parent's consensus state and stores its consensus record, all
        in the block's own write transaction, so a crash leaves both or neither. The block's
        BlockInput is appended to ``built`` for the core (fed on the trio thread)."""
        parent = self.core.state(proposal.parent_root)  # immutable: safe to read from the worker
        chain, store, core, rules = self.chain, self.chain.store, self.core, self.rules

        def build(attrs: BlockAttributes, transactions: Sequence[Any]) -> ExecutedBlock:
            if chain.head.hash != proposal.parent_root:
                raise ChainError("the chain's head is not the proposal's parent")
            before = chain.head
            try:
                with store.write_session():
                    executed = chain.build_block(attrs, transactions)
                    # build_block moved the head inside our session, which has not committed yet: RPC
                    # readers keep the committed head until it has.
                    chain.head = before
                    header = executed.header
                    block = block_input(header, proposal.body, core.sign_proposal(proposal.slot, header.hash))
                    child = apply_block(rules, parent, block)  # never commit a block consensus would refuse
                    if child.settlement != attrs.settlement:
                        raise ChainError("the block's settlement is not the one its consensus state derives")
                    store[CONSENSUS_RECORD + header.hash] = rlp.encode([proposal.body.encode(), block.signature])
            except BaseException:
                chain.head = before
                raise
            chain.head = header  # committed (the node's head lock keeps other writers out meanwhile)
            built.append(block)
            return executed

        return build


def _check_key(chain: Chain, config: ConsensusConfig, key: ValidatorKey) -> None:
    """Refuse a key whose RANDAO chain is not the one Stake registered for it (its reveals would be
    refused); a key not registered yet validates once an epoch boundary activates it."""
    registered = chain.execution.stake.validatorOf(chain.execution.read_host(chain.head), key.address)
    if registered.randao_tip == bytes(32):
        log.warning("0x%s is not a registered validator: it gets duties once Stake activates it "
                    "(setRandaoTip with `ogpu-node validator randao-tip`, then setRoles)", key.address.hex())
    elif registered.randao_tip != key.randao.tip:
        raise ChainError(f"the RANDAO tip of 0x{key.address.hex()} (0x{key.randao.tip.hex()}) is not the one "
                         f"Stake registered (0x{registered.randao_tip.hex()}): run `ogpu-node validator randao-tip` "
                         "with the genesis's randaoLength")
