"""Slashing: evidence of consensus offences, and the ledger of computation penalties (DESIGN.md §4).

Anyone submits two signed messages; the contract recovers the signer of both over the signing roots of
`ogpu_node.types.signing`, checks that together they are an offence, takes
`consensus_penalty_bps` of the offender's stake (active, then unbonding), or more when others were
slashed within the same window (the correlation penalty, docs/consensus.md "Slashing"), pays `reporter_share_bps` of
it to the reporter and the block's proposer (half each), burns the rest and ejects the offender from
the validator set at the next epoch boundary. Each offence has an
evidence id, recorded when punished, so the same offence is never punished twice.
"""

from __future__ import annotations

from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts.addresses import SLASHING
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.layout import EvidenceEntry, SlashedWindow
from ogpu_node.contracts.stake import Stake
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.types.protocol import (
    BPS,
    ECRECOVER_GAS,
    PROPORTIONAL_SLASHING_MULTIPLIER,
    SLASHING_WINDOW,
    Offence,
    Role,
)
from ogpu_node.types.records import SlashingParamsRecord
from ogpu_node.types.signing import SignedAttestation, SignedProposal


class Slashing(NativeContract):
    NAME = "Slashing"
    ADDRESS = SLASHING

    def __init__(self, params: ProtocolParams, stake: Stake, chain_id: int, genesis_hash: bytes) -> None:
        super().__init__()
        self.config = params
        self.stake = stake
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash

    def _signer(self, host: Host, root: bytes, signature: bytes, which: str) -> bytes:
        host.charge(ECRECOVER_GAS)
        try:
            return recover_signer(root, signature)
        except InvalidSignature as exc:
            raise Revert(f"Slashing: {which} message: {exc}") from None

    def _pair(self, host: Host, first: bytes, second: bytes, kind: type, label: str) -> tuple:
        """Decode two signed messages of `kind` and recover their common signer."""
        try:
            a, b = kind.decode(first), kind.decode(second)
        except (DecodingError, ValueError):
            raise Revert(f"Slashing: malformed signed {label}") from None
        signer_a = self._signer(host, a.message.signing_root(self.chain_id, self.genesis_hash), a.signature, "first")
        signer_b = self._signer(host, b.message.signing_root(self.chain_id, self.genesis_hash), b.signature, "second")
        if signer_a != signer_b:
            raise Revert("Slashing: the two messages have different signers")
        return a, b, signer_a

    # -- external functions --

    def reportDoubleProposal(self, host: Host, first: bytes, second: bytes) -> int:
        a, b, offender = self._pair(host, first, second, SignedProposal, "proposal")
        if a.message.slot != b.message.slot:
            raise Revert("Slashing: proposals are for different slots")
        if a.message.block_hash == b.message.block_hash:
            raise Revert("Slashing: proposals are for the same block")
        evidence = keccak(b"double-proposal" + offender + a.message.slot.to_bytes(32, "big"))
        return self._punish(host, offender, Offence.DOUBLE_PROPOSAL, evidence)

    def reportDoubleVote(self, host: Host, first: bytes, second: bytes) -> int:
        a, b, offender = self._pair(host, first, second, SignedAttestation, "attestation")
        if a.message.target_epoch != b.message.target_epoch:
            raise Revert("Slashing: attestations have different target epochs")
        if a.message == b.message:
            raise Revert("Slashing: attestations are identical")
        evidence = keccak(b"double-vote" + offender + a.message.target_epoch.to_bytes(32, "big"))
        return self._punish(host, offender, Offence.DOUBLE_VOTE, evidence)

    def reportSurroundVote(self, host: Host, surrounding: bytes, surrounded: bytes) -> int:
        a, b, offender = self._pair(host, surrounding, surrounded, SignedAttestation, "attestation")
        if not a.message.surrounds(b.message):
            raise Revert("Slashing: the first attestation does not surround the second")
        roots = sorted(
            (a.message.signing_root(self.chain_id, self.genesis_hash), b.message.signing_root(self.chain_id, self.genesis_hash))
        )
        evidence = keccak(b"surround-vote" + offender + roots[0] + roots[1])
        return self._punish(host, offender, Offence.SURROUND_VOTE, evidence)

    def isPunished(self, host: Host, evidence_id: bytes) -> bool:
        return EvidenceEntry(self.storage(host), evidence_id).punished

    def params(self, host: Host) -> SlashingParamsRecord:
        return SlashingParamsRecord(self.config.reporter_share_bps, self.config.consensus_penalty_bps)

    # -- penalties --

    def _punish(self, host: Host, offender: bytes, kind: int, evidence: bytes) -> int:
        entry = EvidenceEntry(self.storage(host), evidence)
        if entry.punished:
            raise Revert("Slashing: offence already punished")
        stake = self.stake.stakeOf(host, offender)
        if stake.staked + stake.unbonding == 0:
            raise Revert("Slashing: offender has no stake")
        entry.punished = True
        penalty = self._correlated_penalty(host, stake.staked + stake.unbonding)
        # The reward comes here first, then half goes to the reporter and half to the proposer that
        # included the report: both did work the chain needs.
        taken = self.stake.slash(host, offender, penalty, SLASHING, self.config.reporter_share_bps)
        reward = taken * self.config.reporter_share_bps // BPS
        host.transfer(SLASHING, host.coinbase, reward // 2)
        host.transfer(SLASHING, host.caller, reward - reward // 2)
        roles_now = self.stake.stakeOf(host, offender).roles
        if roles_now & Role.VALIDATOR:
            self.stake.set_roles(host, offender, roles_now & ~int(Role.VALIDATOR), ejected=True)
        self.emit(
            host, "ConsensusOffence", offender=offender, kind=kind, evidenceId=evidence, penalty=taken,
            reporter=host.caller,
        )
        return taken

    def _correlated_penalty(self, host: Host, exposure: int) -> int:
        """exposure × max(consensusPenaltyBps, min(1, 3 × slashed together / total stake)): a lone
        offender loses its share; a third of the stake equivocating together loses everything."""
        window = SlashedWindow(self.storage(host))
        now = host.timestamp // SLASHING_WINDOW
        if window.window != now:
            window.previous = window.current if window.window + 1 == now else 0
            window.current = 0
            window.window = now
        window.current += exposure
        together = window.current + window.previous
        total = max(self.stake.totalStaked(host), exposure)
        correlated = exposure * min(PROPORTIONAL_SLASHING_MULTIPLIER * together, total) // total
        return max(exposure * self.config.consensus_penalty_bps // BPS, correlated)

    def penalize(self, host: Host, offender: bytes, task_id: int, kind: int, amount: int, beneficiary: bytes) -> int:
        """A computation penalty decided by Task (rejected checkpoint, missed deadline, missed reveal)."""
        taken = self.stake.slash(host, offender, amount, beneficiary, self.config.reporter_share_bps)
        self.emit(
            host, "ComputationPenalty", offender=offender, taskId=task_id, kind=kind, penalty=taken,
            beneficiary=beneficiary,
        )
        return taken
