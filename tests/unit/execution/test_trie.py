import os

import pytest
from eth.db.trie import _make_trie_root_and_nodes

from ogpu_node.execution.trie import BLANK_ROOT, ordered_trie_root


def test_empty_list_has_blank_root():
    assert ordered_trie_root([]) == BLANK_ROOT


@pytest.mark.parametrize("count", [1, 2, 3, 15, 16, 17, 127, 128, 129, 300])
def test_root_equals_py_evm_hexary_trie(count):
    # Short values (embedded nodes) and long ones (hashed nodes), across the rlp(127)/rlp(128) key boundary.
    values = [os.urandom(1 + (i * 37) % 140) for i in range(count)]
    assert ordered_trie_root(values) == _make_trie_root_and_nodes(tuple(values))[0]
