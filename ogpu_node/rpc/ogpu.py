"""The ogpu_* consensus methods of a proof-of-stake node: validators, finality and duties
(docs/consensus.md, "Running a validator"). Numbers are hex quantities, as eth_*'s. Sans-IO: plain
calls over the consensus core."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ogpu_node.consensus import BranchState, Checkpoint, ConsensusCore
from ogpu_node.rpc import params as p


def _checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"epoch": hex(checkpoint.epoch), "root": "0x" + checkpoint.root.hex()}


class OgpuConsensusApi:
    def __init__(self, core: ConsensusCore, wall_clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.wall_clock = wall_clock

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"ogpu_validators": self.ogpu_validators, "ogpu_finality": self.ogpu_finality,
                "ogpu_duties": self.ogpu_duties}

    def _slot(self) -> int:
        return self.core.rules.params.slot_at(self.wall_clock())

    def _current(self) -> BranchState:
        """The head's state carried to the clock's epoch (the epoch whose duties are under way)."""
        return self.core.epoch_state(self.core.rules.params.epoch_of(self._slot()))

    def ogpu_validators(self, ctx: Any) -> list[dict[str, Any]]:
        """The validators of the current epoch, ordered by address; stake in wei (hex quantity)."""
        return [{"address": "0x" + v.address.hex(), "stake": hex(v.stake), "randaoTip": "0x" + v.randao_tip.hex()}
                for v in self._current().current.validators.validators]

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
