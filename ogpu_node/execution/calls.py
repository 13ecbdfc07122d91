"""eth_call and eth_estimateGas: run a message against a block's state without a signature.

As geth does: with no fee fields the call runs with gas price 0 and base fee 0, so balances only need to
cover `value`; the nonce is the sender's current one; state overrides apply to a scratch journal that is
reverted afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth.abc import BlockHeaderAPI, ComputationAPI, StateAPI
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode
from eth_keys import keys
from eth_utils import ValidationError, to_checksum_address

from ogpu_node.execution.codec import floor_data_gas
from ogpu_node.execution.errors import CallFailed, ExecutionReverted
from ogpu_node.execution.interrupt import interruptible
from ogpu_node.execution.state import Execution
from ogpu_node.execution.vm import OgpuVM

_ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
ESTIMATE_ERROR_RATIO = 0.015  # geth stops the search within 1.5 % of the answer

# Solidity's Panic(uint256) codes, worded as geth's abi.UnpackRevert words them.
_PANIC_REASONS = {
    0x00: "generic panic",
    0x01: "assert(false)",
    0x11: "arithmetic underflow or overflow",
    0x12: "division or modulo by zero",
    0x21: "enum overflow",
    0x22: "invalid encoded storage byte array accessed",
    0x31: "out-of-bounds array access; popping on an empty array",
    0x32: "out-of-bounds access of an array or bytesN",
    0x41: "out of memory",
    0x51: "uninitialized function",
}


class InvalidOverride(CallFailed):
    """A state override that no account can hold (the RPC layer answers invalid params)."""


@dataclass(frozen=True)
class CallRequest:
    sender: bytes = b"\x00" * 20
    to: bytes | None = None
    gas: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int = 0
    data: bytes = b""
    access_list: tuple = ()


@dataclass(frozen=True)
class AccountOverride:
    balance: int | None = None
    nonce: int | None = None
    code: bytes | None = None
    state: dict[int, int] | None = None  # replaces all storage
    state_diff: dict[int, int] = field(default_factory=dict)


def revert_reason(output: bytes) -> str | None:
    """The reason of an Error(string) or Panic(uint256) revert, as geth words it; None for other data."""
    if output[:4] == _ERROR_SELECTOR:
        try:
            return abi_decode(["string"], output[4:])[0]
        except Exception:  # malformed ABI data from an arbitrary contract
            return None
    if output[:4] == _PANIC_SELECTOR and len(output) == 36:
        code = int.from_bytes(output[4:], "big")
        return _PANIC_REASONS.get(code, f"unknown panic code: {code:#x}")
    return None


def _call_state(execution: Execution, header: BlockHeaderAPI, request: CallRequest) -> StateAPI:
    priced = any(
        v for v in (request.gas_price, request.max_fee_per_gas, request.max_priority_fee_per_gas)
    )
    child = OgpuVM.create_header_from_parent(header, timestamp=header.timestamp + 1, gas_limit=header.gas_limit)
    if not priced:
        child = child.copy(base_fee_per_gas=0)
    # Ancestors, lazily, so BLOCKHASH inside a call sees the chain as a transaction would.
    ancestors = execution.vm_class.get_prev_hashes(header.hash, execution.chaindb)
    return execution.vm_class.build_state(execution.store, child, execution.chain_context, ancestors)


def _apply_overrides(state: StateAPI, overrides: dict[bytes, AccountOverride]) -> None:
    for address, override in overrides.items():
        if override.nonce is not None and override.nonce >= 1 << 64:
            # py-evm's uint64 check would raise deep inside the state; geth refuses it as a bad param.
            raise InvalidOverride(f"invalid nonce override {override.nonce}: exceeds 64 bits")
        if override.balance is not None:
            state.set_balance(address, override.balance)
        if override.nonce is not None:
            state.set_nonce(address, override.nonce)
        if override.code is not None:
            state.set_code(address, override.code)
        if override.state is not None:
            state.delete_storage(address)
            for slot, value in override.state.items():
                state.set_storage(address, slot, value)
        for slot, value in override.state_diff.items():
            state.set_storage(address, slot, value)


def _transaction(state: StateAPI, request: CallRequest, gas: int, chain_id: int) -> SpoofTransaction:
    builder = OgpuVM.get_transaction_builder()
    nonce = state.get_nonce(request.sender)
    to = request.to or b""
    if request.gas_price is not None:
        unsigned = builder.create_unsigned_transaction(
            nonce=nonce, gas_price=request.gas_price, gas=gas, to=to, value=request.value, data=request.data
        )
    else:
        unsigned = builder.new_unsigned_dynamic_fee_transaction(
            chain_id=chain_id,
            nonce=nonce,
            max_priority_fee_per_gas=request.max_priority_fee_per_gas or 0,
            max_fee_per_gas=request.max_fee_per_gas or (request.max_priority_fee_per_gas or 0),
            gas=gas,
            to=to,
            value=request.value,
            data=request.data,
            access_list=list(request.access_list),
        )
    return SpoofTransaction(unsigned, from_=request.sender)


def _run(state: StateAPI, tx: SpoofTransaction) -> ComputationAPI:
    snapshot = state.snapshot()
    try:
        return state.apply_transaction(tx)
    except ValidationError as exc:
        raise CallFailed(_call_error_message(str(exc), state, tx)) from None
    finally:
        state.revert(snapshot)


def _call_error_message(message: str, state: StateAPI, tx: SpoofTransaction) -> str:
    """geth's wording for the pre-execution checks py-evm words its own way."""
    sender = tx.sender
    if "cannot afford" in message or "enough balance" in message or "insufficient" in message.lower():
        want = tx.gas * tx.max_fee_per_gas + tx.value
        return (
            f"insufficient funds for gas * price + value: address {to_checksum_address(sender)} "
            f"have {state.get_balance(sender)} want {want}"
        )
    if "base fee" in message:
        return (
            f"max fee per gas less than block base fee: address {to_checksum_address(sender)}, "
            f"maxFeePerGas: {tx.max_fee_per_gas}, baseFee: {state.execution_context.base_fee_per_gas}"
        )
    return message


def _check_gas(tx: SpoofTransaction, data: bytes) -> None:
    if tx.gas < tx.intrinsic_gas:
        raise CallFailed(f"intrinsic gas too low: have {tx.gas}, want {tx.intrinsic_gas}")
    floor = floor_data_gas(data)
    if tx.gas < floor:
        raise CallFailed(f"insufficient gas for floor data gas cost: have {tx.gas}, want {floor}")
    if tx.max_priority_fee_per_gas > tx.max_fee_per_gas:
        raise CallFailed(
            f"max priority fee per gas higher than max fee per gas: address {to_checksum_address(tx.sender)}, "
            f"maxPriorityFeePerGas: {tx.max_priority_fee_per_gas}, maxFeePerGas: {tx.max_fee_per_gas}"
        )


def _gas_cap(header: BlockHeaderAPI, request: CallRequest, gas_cap: int | None) -> int:
    """The gas the call may use: the caller's, else the block's limit; never above `gas_cap` (geth's
    --rpc.gascap: caller gas above it is capped, not refused)."""
    gas = header.gas_limit if request.gas is None else request.gas
    return gas if gas_cap is None else min(gas, gas_cap)


Check = Callable[[], None]


def _prepare(
    execution: Execution,
    header: BlockHeaderAPI,
    request: CallRequest,
    overrides: dict[bytes, AccountOverride] | None,
    check: Check | None,
) -> StateAPI:
    state = _call_state(execution, header, request)
    _apply_overrides(state, overrides or {})
    if check is not None:
        interruptible(state, check)
    return state


def call(
    execution: Execution,
    header: BlockHeaderAPI,
    request: CallRequest,
    overrides: dict[bytes, AccountOverride] | None = None,
    *,
    gas_cap: int | None = None,
    check: Check | None = None,
) -> bytes:
    """Return data of the call, or raise ExecutionReverted / CallFailed. `check` is called as gas is
    consumed and may raise ExecutionInterrupted to stop the execution (interrupt.py)."""
    state = _prepare(execution, header, request, overrides, check)
    tx = _transaction(state, request, _gas_cap(header, request, gas_cap), execution.chain_id)
    _check_gas(tx, request.data)
    computation = _run(state, tx)
    if computation.is_error:
        _raise_failure(computation)
    return computation.output


def _raise_failure(computation: ComputationAPI) -> None:
    if computation.is_error and type(computation.error).__name__ == "Revert":
        output = computation.output
        raise ExecutionReverted(revert_reason(output), output)
    raise CallFailed(_evm_error_message(computation.error))


def _evm_error_message(error: Exception) -> str:
    name = type(error).__name__
    return {
        "OutOfGas": "out of gas",
        "InsufficientFunds": "insufficient balance for transfer",
        "InvalidInstruction": "invalid opcode",
        "StackDepthLimit": "max call depth exceeded",
        "WriteProtection": "write protection",
        "ContractCreationCollision": "contract address collision",
        "OutOfBoundsRead": "return data out of bounds",
        "InvalidJumpDestination": "invalid jump destination",
        "InsufficientStack": "stack underflow",
        "FullStack": "stack limit reached 1024",
    }.get(name, str(error) or name)


def estimate_gas(
    execution: Execution,
    header: BlockHeaderAPI,
    request: CallRequest,
    overrides: dict[bytes, AccountOverride] | None = None,
    *,
    gas_cap: int | None = None,
    check: Check | None = None,
) -> int:
    """Smallest gas limit with which the call succeeds (geth's binary search); `gas_cap` and `check`
    as for `call`, with one check for the whole search."""
    state = _prepare(execution, header, request, overrides, check)
    cap = _gas_cap(header, request, gas_cap)
    fee = request.gas_price or request.max_fee_per_gas
    if fee:
        # geth: with a fee, the sender's balance bounds the gas it could buy.
        available = state.get_balance(request.sender)
        if request.value:
            if request.value >= available:
                raise CallFailed("insufficient funds for transfer")
            available -= request.value
        cap = min(cap, available // fee)
    floor = floor_data_gas(request.data)

    def attempt(gas: int) -> ComputationAPI | None:
        tx = _transaction(state, request, gas, execution.chain_id)
        if gas < tx.intrinsic_gas or gas < floor:
            return None
        return _run(state, tx)

    top = attempt(cap)
    if top is None:
        _check_gas(_transaction(state, request, cap, execution.chain_id), request.data)
        raise CallFailed(f"gas required exceeds allowance ({cap})")
    if top.is_error:
        if type(top.error).__name__ == "OutOfGas":
            raise CallFailed(f"gas required exceeds allowance ({cap})")
        _raise_failure(top)
    intrinsic = _transaction(state, request, cap, execution.chain_id).intrinsic_gas
    if request.to and not request.data and not state.get_code(request.to):
        # A plain transfer to an account without code costs exactly the intrinsic gas.
        return intrinsic
    # Gas consumed before refunds is a lower bound on the limit the call needs.
    used = max(intrinsic + top.get_gas_used(), floor)
    # Often exact (no refund, no call that needs its 63/64 reserve): then one run settles it.
    exact = attempt(used)
    if exact is not None and not exact.is_error:
        return used
    low = used
    high = cap
    # geth's optimistic first probe: gas used plus the 63/64 reserve for calls.
    optimistic = min((used + 2300) * 64 // 63, high)
    if optimistic < high:
        result = attempt(optimistic)
        if result is not None and not result.is_error:
            high = optimistic
        else:
            low = optimistic
    while low + 1 < high:
        if (high - low) / high < ESTIMATE_ERROR_RATIO:
            break
        mid = (low + high) // 2
        result = attempt(mid)
        if result is None or result.is_error:
            low = mid
        else:
            high = mid
    return high


def signed_call(private_key: bytes, chain_id: int, nonce: int, to: bytes, data: bytes, *, gas: int,
                max_fee_per_gas: int, max_priority_fee_per_gas: int) -> Any:
    """An EIP-1559 transaction calling ``to`` with ``data``, signed with ``private_key``: what a node
    sends on its own behalf (a validator's slashing report)."""
    unsigned = OgpuVM.get_transaction_builder().new_unsigned_dynamic_fee_transaction(
        chain_id=chain_id, nonce=nonce, max_priority_fee_per_gas=max_priority_fee_per_gas,
        max_fee_per_gas=max_fee_per_gas, gas=gas, to=to, value=0, data=data, access_list=[],
    )
    return unsigned.as_signed_transaction(keys.PrivateKey(private_key))
