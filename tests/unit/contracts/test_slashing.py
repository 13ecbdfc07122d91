"""Slashing of consensus offences, on a chain built by the node's own code, driven by the contract
harness (harness.py)."""


import pytest
from eth_hash.auto import keccak
from harness import SLASHING_ABI, STAKE_ABI, Harness

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.types.protocol import BPS, SLASHING_WINDOW, Offence, Role, ValidatorStatus
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation, SignedProposal

ETHER = 10**18
STAKED = 2_000 * ETHER


class SlashingHarness(Harness):
    """harness.Harness with the reads these tests make: a stake record as a tuple."""

    def stake_of(self, who):
        return tuple(self.view(STAKE_ABI, "stakeOf", who).values())


BYSTANDERS = (0, 1, 2, 4, 6, 8, 9)  # dev accounts that stake only to make the validator a small share
BYSTANDER_STAKE = 9_000 * ETHER  # 63,000 beside 2,000: 3 × 2,000 / 65,000 < 10 %, so a lone offence costs 10 %


@pytest.fixture
def harness(chain, dev_accounts):
    h = SlashingHarness(chain)
    validator = dev_accounts[3]
    h.block(*(h.tx(dev_accounts[i], STAKE_ABI, "stake", value=BYSTANDER_STAKE) for i in BYSTANDERS))
    assert h.send(validator, STAKE_ABI, "stake", value=STAKED).receipt.state_root == b"\x01"
    assert h.send(validator, STAKE_ABI, "setRandaoTip", b"\x07" * 32).receipt.state_root == b"\x01"
    assert h.send(validator, STAKE_ABI, "setRoles", Role.VALIDATOR).receipt.state_root == b"\x01"
    return h


def proposal(chain, account, slot, block_hash):
    message = BlockProposal(slot, block_hash)
    signature = account.sign_hash(message.signing_root(chain.chain_id, chain.genesis_hash))
    return SignedProposal(message, signature).encode()


def attestation(chain, account, source, target, head=b"\x0a" * 32):
    message = Attestation(slot=target * 8, head=head, source_epoch=source, source_root=b"\x0b" * 32,
                          target_epoch=target, target_root=b"\x0c" * 32)
    signature = account.sign_hash(message.signing_root(chain.chain_id, chain.genesis_hash))
    return SignedAttestation(message, signature).encode()


def report(h, reporter, function, first, second):
    return h.send(reporter, SLASHING_ABI, function, first, second).receipt


def revert_reason(h, reporter, function, first, second):
    return h.view_reverts(SLASHING_ABI, function, first, second, sender=reporter.address)


def test_double_proposal_slashes_pays_reporter_burns_rest_and_ejects(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    first = proposal(chain, validator, 7, b"\x01" * 32)
    second = proposal(chain, validator, 7, b"\x02" * 32)
    proposer = harness.coinbase
    stake_balance, reporter_balance = harness.balance(STAKE), harness.balance(reporter.address)
    proposer_balance = harness.balance(proposer)
    receipt = report(harness, reporter, "reportDoubleProposal", first, second)
    assert receipt.state_root == b"\x01"
    penalty = STAKED * 1_000 // BPS
    reward = penalty * 1_000 // BPS
    assert harness.stake_of(validator.address) == (STAKED - penalty, 0, 0, 0, 0)  # validator role gone
    assert harness.balance(STAKE) == stake_balance - penalty
    fee = receipt.gas_used * chain.head.base_fee_per_gas  # one tx in the block, tip 0
    # The reward is shared: half to the reporter, half to the proposer that included the report.
    assert harness.balance(reporter.address) == reporter_balance + reward - reward // 2 - fee
    assert harness.balance(proposer) == proposer_balance + reward // 2
    assert harness.balance(SLASHING_ABI.address) == 0
    assert harness.view(STAKE_ABI, "validators") == [validator.address]  # ejected at the next boundary:
    assert harness.view(STAKE_ABI, "validatorOf", validator.address)["status"] == ValidatorStatus.EXITING
    harness.block()  # the next block under --dev
    assert harness.view(STAKE_ABI, "validators") == []
    evidence = keccak(b"double-proposal" + validator.address + (7).to_bytes(32, "big"))
    assert harness.view(SLASHING_ABI, "isPunished", evidence) is True
    topics = [list(log.topics) for log in receipt.logs if log.address == SLASHING_ABI.address]
    assert topics == [[int.from_bytes(keccak(b"ConsensusOffence(address,uint8,bytes32,uint256,address)"), "big"),
                       int.from_bytes(validator.address, "big"), Offence.DOUBLE_PROPOSAL]]


def test_same_offence_is_not_punished_twice(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    first = proposal(chain, validator, 7, b"\x01" * 32)
    second = proposal(chain, validator, 7, b"\x02" * 32)
    assert report(harness, reporter, "reportDoubleProposal", first, second).state_root == b"\x01"
    third = proposal(chain, validator, 7, b"\x03" * 32)
    assert revert_reason(harness, reporter, "reportDoubleProposal", first, third) == "Slashing: offence already punished"


@pytest.mark.parametrize(
    ("make_pair", "reason"),
    [
        (lambda c, v, o: (proposal(c, v, 7, b"\x01" * 32), proposal(c, v, 8, b"\x02" * 32)),
         "Slashing: proposals are for different slots"),
        (lambda c, v, o: (proposal(c, v, 7, b"\x01" * 32), proposal(c, v, 7, b"\x01" * 32)),
         "Slashing: proposals are for the same block"),
        (lambda c, v, o: (proposal(c, v, 7, b"\x01" * 32), proposal(c, o, 7, b"\x02" * 32)),
         "Slashing: the two messages have different signers"),
        (lambda c, v, o: (proposal(c, o, 7, b"\x01" * 32), proposal(c, o, 7, b"\x02" * 32)),
         "Slashing: offender has no stake"),
        (lambda c, v, o: (b"\x00" * 10, proposal(c, v, 7, b"\x02" * 32)), "Slashing: malformed signed proposal"),
    ],
    ids=["different-slots", "same-block", "different-signers", "no-stake", "malformed"],
)
def test_invalid_double_proposal_evidence_reverts(harness, chain, dev_accounts, make_pair, reason):
    first, second = make_pair(chain, dev_accounts[3], dev_accounts[7])
    assert revert_reason(harness, dev_accounts[5], "reportDoubleProposal", first, second) == reason


def test_signature_from_another_chain_is_not_evidence(harness, chain, dev_accounts):
    validator = dev_accounts[3]
    message = BlockProposal(7, b"\x01" * 32)
    foreign = SignedProposal(message, validator.sign_hash(message.signing_root(1, chain.genesis_hash))).encode()
    second = proposal(chain, validator, 7, b"\x02" * 32)
    assert revert_reason(harness, dev_accounts[5], "reportDoubleProposal", foreign, second) == (
        "Slashing: the two messages have different signers"
    )


def test_double_vote_and_surround_vote_are_slashable(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    a = attestation(chain, validator, source=1, target=4, head=b"\x01" * 32)
    b = attestation(chain, validator, source=1, target=4, head=b"\x02" * 32)
    assert report(harness, reporter, "reportDoubleVote", a, b).state_root == b"\x01"
    after_first = harness.stake_of(validator.address)[0]
    assert after_first == STAKED - STAKED // 10
    outer = attestation(chain, validator, source=1, target=6)
    inner = attestation(chain, validator, source=2, target=5)
    assert revert_reason(harness, reporter, "reportSurroundVote", inner, outer) == (
        "Slashing: the first attestation does not surround the second"
    )
    assert revert_reason(harness, reporter, "reportDoubleVote", outer, inner) == (
        "Slashing: attestations have different target epochs"
    )
    total = harness.view(STAKE_ABI, "totalStaked")
    assert report(harness, reporter, "reportSurroundVote", outer, inner).state_root == b"\x01"
    # The second offence in the window weighs with the first: 3 × (2,000 + 1,800) / 64,800 > 10 %.
    correlated = after_first * 3 * (STAKED + after_first) // total
    assert correlated > after_first // 10
    assert harness.stake_of(validator.address)[0] == after_first - correlated


def test_a_third_of_the_stake_slashed_together_loses_everything_and_a_new_window_starts_afresh(chain, dev_accounts):
    """Rule: penalty = exposure × max(consensusPenaltyBps, min(1, 3 × slashed in the window / total
    stake)); offenders punished in the current and previous SLASHING_WINDOW weigh together."""
    h = SlashingHarness(chain)
    offenders, reporter = [dev_accounts[i] for i in (1, 2, 3)], dev_accounts[5]
    h.block(*(h.tx(a, STAKE_ABI, "stake", value=STAKED) for a in offenders))
    h.block(*(h.tx(dev_accounts[i], STAKE_ABI, "stake", value=7 * STAKED // 2) for i in (6, 8)))  # total: 10 × 2,000
    first = proposal(chain, offenders[0], 1, b"\x01" * 32), proposal(chain, offenders[0], 1, b"\x02" * 32)
    report(h, reporter, "reportDoubleProposal", *first)
    assert h.stake_of(offenders[0].address)[0] == STAKED - STAKED * 3 * STAKED // (10 * STAKED)  # 30 %
    total = h.view(STAKE_ABI, "totalStaked")
    second = proposal(chain, offenders[1], 1, b"\x01" * 32), proposal(chain, offenders[1], 1, b"\x02" * 32)
    report(h, reporter, "reportDoubleProposal", *second)
    assert h.stake_of(offenders[1].address)[0] == STAKED - STAKED * 3 * (2 * STAKED) // total  # 3 × 4,000 / 19,400
    total = h.view(STAKE_ABI, "totalStaked")
    third = proposal(chain, offenders[2], 1, b"\x01" * 32), proposal(chain, offenders[2], 1, b"\x02" * 32)
    report(h, reporter, "reportDoubleProposal", *third)
    left = STAKED - STAKED * min(3 * 3 * STAKED, total) // total  # 3 × 6,000 against the ~18,160 left
    assert h.stake_of(offenders[2].address)[0] == left < STAKED // 100
    # One more in the window and 3 × S passes the total: all of its stake goes.
    h.block(h.tx(dev_accounts[7], STAKE_ABI, "stake", value=STAKED))
    fourth = proposal(chain, dev_accounts[7], 1, b"\x01" * 32), proposal(chain, dev_accounts[7], 1, b"\x02" * 32)
    report(h, reporter, "reportDoubleProposal", *fourth)
    assert h.stake_of(dev_accounts[7].address)[0] == 0
    # Two windows later nothing weighs any more: a lone offence costs its share again.
    later = dev_accounts[9]
    h.block(h.tx(later, STAKE_ABI, "stake", value=STAKED), dt=2 * SLASHING_WINDOW)
    total = h.view(STAKE_ABI, "totalStaked")
    fifth = proposal(chain, later, 1, b"\x01" * 32), proposal(chain, later, 1, b"\x02" * 32)
    report(h, reporter, "reportDoubleProposal", *fifth)
    assert h.stake_of(later.address)[0] == STAKED - max(STAKED // 10, STAKED * 3 * STAKED // total)


def test_stake_contract_balance_matches_stakes_after_slashing(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    report(harness, reporter, "reportDoubleProposal", proposal(chain, validator, 1, b"\x01" * 32),
           proposal(chain, validator, 1, b"\x02" * 32))
    records = [harness.stake_of(dev_accounts[i].address) for i in (3, *BYSTANDERS)]
    assert harness.balance(STAKE) == sum(staked + unbonding for staked, _, unbonding, _, _ in records)


def test_interface_file_is_generated_for_slashing():
    assert (ABI_DIR / "ISlashing.sol").exists()
