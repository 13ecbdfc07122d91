"""`rlp_items_within` counts RLP items at every depth from their prefixes, before anything decodes peer
bytes (pyrlp's decoding is quadratic in a list's items: a block message of a million empty lists took
minutes of the trio thread)."""

import rlp

from ogpu_node.node.network import MAX_BLOCK_ITEMS, decode_block_message
from ogpu_node.p2p.host import BadMessage
from ogpu_node.p2p.wire import rlp_items_within


def test_items_are_counted_at_every_depth():
    data = rlp.encode([b"a" * 100, [b"x"] * 50, [[b"1", b"2"]] * 10])  # 1 + 1 + 1 + 50 + 1 + 10 * 3
    assert rlp_items_within(data, 84)
    assert not rlp_items_within(data, 83)
    assert rlp_items_within(b"", 0)


def test_bytes_whose_prefixes_do_not_parse_are_refused():
    assert not rlp_items_within(b"\xb9\xff", 10)  # a long string's length cut short
    assert not rlp_items_within(b"\xf9", 10)


def test_a_block_message_of_a_million_empty_lists_is_refused_before_decoding():
    junk = rlp.encode([[b""] * 1_000_000, b"", b""])
    try:
        decode_block_message(junk)
    except BadMessage as exc:
        assert f"{MAX_BLOCK_ITEMS}" in str(exc)
    else:
        raise AssertionError("a million-item block message was decoded")
