"""Slashing: evidence of consensus offences, and the ledger of computation penalties (DESIGN.md §4).

Anyone submits two signed messages; the contract recovers the signer of both over the signing roots of
`ogpu_node.types.signing`, checks that together they are an offence, takes
`consensus_penalty_bps` of the offender's stake (active, then unbonding), or more when others were
slashed within the same window (the correlation penalty, docs/consensus.md "Slashing"), pays `reporter_share_bps` of
it to the reporter and the block's proposer (half each), burns the rest and ejects the offender from
the validator set at the next epoch boundary. Each offence has an
evidence id, recorded when punished, so the same offence is never punished twice.

A stream fault (docs/streams.md, "Penalty") is proved the same way, by signatures alone: the client's
request, a member's response to it, and ⌈2c/3⌉ current subscribers' verdicts against that response.
The offender loses a council seat's stake, `reporter_share_bps` of it to the reporter, and its seat.
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
    MAX_COUNCIL,
    PROPORTIONAL_SLASHING_MULTIPLIER,
    SLASHING_WINDOW,
    Offence,
    Role,
)
from ogpu_node.types.records import SlashingParamsRecord
from ogpu_node.types.signing import (
    SignedAttestation,
    SignedProposal,
    SignedStream,
    StreamRequest,
    StreamResponse,
    StreamVerdict,
)
from ogpu_node.types.streams import fault_quorum, stream_fault_id


class Slashing(NativeContract):
    NAME = "Slashing"
    ADDRESS = SLASHING

    def __init__(self, params: ProtocolParams, stake: Stake, chain_id: int, genesis_hash: bytes) -> None:
        super().__init__()
        self.config = params
        self.stake = stake
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.task = None  # set by Task: a stream fault reads the stream and its subscribers

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

    def reportStreamFault(self, host: Host, request: bytes, response: bytes, verdicts: list[bytes]) -> int:
        """A council member's response to a stream request, proved faulty by ⌈2c/3⌉ subscribers'
        signed verdicts (docs/streams.md, "Penalty"): the member loses a council seat's stake and,
        if it holds one on this stream, its seat."""
        if len(verdicts) > MAX_COUNCIL:
            raise Revert(f"Slashing: more than {MAX_COUNCIL} verdicts")
        req = self._stream(host, StreamRequest, request, "request")
        task_id = req.message.task_id
        client, council_size = self.task.stream_fault_terms(host, task_id)
        request_id = req.message.request_id(self.chain_id, self.genesis_hash)
        requester = self._signer(host, request_id, req.signature, "request")
        if not self.task.signs_for_client(host, task_id, requester):
            raise Revert("Slashing: the request is not signed by the stream's client or its request key")
        resp = self._stream(host, StreamResponse, response, "response")
        if resp.message.task_id != task_id or resp.message.request_id != request_id:
            raise Revert("Slashing: the response is not to this request")
        offender = self._signer(host, self._root(resp.message), resp.signature, "response")
        if offender == client:
            raise Revert("Slashing: the response is signed by the client")
        needed = fault_quorum(council_size)
        if len(verdicts) < needed:
            raise Revert(f"Slashing: {len(verdicts)} verdicts against the response, {needed} needed")
        subscribers = self.task.bid.subscribers(host, task_id)
        signers: set[bytes] = set()
        for raw in verdicts:
            verdict = self._stream(host, StreamVerdict, raw, "verdict")
            v = verdict.message
            if (v.task_id, v.request_id, v.member, v.response_hash) != (
                task_id, request_id, offender, resp.message.response_hash
            ):
                raise Revert("Slashing: a verdict is not on this response")
            if v.agrees:
                raise Revert("Slashing: a verdict agrees with the response")
            signer = self._signer(host, self._root(v), verdict.signature, "verdict")
            if signer == offender:
                raise Revert("Slashing: a verdict is signed by the offender")
            if signer not in subscribers:
                raise Revert("Slashing: a verdict is not signed by a current subscriber")
            if signer in signers:
                raise Revert("Slashing: two verdicts from one signer")
            signers.add(signer)
        evidence = stream_fault_id(task_id, request_id, offender)
        self._record(host, evidence, offender)
        # The seat goes first, so that its lock is released before the slash lowers the stake it backs.
        if offender in subscribers:
            self.task.bid.remove_subscriber(host, task_id, offender)
        taken = self.stake.slash(
            host, offender, self.config.council_seat_stake, host.caller, self.config.reporter_share_bps
        )
        self.emit(
            host, "StreamFault", taskId=task_id, requestId=request_id, offender=offender, amount=taken,
            reporter=host.caller,
        )
        return taken

    def _stream(self, host: Host, kind: type, data: bytes, label: str) -> SignedStream:
        try:
            return SignedStream.decode(kind, data)
        except ValueError:
            raise Revert(f"Slashing: malformed signed stream {label}") from None

    def _root(self, message: StreamResponse | StreamVerdict) -> bytes:
        return message.signing_root(self.chain_id, self.genesis_hash)

    def isPunished(self, host: Host, evidence_id: bytes) -> bool:
        return EvidenceEntry(self.storage(host), evidence_id).punished

    def params(self, host: Host) -> SlashingParamsRecord:
        return SlashingParamsRecord(self.config.reporter_share_bps, self.config.consensus_penalty_bps)

    # -- penalties --

    def _record(self, host: Host, evidence: bytes, offender: bytes) -> int:
        """Mark `evidence` punished, once, and return the offender's slashable stake (never zero)."""
        entry = EvidenceEntry(self.storage(host), evidence)
        if entry.punished:
            raise Revert("Slashing: offence already punished")
        stake = self.stake.stakeOf(host, offender)
        if stake.staked + stake.unbonding == 0:
            raise Revert("Slashing: offender has no stake")
        entry.punished = True
        return stake.staked + stake.unbonding

    def _punish(self, host: Host, offender: bytes, kind: int, evidence: bytes) -> int:
        penalty = self._correlated_penalty(host, self._record(host, evidence, offender))
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

    def penalize(self, host: Host, offender: bytes, task_id: int, kind: int, amount: int, beneficiary: bytes,
                 reward_bps: int | None = None) -> int:
        """A computation penalty decided by Task (rejected checkpoint, missed deadline, missed vote, lazy
        member); `reward_bps` of it (default the reporter share) goes to `beneficiary`."""
        share = self.config.reporter_share_bps if reward_bps is None else reward_bps
        taken = self.stake.slash(host, offender, amount, beneficiary, share)
        self.emit(
            host, "ComputationPenalty", offender=offender, taskId=task_id, kind=kind, penalty=taken,
            beneficiary=beneficiary,
        )
        return taken
