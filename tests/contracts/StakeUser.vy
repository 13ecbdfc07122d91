# pragma version 0.4.3
"""A contract that uses Stake (the native contract at 0x…1000, contracts/Stake.json) the ways contract
code would: through an interface (CALL, STATICCALL) and by forwarding raw calldata with DELEGATECALL or
STATICCALL, which Stake must refuse for state changes."""

interface IStake:
    def stake(): payable
    def requestUnstake(amount: uint256): nonpayable
    def setRoles(roles: uint8): nonpayable
    def setRandaoTip(tip: bytes32): nonpayable
    def stakeOf(account: address) -> (uint256, uint256, uint256, uint64, uint8): view
    def totalStaked() -> uint256: view

STAKE: constant(address) = 0x0000000000000000000000000000000000001000
MAX_DATA: constant(uint256) = 1024

event Forwarded:
    kind: indexed(String[8])
    success: bool
    response: Bytes[MAX_DATA]


@external
@payable
def stake():
    # No return value: Vyper checks EXTCODESIZE(STAKE) > 0 before the call.
    extcall IStake(STAKE).stake(value=msg.value)


@external
def set_roles(roles: uint8):
    extcall IStake(STAKE).setRoles(roles)


@external
def set_randao_tip(tip: bytes32):
    extcall IStake(STAKE).setRandaoTip(tip)


@external
def request_unstake(amount: uint256):
    extcall IStake(STAKE).requestUnstake(amount)


@view
@external
def my_stake() -> (uint256, uint256, uint256, uint64, uint8):
    return staticcall IStake(STAKE).stakeOf(self)


@view
@external
def total_staked() -> uint256:
    return staticcall IStake(STAKE).totalStaked()


@external
@payable
def delegate(data: Bytes[MAX_DATA]) -> (bool, Bytes[MAX_DATA]):
    success: bool = False
    response: Bytes[MAX_DATA] = b""
    success, response = raw_call(STAKE, data, max_outsize=MAX_DATA, is_delegate_call=True, revert_on_failure=False)
    log Forwarded(kind="delegate", success=success, response=response)
    return success, response


@external
def static(data: Bytes[MAX_DATA]) -> (bool, Bytes[MAX_DATA]):
    success: bool = False
    response: Bytes[MAX_DATA] = b""
    success, response = raw_call(STAKE, data, max_outsize=MAX_DATA, is_static_call=True, revert_on_failure=False)
    log Forwarded(kind="static", success=success, response=response)
    return success, response


@external
@payable
def delegate_or_revert(data: Bytes[MAX_DATA]):
    raw_call(STAKE, data, is_delegate_call=True)


@external
def static_or_revert(data: Bytes[MAX_DATA]):
    raw_call(STAKE, data, is_static_call=True)
