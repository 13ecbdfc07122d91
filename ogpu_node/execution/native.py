"""Runs the native contracts of `ogpu_node.contracts` as precompiles of the VM (DESIGN.md §3).

`EvmHost` is the contracts' host interface over a py-evm computation: storage reads and writes charged
as EIP-2929/2200 SLOAD and SSTORE (with the state's warm-slot tracking and EIP-3529 refunds), logs
charged as LOG opcodes, balances moved directly. A broken rule reverts with `Error(string)`.
"""

from __future__ import annotations

import logging
from typing import Any

from eth.abc import ComputationAPI
from eth.constants import GAS_LOG, GAS_LOGDATA, GAS_LOGTOPIC, GAS_SRESET, GAS_SSET
from eth.exceptions import Revert as EvmRevert
from eth.exceptions import VMError
from eth.vm.forks.berlin.constants import COLD_SLOAD_COST, WARM_STORAGE_READ_COST
from eth.vm.forks.london.storage import SSTORE_CLEARS_SCHEDULE_EIP_3529
from eth.vm.forks.prague.computation import PragueComputation
from eth.vm.forks.prague.state import PragueState

from ogpu_node.config import ConsensusConfig, ProtocolParams
from ogpu_node.contracts.abi import encode_error
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.bid import Bid
from ogpu_node.contracts.context import deadline_task_id
from ogpu_node.contracts.host import Revert
from ogpu_node.contracts.slashing import Slashing
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.task import Task
from ogpu_node.types.protocol import DeadlineKind

log = logging.getLogger("ogpu.contracts")

COLD_SLOAD = COLD_SLOAD_COST
WARM_READ = WARM_STORAGE_READ_COST
SSTORE_SET = GAS_SSET
SSTORE_RESET = GAS_SRESET - COLD_SLOAD_COST
SSTORE_CLEARS_REFUND = SSTORE_CLEARS_SCHEDULE_EIP_3529
LOG_GAS, LOG_TOPIC_GAS, LOG_DATA_GAS = GAS_LOG, GAS_LOGTOPIC, GAS_LOGDATA
# Failures that differ between machines (memory, stack depth): containing them would let nodes disagree
# on a block, so they stop this node instead.
FATAL = (MemoryError, RecursionError)


class _Balances:
    """Balance moves shared by both hosts: direct credits and debits, never a call."""

    _state: Any

    @property
    def coinbase(self) -> bytes:
        """The block's proposer (under proof of stake; the dev signer under --dev)."""
        return self._state.coinbase

    def balance(self, address: bytes) -> int:
        return self._state.get_balance(address)

    def transfer(self, sender: bytes, recipient: bytes, amount: int) -> None:
        if amount < 0:
            raise Revert("negative transfer")
        if self._state.get_balance(sender) < amount:
            raise Revert("insufficient balance for transfer")
        self._state.delta_balance(sender, -amount)
        self._state.delta_balance(recipient, amount)

    def burn(self, holder: bytes, amount: int) -> None:
        if amount < 0:
            raise Revert("negative burn")
        if self._state.get_balance(holder) < amount:
            raise Revert("insufficient balance to burn")
        self._state.delta_balance(holder, -amount)


class EvmHost(_Balances):
    def __init__(self, computation: ComputationAPI) -> None:
        self._computation = computation
        self._state = computation.state
        msg = computation.msg
        self.caller: bytes = msg.sender
        self.value: int = msg.value
        self.is_static: bool = msg.is_static
        self.block_number: int = self._state.block_number
        self.timestamp: int = self._state.timestamp
        self.mix_hash: bytes = self._state.mix_hash

    def charge(self, gas: int) -> None:
        self._computation.consume_gas(gas, reason="native contract")

    def _warm(self, address: bytes, slot: int) -> None:
        if not self._state.is_storage_warm(address, slot):
            self._state.mark_storage_warm(address, slot)
            self.charge(COLD_SLOAD)

    def sload(self, address: bytes, slot: int) -> int:
        if self._state.is_storage_warm(address, slot):
            self.charge(WARM_READ)
        else:
            self._state.mark_storage_warm(address, slot)
            self.charge(COLD_SLOAD)
        return self._state.get_storage(address, slot)

    def sstore(self, address: bytes, slot: int, value: int) -> None:
        if self.is_static:
            raise Revert("state change in a static call")
        self._warm(address, slot)
        state = self._state
        current = state.get_storage(address, slot)
        original = state.get_storage(address, slot, from_journal=False)
        refund = 0
        if current == value:
            cost = WARM_READ
        elif original == current:
            cost = SSTORE_SET if original == 0 else SSTORE_RESET
            if original != 0 and value == 0:
                refund += SSTORE_CLEARS_REFUND
        else:
            cost = WARM_READ
            if original != 0:
                if current == 0:
                    refund -= SSTORE_CLEARS_REFUND
                elif value == 0:
                    refund += SSTORE_CLEARS_REFUND
            if original == value:
                refund += (SSTORE_SET if original == 0 else SSTORE_RESET) - WARM_READ
        self.charge(cost)
        if refund:
            self._computation.refund_gas(refund)
        state.set_storage(address, slot, value)

    def transfer(self, sender: bytes, recipient: bytes, amount: int) -> None:
        if self.is_static:
            raise Revert("value transfer in a static call")
        super().transfer(sender, recipient, amount)

    def log(self, address: bytes, topics: list[bytes], data: bytes) -> None:
        if self.is_static:
            raise Revert("log in a static call")
        self.charge(LOG_GAS + LOG_TOPIC_GAS * len(topics) + LOG_DATA_GAS * len(data))
        self._computation.add_log_entry(address, tuple(int.from_bytes(t, "big") for t in topics), data)


def native_precompile(contract: NativeContract) -> Any:
    def run(computation: ComputationAPI) -> ComputationAPI:
        msg = computation.msg
        try:
            # DELEGATECALL and CALLCODE would let another contract act with a user's sender and value.
            if msg.code_address != msg.storage_address:
                raise Revert(f"{contract.NAME}: only CALL and STATICCALL may reach a native contract")
            computation.output = contract.call(EvmHost(computation), msg.data_as_bytes)
        except Revert as exc:
            computation.output = encode_error(exc.reason)
            raise EvmRevert(computation.output) from None
        except (VMError, *FATAL):
            raise  # out of gas and the like: py-evm's own failure, consumes the gas
        except Exception as exc:
            # A defect in a contract must not stop block production; every node reverts alike.
            log.exception("native contract %s failed", contract.NAME)
            computation.output = encode_error(f"{contract.NAME}: internal error ({type(exc).__name__})")
            raise EvmRevert(computation.output) from None
        return computation

    return run


SYSTEM_ADDRESS = bytes.fromhex("fffffffffffffffffffffffffffffffffffffffe")  # as EIP-4788's system calls

SystemLog = tuple[bytes, list[bytes], bytes]  # address, topics, data


class SystemHost(_Balances):
    """The host of the start-of-block system call: no transaction, no gas (bounded by entry count)."""

    is_static = False
    value = 0
    caller = SYSTEM_ADDRESS

    def __init__(self, state: Any, logs: list[SystemLog]) -> None:
        self._state = state
        self.logs = logs
        self.block_number: int = state.block_number
        self.timestamp: int = state.timestamp
        self.mix_hash: bytes = state.mix_hash

    def charge(self, gas: int) -> None:
        pass

    def mint(self, recipient: bytes, amount: int) -> None:
        """Create ``amount`` for ``recipient``: only the system call may (consensus rewards)."""
        if amount < 0:
            raise Revert("negative mint")
        self._state.delta_balance(recipient, amount)

    def sload(self, address: bytes, slot: int) -> int:
        return self._state.get_storage(address, slot)

    def sstore(self, address: bytes, slot: int, value: int) -> None:
        self._state.set_storage(address, slot, value)

    def log(self, address: bytes, topics: list[bytes], data: bytes) -> None:
        self.logs.append((address, list(topics), data))


class OgpuState(PragueState):
    task_contract: Task | None = None
    stake_contract: Stake | None = None
    deadline_limit: int = 0


def run_block_start(state: Any, settlement: tuple[tuple[bytes, int], ...] = ()) -> list[SystemLog]:
    """At an epoch's first block apply the consensus settlement (rewards and penalties) and the
    validator queues; then run the due time-triggered protocol steps. A step that reverts is dropped
    with its changes; so is one that fails unexpectedly (a defect), logged with its task: a bad step
    must not halt the chain. MemoryError and RecursionError propagate (see FATAL)."""
    task = state.task_contract
    logs: list[SystemLog] = []
    if task is None:
        return logs
    host = SystemHost(state, logs)
    if state.stake_contract is not None:
        snapshot = state.snapshot()
        try:
            if settlement:
                state.stake_contract.apply_settlement(host, settlement)
            state.stake_contract.process_epoch(host)
        except FATAL:
            raise
        except Exception:
            state.revert(snapshot)
            del logs[:]
            log.exception("block %d: the epoch's settlement or validator queues failed", host.block_number)
        else:
            state.commit(snapshot)
    for deadline in task.queue(host).pop_due(host.timestamp, state.deadline_limit):
        snapshot = state.snapshot()
        mark = len(logs)
        try:
            task.run_deadline(host, deadline)
        except FATAL:
            raise
        except Exception as exc:
            state.revert(snapshot)
            del logs[mark:]
            if not isinstance(exc, Revert | OverflowError):
                log.exception("block %d: deadline step %s of task %d failed; entry dropped", host.block_number,
                              _kind_name(deadline.kind), deadline_task_id(deadline.kind, deadline.subject))
        else:
            state.commit(snapshot)
    return logs


def _kind_name(kind: int) -> str:
    try:
        return DeadlineKind(kind).name
    except ValueError:
        return str(kind)


def native_contracts(params: ProtocolParams, chain_id: int, genesis_hash: bytes,
                     consensus: ConsensusConfig | None = None) -> dict[bytes, NativeContract]:
    stake = Stake(params, consensus)
    bid = Bid(params, stake)
    slashing = Slashing(params, stake, chain_id, genesis_hash)
    contracts: list[NativeContract] = [stake, Task(params, bid, stake, slashing), bid, slashing]
    return {c.ADDRESS: c for c in contracts}


def make_state_class(params: ProtocolParams, chain_id: int, genesis_hash: bytes,
                     consensus: ConsensusConfig | None = None) -> type[OgpuState]:
    contracts = native_contracts(params, chain_id, genesis_hash, consensus)
    precompiles = dict(PragueComputation.get_precompiles())
    for address, contract in contracts.items():
        precompiles[address] = native_precompile(contract)
    computation_class = PragueComputation.configure(__name__="OgpuComputation", _precompiles=precompiles)
    task = next(c for c in contracts.values() if isinstance(c, Task))
    return OgpuState.configure(
        __name__="OgpuState",
        computation_class=computation_class,
        task_contract=task,
        stake_contract=next(c for c in contracts.values() if isinstance(c, Stake)),
        deadline_limit=params.max_deadlines_per_block,
    )
