"""Slashing of consensus offences, on a chain built by the node's own code."""


import pytest
from eth.vm.forks.prague import PragueVM
from eth_abi import decode, encode
from eth_hash.auto import keccak
from eth_keys import keys

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.contracts.addresses import SLASHING, STAKE
from ogpu_node.execution.calls import CallRequest, call
from ogpu_node.execution.errors import ExecutionReverted
from ogpu_node.execution.state import BlockAttributes
from ogpu_node.types.signing import Attestation, BlockProposal, SignedAttestation, SignedProposal

BUILDER = PragueVM.get_transaction_builder()
ETHER = 10**18
STAKED = 2_000 * ETHER


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


class Harness:
    def __init__(self, chain):
        self.chain = chain
        self.nonces: dict[bytes, int] = {}

    def send(self, account, to, data=b"", value=0, gas=1_000_000):
        nonce = self.nonces.get(account.address, 0)
        self.nonces[account.address] = nonce + 1
        unsigned = BUILDER.new_unsigned_dynamic_fee_transaction(
            chain_id=1337, nonce=nonce, max_priority_fee_per_gas=0, max_fee_per_gas=10**10, gas=gas,
            to=to, value=value, data=data, access_list=[],
        )
        tx = BUILDER.decode(unsigned.as_signed_transaction(keys.PrivateKey(account.private_key), chain_id=1337).encode())
        head = self.chain.head
        executed = self.chain.build_block(
            BlockAttributes(timestamp=head.timestamp + 2, coinbase=b"\x00" * 20, mix_hash=b"\x01" * 32), [tx]
        )
        [receipt] = executed.receipts
        return receipt

    def view(self, to, signature, types, args=()):
        out = call(self.chain.execution, self.chain.head, CallRequest(to=to, data=selector(signature) + encode(types, list(args))))
        return out

    def stake_of(self, who):
        out = self.view(STAKE, "stakeOf(address)", ["address"], [who])
        return decode(["uint256", "uint256", "uint256", "uint64", "uint8"], out)

    def balance(self, who):
        return self.chain.account(self.chain.head, who)[1]


@pytest.fixture
def harness(chain, dev_accounts):
    h = Harness(chain)
    validator = dev_accounts[3]
    assert h.send(validator, STAKE, selector("stake()"), value=STAKED).state_root == b"\x01"
    assert h.send(validator, STAKE, selector("setRoles(uint8)") + encode(["uint8"], [1])).state_root == b"\x01"
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
    return h.send(reporter, SLASHING, selector(f"{function}(bytes,bytes)") + encode(["bytes", "bytes"], [first, second]))


def revert_reason(h, reporter, function, first, second):
    data = selector(f"{function}(bytes,bytes)") + encode(["bytes", "bytes"], [first, second])
    with pytest.raises(ExecutionReverted) as info:
        call(h.chain.execution, h.chain.head, CallRequest(sender=reporter.address, to=SLASHING, data=data))
    return info.value.reason


def test_double_proposal_slashes_pays_reporter_burns_rest_and_ejects(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    first = proposal(chain, validator, 7, b"\x01" * 32)
    second = proposal(chain, validator, 7, b"\x02" * 32)
    stake_balance, reporter_balance = harness.balance(STAKE), harness.balance(reporter.address)
    receipt = report(harness, reporter, "reportDoubleProposal", first, second)
    assert receipt.state_root == b"\x01"
    penalty = STAKED * 1_000 // 10_000
    reward = penalty * 1_000 // 10_000
    assert harness.stake_of(validator.address) == (STAKED - penalty, 0, 0, 0, 0)  # validator role gone
    assert harness.balance(STAKE) == stake_balance - penalty
    fee = receipt.gas_used * chain.head.base_fee_per_gas  # one tx in the block, tip 0
    assert harness.balance(reporter.address) == reporter_balance + reward - fee
    validators = decode(["address[]"], harness.view(STAKE, "validators()", [], []))[0]
    assert validators == ()
    evidence = keccak(b"double-proposal" + validator.address + (7).to_bytes(32, "big"))
    assert decode(["bool"], harness.view(SLASHING, "isPunished(bytes32)", ["bytes32"], [evidence])) == (True,)
    topics = [list(log.topics) for log in receipt.logs if log.address == SLASHING]
    assert topics == [[int.from_bytes(keccak(b"ConsensusOffence(address,uint8,bytes32,uint256,address)"), "big"),
                       int.from_bytes(validator.address, "big"), 1]]


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
    assert report(harness, reporter, "reportSurroundVote", outer, inner).state_root == b"\x01"
    assert harness.stake_of(validator.address)[0] == after_first - after_first // 10


def test_stake_contract_balance_matches_stakes_after_slashing(harness, chain, dev_accounts):
    validator, reporter = dev_accounts[3], dev_accounts[5]
    report(harness, reporter, "reportDoubleProposal", proposal(chain, validator, 1, b"\x01" * 32),
           proposal(chain, validator, 1, b"\x02" * 32))
    staked, _, unbonding, _, _ = harness.stake_of(validator.address)
    assert harness.balance(STAKE) == staked + unbonding


def test_interface_file_is_generated_for_slashing():
    assert (ABI_DIR / "ISlashing.sol").exists()
