"""The execution engine over one store: genesis, block execution (build and import), state reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rlp
from eth.abc import BlockAPI, BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI, StateAPI
from eth.consensus.context import ConsensusContext
from eth.db.atomic import AtomicDB
from eth.db.chain import ChainDB
from eth.db.schema import SchemaV1
from eth.exceptions import HeaderNotFound
from eth.rlp.headers import BlockHeader
from eth.vm.chain_context import ChainContext
from eth_utils import ValidationError as EthUtilsValidationError

from ogpu_node.config import GenesisConfig
from ogpu_node.contracts.addresses import ALL as NATIVE_CONTRACTS
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.task import Task
from ogpu_node.crypto import keccak
from ogpu_node.execution.codec import check_gas, recover_sender
from ogpu_node.execution.errors import InvalidBlock, InvalidTransaction
from ogpu_node.execution.native import SystemHost, SystemLog, make_state_class
from ogpu_node.execution.trie import BLANK_ROOT, ordered_trie_root
from ogpu_node.execution.vm import OgpuVM

_VALIDATION_ERRORS = (EthUtilsValidationError,)


@dataclass(frozen=True)
class BlockAttributes:
    """What the proposer chooses for a new block; everything else follows from the parent and the txs."""

    timestamp: int
    coinbase: bytes
    mix_hash: bytes
    extra_data: bytes = b""
    gas_limit: int | None = None  # None: keep the parent's
    # Proof of stake: the rewards and penalties (address, signed wei) the start-of-block system call
    # applies to Stake, derived by every node from the parent's consensus state (not in the header).
    settlement: tuple[tuple[bytes, int], ...] = ()


@dataclass(frozen=True)
class ExecutedBlock:
    block: BlockAPI
    receipts: tuple[ReceiptAPI, ...]
    senders: tuple[bytes, ...]
    # Builder only: transactions left out, with the reason (they stay in the pool or are dropped by it).
    excluded: tuple[tuple[SignedTransactionAPI, str], ...] = ()
    # Logs of the start-of-block system call (no transaction): served under a synthetic tx hash.
    system_logs: tuple[SystemLog, ...] = ()

    @property
    def header(self) -> BlockHeaderAPI:
        return self.block.header


def genesis_mix(genesis: GenesisConfig) -> bytes:
    """The genesis block's mix_hash: the file's, and on a proof-of-stake chain also a hash of the
    consensus parameters, so the genesis hash covers all of the consensus section (its validators are
    in the genesis state)."""
    if genesis.consensus is None:
        return genesis.mix_hash
    return keccak(genesis.mix_hash + rlp.encode(genesis.consensus.encode()))


def _write_genesis_validators(state: Any, genesis: GenesisConfig) -> None:
    """The consensus section's validators, staked and active in Stake, their stake minted into
    Stake's balance (its invariant: balance = Σ staked + Σ unbonding)."""
    assert genesis.consensus is not None
    stake = Stake(genesis.protocol, genesis.consensus)
    host = SystemHost(state, [])
    for validator in genesis.consensus.validators:
        stake.add_genesis_validator(host, validator.address, validator.stake, validator.randao_tip)
        state.set_balance(STAKE, state.get_balance(STAKE) + validator.stake)


class Execution:
    """Runs blocks against the state in `store` (an LMDBStore) with py-evm's VM."""

    def __init__(self, store, genesis: GenesisConfig) -> None:
        self.store = store
        self.chain_id = genesis.chain_id
        self.chaindb = ChainDB(store)
        self.chain_context = ChainContext(genesis.chain_id)
        self.genesis_config = genesis
        # Computed in memory first: the native contracts' signing roots need the genesis hash.
        self.genesis_block = self._genesis(AtomicDB())
        # The native contracts take their parameters from genesis, so each chain has its own VM class.
        state_class = make_state_class(genesis.protocol, genesis.chain_id, self.genesis_block.hash, genesis.consensus)
        self.vm_class: type[OgpuVM] = OgpuVM.configure(__name__="OgpuVM", _state_class=state_class)

    # -- headers (py-evm's own key layout, so its VM finds ancestors for BLOCKHASH) --

    def header_by_hash(self, block_hash: bytes) -> BlockHeaderAPI | None:
        try:
            return self.chaindb.get_block_header_by_hash(block_hash)
        except HeaderNotFound:
            return None

    def canonical_hash(self, number: int) -> bytes | None:
        try:
            return self.chaindb.get_canonical_block_hash(number)
        except HeaderNotFound:
            return None

    def head_hash(self) -> bytes | None:
        return self.store.get(SchemaV1.make_canonical_head_hash_lookup_key())

    def write_header(self, header: BlockHeaderAPI) -> None:
        self.store[header.hash] = rlp.encode(header)

    def write_canonical(self, number: int, block_hash: bytes | None) -> None:
        key = SchemaV1.make_block_number_to_hash_lookup_key(number)
        if block_hash is None:
            self.store.delete(key)
        else:
            self.store[key] = rlp.encode(block_hash, sedes=rlp.sedes.binary)

    def write_head(self, block_hash: bytes) -> None:
        self.store[SchemaV1.make_canonical_head_hash_lookup_key()] = block_hash

    # -- genesis --

    def write_genesis_state(self) -> BlockAPI:
        """Write the genesis state into the store (in a write session); returns the genesis block."""
        block = self._genesis(self.store)
        assert block.hash == self.genesis_block.hash
        return block

    def _genesis(self, db: Any) -> BlockAPI:
        genesis = self.genesis_config
        pre_genesis = BlockHeader(difficulty=0, block_number=-1, gas_limit=0)
        state = OgpuVM.build_state(db, pre_genesis, self.chain_context)
        for address in NATIVE_CONTRACTS:
            # Code 0xfe (never run: the precompile runs first) so that Solidity's EXTCODESIZE check
            # passes and EIP-161 never treats the account as empty; nonce 1 likewise.
            state.set_code(address, b"\xfe")
            state.set_nonce(address, 1)
        for address, account in genesis.alloc.items():
            state.set_balance(address, account.balance)
            state.set_nonce(address, account.nonce)
            if account.code:
                state.set_code(address, account.code)
            for slot, value in account.storage.items():
                state.set_storage(address, slot, value)
        if genesis.consensus is not None:
            _write_genesis_validators(state, genesis)
        state.persist()
        header = OgpuVM.create_genesis_header(
            state_root=state.state_root,
            gas_limit=genesis.gas_limit,
            timestamp=genesis.timestamp,
            extra_data=genesis.extra_data,
            coinbase=genesis.coinbase,
            mix_hash=genesis_mix(genesis),
            base_fee_per_gas=genesis.base_fee,
            difficulty=0,
            nonce=b"\x00" * 8,
        )
        return OgpuVM.get_block_class()(header, transactions=[], uncles=[], withdrawals=[])

    # -- blocks --

    def _vm(self, header: BlockHeaderAPI) -> OgpuVM:
        return self.vm_class(
            header=header,
            chaindb=self.chaindb,
            chain_context=self.chain_context,
            consensus_context=ConsensusContext(self.store),
        )

    def child_header(self, parent: BlockHeaderAPI, attrs: BlockAttributes) -> BlockHeaderAPI:
        return OgpuVM.create_header_from_parent(
            parent,
            timestamp=attrs.timestamp,
            coinbase=attrs.coinbase,
            mix_hash=attrs.mix_hash,
            extra_data=attrs.extra_data,
            gas_limit=parent.gas_limit if attrs.gas_limit is None else attrs.gas_limit,
        )

    def execute(
        self,
        parent: BlockHeaderAPI,
        attrs: BlockAttributes,
        transactions: Sequence[SignedTransactionAPI],
        *,
        building: bool,
    ) -> ExecutedBlock:
        """One pass over the transactions: state, receipts, roots and the sealed header.

        Building, a transaction that cannot be included is left out with its reason; importing, it
        makes the block invalid. Writes state nodes to the store: call inside a write session.
        """
        header = self.child_header(parent, attrs)
        vm = self._vm(header)
        vm.settlement = attrs.settlement
        vm.block_preprocessing(vm.get_block())
        included: list[SignedTransactionAPI] = []
        receipts: list[ReceiptAPI] = []
        senders: list[bytes] = []
        excluded: list[tuple[SignedTransactionAPI, str]] = []
        for index, tx in enumerate(transactions):
            if tx.gas > header.gas_limit - header.gas_used:
                if building:
                    excluded.append((tx, "gas limit reached"))
                    continue
                raise InvalidBlock(f"transaction {index}: gas {tx.gas} exceeds the block's remaining gas")
            try:
                sender = recover_sender(tx)
                receipt = self._apply(vm, header, tx)
            except (*_VALIDATION_ERRORS, InvalidTransaction) as exc:
                if building:
                    excluded.append((tx, str(exc)))
                    continue
                raise InvalidBlock(f"transaction {index}: {exc}") from None
            header = vm.add_receipt_to_header(header, receipt)
            included.append(tx)
            receipts.append(receipt)
            senders.append(sender)

        header = header.copy(
            transaction_root=ordered_trie_root([tx.encode() for tx in included]),
            receipt_root=ordered_trie_root([r.encode() for r in receipts]),
            withdrawals_root=BLANK_ROOT,
        )
        block = OgpuVM.get_block_class()(header, transactions=included, uncles=[], withdrawals=[])
        block = vm.block_postprocessing(block)
        block = vm.finalize_block(block).block
        return ExecutedBlock(
            block, tuple(receipts), tuple(senders), tuple(excluded), tuple(vm.system_logs)
        )

    @staticmethod
    def _apply(vm: OgpuVM, header: BlockHeaderAPI, tx: SignedTransactionAPI) -> ReceiptAPI:
        """VM.apply_transaction, but a transaction found invalid midway leaves no trace in the state
        (py-evm may already have charged gas and bumped the nonce when it raises)."""
        check_gas(tx)
        vm.validate_transaction_against_header(header, tx)
        vm.state.lock_changes()
        snapshot = vm.state.snapshot()
        try:
            computation = vm.state.apply_transaction(tx)
            receipt = vm.make_receipt(header, tx, computation, vm.state)
            vm.validate_receipt(receipt)
        except BaseException:
            vm.state.revert(snapshot)
            raise
        vm.state.commit(snapshot)
        return receipt

    def import_block(self, parent: BlockHeaderAPI, block: BlockAPI,
                     settlement: tuple[tuple[bytes, int], ...] = ()) -> ExecutedBlock:
        """Re-execute a block received from outside (with the settlement consensus derived for it) and
        check that it reproduces its header."""
        header = block.header
        if header.parent_hash != parent.hash:
            raise InvalidBlock("block's parent hash is not the given parent")
        if block.uncles:
            raise InvalidBlock("blocks may not have uncles")
        if getattr(block, "withdrawals", ()):
            raise InvalidBlock("blocks may not have withdrawals")
        try:
            OgpuVM.validate_header(header, parent)
        except _VALIDATION_ERRORS as exc:
            raise InvalidBlock(f"invalid header: {exc}") from None
        attrs = BlockAttributes(
            timestamp=header.timestamp,
            coinbase=header.coinbase,
            mix_hash=header.mix_hash,
            extra_data=header.extra_data,
            gas_limit=header.gas_limit,
            settlement=settlement,
        )
        result = self.execute(parent, attrs, block.transactions, building=False)
        if result.header != header:
            mismatched = [
                name
                for name in header._meta.field_names
                if getattr(header, name) != getattr(result.header, name)
            ]
            raise InvalidBlock(f"block does not match its execution: {', '.join(mismatched)} differ")
        return result

    # -- state reads --

    def state_at(self, header: BlockHeaderAPI) -> StateAPI:
        """The state after `header`, in the context of a child block (as eth_call runs)."""
        return self.vm_class.build_state(self.store, header, self.chain_context)

    @property
    def stake(self) -> Stake:
        """This chain's Stake contract; its views read through `read_host`."""
        return self.vm_class.get_state_class().stake_contract

    @property
    def task(self) -> Task:
        """This chain's Task contract; its step functions read through `read_host`."""
        return self.vm_class.get_state_class().task_contract

    def read_host(self, header: BlockHeaderAPI) -> SystemHost:
        """A host over the state after `header`, for the native contracts' views (reads only)."""
        return SystemHost(self.state_at(header), [])

    def account(self, header: BlockHeaderAPI, address: bytes) -> tuple[int, int, bytes]:
        state = self.state_at(header)
        return state.get_nonce(address), state.get_balance(address), state.get_code(address)

    def storage_at(self, header: BlockHeaderAPI, address: bytes, slot: int) -> int:
        return self.state_at(header).get_storage(address, slot)
