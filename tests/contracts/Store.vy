# pragma version ~=0.4.3
"""A small store for the RPC tests: events with an indexed sender, views, and a reverting path."""

event Stored:
    who: indexed(address)
    value: uint256

event Cleared:
    who: indexed(address)

value: public(uint256)
writes: public(uint256)


@deploy
def __init__(initial: uint256):
    self.value = initial


@external
def store(v: uint256):
    assert v != 13, "unlucky number"
    self.value = v
    self.writes += 1
    log Stored(who=msg.sender, value=v)


@external
def store_pair(a: uint256, b: uint256):
    # Two logs from one transaction: their logIndex values are consecutive.
    self.store_one(a)
    self.store_one(b)


@external
def clear():
    self.value = 0
    log Cleared(who=msg.sender)


@view
@external
def doubled() -> uint256:
    return self.value * 2


@internal
def store_one(v: uint256):
    self.value = v
    self.writes += 1
    log Stored(who=msg.sender, value=v)
