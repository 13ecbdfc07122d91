# pragma version ~=0.4.3
# Test contract for eth_call / eth_estimateGas revert handling (tests/integration/test_call_revert.py).

interface Reverter:
    def set_value(x: uint256): nonpayable

value: public(uint256)
slots: public(HashMap[uint256, uint256])


@external
def set_value(x: uint256):
    assert x < 100, "value too large"
    self.value = x


@external
@view
def fail_with_reason():
    raise "always fails"


@external
@view
def fail_without_data():
    raw_revert(b"")


@external
@view
def require_zero(x: uint256) -> uint256:
    assert x == 0
    return x


@external
@view
def balance_of(who: address) -> uint256:
    return who.balance


@external
def fill(n: uint256):
    for i: uint256 in range(n, bound=200):
        self.slots[i] = i + 1


@external
def forward(target: address, x: uint256):
    # A call that needs its 63/64 share: estimateGas must leave the callee enough.
    extcall Reverter(target).set_value(x)
