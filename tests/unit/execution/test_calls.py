"""eth_call runs in the context of a child of the given block, with its ancestors visible."""

from ogpu_node.execution.calls import AccountOverride, CallRequest, call
from ogpu_node.execution.state import BlockAttributes

# PUSH1 1, NUMBER, SUB, BLOCKHASH, PUSH1 0, MSTORE, PUSH1 32, PUSH1 0, RETURN: blockhash(number - 1)
PARENT_HASH_CODE = bytes.fromhex("6001430340600052602060" + "00f3")
# NUMBER, PUSH1 0, MSTORE, PUSH1 32, PUSH1 0, RETURN
NUMBER_CODE = bytes.fromhex("4360005260206000f3")
PROBE = b"\x42" * 20


def _run(chain, header, code):
    return call(chain.execution, header, CallRequest(to=PROBE), {PROBE: AccountOverride(code=code)})


def test_blockhash_in_a_call_sees_the_block_it_runs_on(chain):
    for _ in range(3):
        head = chain.head
        chain.build_block(BlockAttributes(timestamp=head.timestamp + 1, coinbase=b"\x00" * 20, mix_hash=b"\x01" * 32), [])
    assert _run(chain, chain.head, PARENT_HASH_CODE) == chain.head.hash
    older = chain.header_by_number(1)
    assert _run(chain, older, PARENT_HASH_CODE) == older.hash
    assert int.from_bytes(_run(chain, older, NUMBER_CODE), "big") == 2
