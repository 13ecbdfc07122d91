import json

import pytest

from ogpu_node.config import GenesisError, load_genesis, parse_genesis


def _doc(**changes):
    doc = {"config": {"chainId": 7}, "alloc": {"0x" + "11" * 20: {"balance": "0x10"}}}
    doc.update(changes)
    return doc


def test_numbers_accept_hex_strings_and_integers():
    genesis = parse_genesis(_doc(gasLimit=1_000_000, baseFeePerGas="0x7", timestamp="10"))
    assert (genesis.chain_id, genesis.gas_limit, genesis.base_fee, genesis.timestamp) == (7, 1_000_000, 7, 10)
    assert genesis.alloc[b"\x11" * 20].balance == 16
    assert genesis.total_supply == 16


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"alloc": {}}, "config.chainId"),
        (_doc(config={"chainId": "zz"}), "config.chainId"),
        (_doc(extraData="0x" + "00" * 33), "extraData"),
        (_doc(alloc={"0x1234": {"balance": "0x1"}}), "alloc[0x1234]"),
        (_doc(alloc={"0x" + "11" * 20: {"balance": "-1"}}), "balance"),
        (_doc(gasLimit="0x1"), "gasLimit"),
        (_doc(mixHash="0x00"), "mixHash"),
    ],
)
def test_malformed_genesis_names_the_field(doc, field):
    with pytest.raises(GenesisError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_genesis(doc)


def test_unreadable_and_invalid_json_files_are_clear_errors(tmp_path):
    with pytest.raises(GenesisError, match="cannot read"):
        load_genesis(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GenesisError, match="not valid JSON"):
        load_genesis(bad)
    deep = tmp_path / "deep.json"  # json.loads would overflow the C stack under py-evm's recursion limit
    deep.write_text('{"alloc": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(GenesisError, match="deep.json: nests deeper than 64 levels"):
        load_genesis(deep)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_doc()))
    assert load_genesis(good).chain_id == 7
