"""The ogpu_* consensus methods of a proof-of-stake node: validators (with their stake, status and the
rewards and penalties settled on the head's branch), finality, duties and the chain's slashings
(docs/consensus.md, "Running a validator"). Numbers are hex quantities, as eth_*'s. Sans-IO: plain
calls over the consensus core and the chain."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from eth_abi import decode

from ogpu_node.chain import LogFilter
from ogpu_node.consensus import BranchState, Checkpoint, ConsensusCore
from ogpu_node.contracts.abi import Event, load_abi
from ogpu_node.contracts.addresses import SLASHING
from ogpu_node.rpc import params as p
from ogpu_node.rpc.filters import FilterApi
from ogpu_node.rpc.jsonrpc import InvalidParams, RpcError
from ogpu_node.types.protocol import Offence, ValidatorStatus

MAX_SETTLEMENTS = 8  # per validator in ogpu_validators, newest first
# Epoch crossings ogpu_validators looks back over at most (a validator whose net amount was zero in
# them has fewer than MAX_SETTLEMENTS): bounds a call's walk whatever the distance to finality.
MAX_CROSSINGS_SCANNED = 8 * MAX_SETTLEMENTS
MAX_SLASHING_RANGE = 10_000  # blocks per ogpu_slashings call

_OFFENCE = load_abi("Slashing").events["ConsensusOffence"]
# Stake's status of a validator of the current epoch; NONE: taken out of Stake's set at a boundary
# since the epoch's set was read (it still validates this epoch).
_STATUS = {ValidatorStatus.NONE: "exited", ValidatorStatus.PENDING: "pending", ValidatorStatus.ACTIVE: "active",
           ValidatorStatus.EXITING: "exiting"}


def _checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"epoch": hex(checkpoint.epoch), "root": "0x" + checkpoint.root.hex()}


def _event_args(event: Event, topics: list[bytes], data: bytes) -> dict[str, Any]:
    """A log's arguments by name: indexed ones from the topics after the event's, the rest from data."""
    indexed = [(name, kind) for name, kind, is_indexed in event.inputs if is_indexed]
    plain = [(name, kind) for name, kind, is_indexed in event.inputs if not is_indexed]
    args = {name: decode([kind], topic)[0] for (name, kind), topic in zip(indexed, topics[1:], strict=True)}
    args.update(zip((name for name, _ in plain), decode([kind for _, kind in plain], data), strict=True))
    # eth_abi gives addresses as checksummed text; answer them as eth_getLogs does, lower-case hex.
    return {name: value.lower() if isinstance(value, str) else value for name, value in args.items()}


def _offence_kind(kind: int) -> str:
    try:
        return Offence(kind).name.lower().replace("_", "-")  # double-proposal, double-vote, surround-vote
    except ValueError:
        return hex(kind)


def _settlement_entry(state: BranchState, delta: int) -> dict[str, Any]:
    """One block's settlement for one validator. The block crossed into ``state.epoch``: its last
    boundary closed the inclusion window of ``state.epoch - 2`` (after empty epochs, the earlier ones
    too, in the same amount). The net amount as two quantities, one of them zero: JSON-RPC quantities
    have no sign, and clients parse them as unsigned."""
    return {"epoch": hex(state.epoch - 2), "block": "0x" + state.root.hex(),
            "reward": hex(max(delta, 0)), "penalty": hex(max(-delta, 0))}


class OgpuConsensusApi:
    def __init__(self, core: ConsensusCore, wall_clock: Callable[[], float] = time.time, *,
                 filters: FilterApi | None = None) -> None:
        """``filters``: the node's log queries over its chain (a node always passes them): Stake at the
        head is read from their chain, and ogpu_slashings answers from their logs. Without them
        ogpu_validators has no `status` and `staked` and there is no ogpu_slashings."""
        self.core = core
        self.wall_clock = wall_clock
        self.filters = filters

    def methods(self) -> dict[str, Callable[..., Any]]:
        methods = {"ogpu_validators": self.ogpu_validators, "ogpu_finality": self.ogpu_finality,
                   "ogpu_duties": self.ogpu_duties}
        if self.filters is not None:
            methods["ogpu_slashings"] = self.ogpu_slashings
        return methods

    def _slot(self) -> int:
        return self.core.rules.params.slot_at(self.wall_clock())

    def _current(self) -> BranchState:
        """The head's state carried to the clock's epoch (the epoch whose duties are under way)."""
        return self.core.epoch_state(self.core.rules.params.epoch_of(self._slot()))

    def _settlements(self, validators: Iterable[bytes]) -> dict[bytes, list[dict[str, Any]]]:
        """Each validator's latest settlements on the head's branch, newest first: the blocks from the
        head back to the finalized checkpoint (the core keeps no state below it)."""
        fork_choice = self.core.fork_choice
        found: dict[bytes, list[dict[str, Any]]] = {address: [] for address in validators}
        missing = len(found)  # validators with fewer than MAX_SETTLEMENTS so far
        root: bytes | None = self.core.head()
        crossings = 0
        while root is not None and missing and crossings < MAX_CROSSINGS_SCANNED:
            state = fork_choice.states.get(root)
            if state is None:
                break
            if state.settlement:
                crossings += 1
                for address, delta in state.settlement:
                    entries = found.get(address)
                    if entries is not None and len(entries) < MAX_SETTLEMENTS:
                        entries.append(_settlement_entry(state, delta))
                        if len(entries) == MAX_SETTLEMENTS:
                            missing -= 1
            root = fork_choice.parents.get(root)
        return found

    def _head_stake(self, validators: Iterable[bytes]) -> dict[bytes, dict[str, str]]:
        """Stake's `staked` and validator status of each address after the head block."""
        if self.filters is None:
            return {}
        chain = self.filters.chain
        header = chain.header_by_hash(self.core.head()) or chain.head
        stake, host = chain.execution.stake, chain.execution.read_host(header)
        return {address: {"status": _STATUS[ValidatorStatus(stake.validatorOf(host, address).status)],
                          "staked": hex(stake.stakeOf(host, address).staked)}
                for address in validators}

    def ogpu_validators(self, ctx: Any) -> list[dict[str, Any]]:
        """The validators of the current epoch, ordered by address: `stake` (their weight in the epoch,
        wei), Stake's `status` and `staked` after the head, and their latest `settlements` on the head's
        branch (newest first)."""
        validators = self._current().current.validators.validators
        addresses = [v.address for v in validators]
        stake = self._head_stake(addresses)
        settlements = self._settlements(addresses)
        return [{"address": "0x" + v.address.hex(), "stake": hex(v.stake), "randaoTip": "0x" + v.randao_tip.hex(),
                 **stake.get(v.address, {}), "settlements": settlements[v.address]}
                for v in validators]

    def ogpu_finality(self, ctx: Any) -> dict[str, Any]:
        core = self.core
        return {"justified": _checkpoint(core.justified), "finalized": _checkpoint(core.finalized),
                "head": "0x" + core.head().hex(), "slot": hex(self._slot())}

    def ogpu_duties(self, ctx: Any, address: Any) -> dict[str, Any]:
        """``address``'s duties in the current epoch: the slots it proposes (on the current head's
        branch) and its attestation slot (null when it is not a validator of the epoch)."""
        validator = p.address(address)
        epoch = self._current().epoch
        proposer_slots, attestation_slot = self.core.duties(validator, epoch)
        return {
            "epoch": hex(epoch),
            "proposerSlots": [hex(s) for s in proposer_slots],
            "attestationSlot": None if attestation_slot is None else hex(attestation_slot),
        }

    def ogpu_slashings(self, ctx: Any, from_block: Any = None, to_block: Any = None) -> list[dict[str, Any]]:
        """Slashing's ConsensusOffence events of the canonical chain in [fromBlock, toBlock] (block tags
        as eth_getLogs reads them; toBlock defaults to latest, fromBlock to the 10,000th block before
        it), in chain order; a range over 10,000 blocks is -32005."""
        assert self.filters is not None  # registered only with them
        filters = self.filters
        last = filters.block_number(to_block, filters.chain.head.block_number)
        first = filters.block_number(from_block, max(0, last - (MAX_SLASHING_RANGE - 1)))
        if first > last:
            raise InvalidParams("invalid block range: fromBlock is after toBlock")
        # Checked as asked, not as capped at the head: a query refused today is refused tomorrow too.
        if last - first + 1 > MAX_SLASHING_RANGE:
            raise RpcError(-32005, f"block range too large (limit {MAX_SLASHING_RANGE} blocks)")
        offences = LogFilter(frozenset((SLASHING,)), (frozenset((_OFFENCE.topic,)),))
        out = []
        for entry in filters.range_logs(offences, first, last):
            args = _event_args(_OFFENCE, entry["topics"], entry["data"])
            out.append({
                "offender": args["offender"], "kind": _offence_kind(args["kind"]),
                "evidenceId": "0x" + args["evidenceId"].hex(), "penalty": hex(args["penalty"]),
                "reporter": args["reporter"], "blockNumber": hex(entry["blockNumber"]),
                "blockHash": "0x" + entry["blockHash"].hex(), "transactionHash": "0x" + entry["transactionHash"].hex(),
            })
        return out
