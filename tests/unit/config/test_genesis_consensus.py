"""The genesis file's `consensus` section (docs/consensus.md, "Running a validator")."""

import pytest

from ogpu_node.config import ConsensusConfig, GenesisError, GenesisValidator, parse_genesis

ADDRESS = "0x" + "aa" * 20
TIP = "0x" + "bb" * 32
STAKE = 1_000 * 10**18  # the default config.ogpu.minValidatorStake


def _doc(consensus=None, **changes):
    section = {"genesisTime": 1_700_000_000, "slotTime": 1, "slotsPerEpoch": 4, "randaoLength": 64,
               "validators": [{"address": ADDRESS, "stake": hex(STAKE), "randaoTip": TIP}]}
    section.update(consensus or {})
    doc = {"config": {"chainId": 7}, "alloc": {}, "consensus": section}
    doc.update(changes)
    return doc


def _validator(**changes):
    entry = {"address": ADDRESS, "stake": STAKE, "randaoTip": TIP}
    entry.update(changes)
    return entry


def test_consensus_section_is_parsed_into_typed_config():
    genesis = parse_genesis(_doc())
    assert genesis.consensus == ConsensusConfig(
        genesis_time=1_700_000_000, slot_time=1, slots_per_epoch=4, randao_length=64,
        validators=(GenesisValidator(bytes.fromhex("aa" * 20), STAKE, bytes.fromhex("bb" * 32)),),
    )


def test_defaults_are_the_devnet_clock_and_a_two_to_the_twenty_hash_chain():
    doc = _doc()
    for name in ("slotTime", "slotsPerEpoch", "randaoLength"):
        del doc["consensus"][name]
    consensus = parse_genesis(doc).consensus
    assert (consensus.slot_time, consensus.slots_per_epoch, consensus.randao_length) == (2, 8, 1 << 20)


def test_a_genesis_without_consensus_has_none():
    doc = _doc()
    del doc["consensus"]
    assert parse_genesis(doc).consensus is None


def test_min_validator_stake_follows_config_ogpu():
    doc = _doc(config={"chainId": 7, "ogpu": {"minValidatorStake": 5}},
               consensus={"validators": [_validator(stake=5)]})
    assert parse_genesis(doc).consensus.validators[0].stake == 5


@pytest.mark.parametrize(
    ("consensus", "message"),
    [
        ({"genesisTime": "soon"}, "consensus.genesisTime is not a number"),
        ({"genesisTime": -1}, "consensus.genesisTime must not be negative"),
        ({"slotTime": 0}, "consensus.slotTime must be between 1 and 3600"),
        ({"slotTime": True}, "consensus.slotTime must be a number"),
        ({"slotsPerEpoch": 0}, "consensus.slotsPerEpoch must be between 1 and 1024"),
        ({"slotsPerEpoch": 5000}, "consensus.slotsPerEpoch must be between 1 and 1024"),
        ({"randaoLength": 0}, "consensus.randaoLength must be between 1 and"),
        ({"randaoLength": 1 << 30}, "consensus.randaoLength must be between 1 and"),
        ({"validators": []}, "consensus.validators must be a non-empty list"),
        ({"validators": {"a": 1}}, "consensus.validators must be a non-empty list"),
        ({"validators": ["0xaa"]}, r"consensus.validators\[0\] must be an object"),
        ({"validators": [_validator(address="0x1234")]}, r"consensus.validators\[0\].address must be 20 bytes"),
        ({"validators": [_validator(address="aa" * 20)]}, r"consensus.validators\[0\].address must be a 0x-prefixed"),
        ({"validators": [_validator(stake="-5")]}, r"consensus.validators\[0\].stake must not be negative"),
        ({"validators": [_validator(stake=10**18)]}, r"consensus.validators\[0\].stake .* below config.ogpu.minValidatorStake"),
        ({"validators": [_validator(randaoTip="0x12")]}, r"consensus.validators\[0\].randaoTip must be 32 bytes"),
        ({"validators": [_validator(randaoTip="0xzz")]}, r"consensus.validators\[0\].randaoTip is not valid hex"),
        ({"validators": [{"address": ADDRESS, "stake": STAKE}]}, r"validators\[0\] has missing fields: randaoTip"),
        ({"validators": [_validator(weight=1)]}, r"validators\[0\] has unknown fields: weight"),
        ({"validators": [_validator(), _validator()]}, r"consensus.validators\[1\].address 0x(aa)+ is listed twice"),
        ({"epochs": 3}, "consensus has unknown fields: epochs"),
    ],
)
def test_each_malformed_consensus_field_is_named(consensus, message):
    with pytest.raises(GenesisError, match=message):
        parse_genesis(_doc(consensus))


def test_genesis_time_is_required_and_not_before_the_genesis_block():
    doc = _doc()
    del doc["consensus"]["genesisTime"]
    with pytest.raises(GenesisError, match="consensus.genesisTime is required"):
        parse_genesis(doc)
    with pytest.raises(GenesisError, match=r"consensus.genesisTime \(1700000000\) is before timestamp"):
        parse_genesis(_doc(timestamp=1_700_000_001))


@pytest.mark.parametrize("section", [[], "pos", 3])
def test_a_consensus_section_that_is_not_an_object_is_refused(section):
    doc = _doc()
    doc["consensus"] = section
    with pytest.raises(GenesisError, match="consensus must be an object"):
        parse_genesis(doc)
