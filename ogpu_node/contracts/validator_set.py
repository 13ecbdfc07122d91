"""Stake's validator set: the activation, exit and ejection queues applied at epoch boundaries, and
the consensus settlement (rewards and penalties) applied at an epoch's first block (docs/consensus.md,
"Validator set", "Rewards and penalties"). A mixin of Stake: these steps run on Stake's storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ogpu_node.config import ConsensusConfig, ProtocolParams
from ogpu_node.contracts.host import Host, SystemCallHost
from ogpu_node.contracts.layout import StakeEntry, StakeTotal, ValidatorEntry, ValidatorEpoch
from ogpu_node.contracts.storage import AddressQueue, AddressSet, Storage
from ogpu_node.types.protocol import MAX_VALIDATOR_QUEUE_POPS, Role, ValidatorStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

# ValidatorEntry.queued bits: the queues that hold an entry for the account (at most one each).
_IN_ACTIVATIONS, _IN_EXITS, _IN_EJECTIONS = 1, 2, 4


class ValidatorSetSteps:
    config: ProtocolParams
    consensus: ConsensusConfig | None
    ADDRESS: bytes

    if TYPE_CHECKING:  # Stake's and NativeContract's own (a definition here would shadow theirs)
        def storage(self, host: Host) -> Storage: ...
        def entry(self, host: Host, who: bytes) -> StakeEntry: ...
        def emit(self, host: Host, event: str, **values: object) -> None: ...
        def set_roles(self, host: Host, who: bytes, roles: int, *, ejected: bool = False) -> None: ...

    def validator(self, host: Host, who: bytes) -> ValidatorEntry:
        return ValidatorEntry(self.storage(host), who)

    def _enqueue(self, host: Host, who: bytes, queue: str, bit: int) -> None:
        validator = self.validator(host, who)
        if not validator.queued & bit:  # an account sits in each queue once
            validator.queued |= bit
            AddressQueue(self.storage(host), queue).push(who)

    def _join(self, host: Host, who: bytes) -> None:
        validator = self.validator(host, who)
        status = validator.status
        if status == ValidatorStatus.EXITING:  # still in the set: the exit is called off
            validator.status = ValidatorStatus.ACTIVE
        elif status == ValidatorStatus.NONE:
            validator.status = ValidatorStatus.PENDING
            self._enqueue(host, who, "activations", _IN_ACTIVATIONS)
        if validator.status != status:
            self.emit(host, "ValidatorQueued", account=who, status=validator.status)

    def _leave(self, host: Host, who: bytes, ejected: bool) -> None:
        validator = self.validator(host, who)
        status = validator.status
        if status == ValidatorStatus.PENDING:  # never active: its queue entry is skipped
            validator.status = ValidatorStatus.NONE
        elif status in (ValidatorStatus.ACTIVE, ValidatorStatus.EXITING):
            validator.status = ValidatorStatus.EXITING
            if ejected:
                self._enqueue(host, who, "ejections", _IN_EJECTIONS)
            else:
                self._enqueue(host, who, "exits", _IN_EXITS)
        if validator.status != status:
            self.emit(host, "ValidatorQueued", account=who, status=validator.status)

    def epoch_at(self, timestamp: int) -> int:
        """The epoch of a block at ``timestamp``; under --dev, the timestamp itself."""
        return timestamp if self.consensus is None else self.consensus.epoch_at(timestamp)

    def next_boundary(self, timestamp: int) -> int:
        """The earliest timestamp of a block after the next epoch boundary (under --dev: the next
        block's)."""
        if self.consensus is None:
            return timestamp
        return self.consensus.epoch_start(self.consensus.epoch_at(timestamp) + 1)

    def process_epoch(self, host: Host) -> None:
        """The start-of-block step: at the first block of an epoch, apply the ejection queue, then up
        to `churnLimit` exits and activations, in queue order. Under --dev every block applies them and
        no marker is written, so a block with empty queues changes no state (its state root is plain
        Prague's, as the block-import benchmark's baseline requires)."""
        epoch = self.epoch_at(host.timestamp)
        if self.consensus is not None:
            marker = ValidatorEpoch(self.storage(host))
            if epoch <= marker.epoch:
                return
            marker.epoch = epoch
        churn = MAX_VALIDATOR_QUEUE_POPS if self.consensus is None else self.consensus.churn_limit
        self._drain(host, epoch, "ejections", _IN_EJECTIONS, MAX_VALIDATOR_QUEUE_POPS)
        self._drain(host, epoch, "exits", _IN_EXITS, churn)
        self._drain(host, epoch, "activations", _IN_ACTIVATIONS, churn)

    def _drain(self, host: Host, epoch: int, name: str, bit: int, limit: int) -> None:
        store = self.storage(host)
        queue, members = AddressQueue(store, name), AddressSet(store, "validators")
        activating = bit == _IN_ACTIVATIONS
        wanted = ValidatorStatus.PENDING if activating else ValidatorStatus.EXITING
        changed = popped = 0
        while changed < limit and popped < MAX_VALIDATOR_QUEUE_POPS and len(queue):
            who = queue.peek()
            validator = self.validator(host, who)
            if validator.status == wanted and not activating and len(members) == 1 and self.consensus is not None:
                break  # the last validator stays until another is active: a chain needs a proposer
            queue.pop()
            popped += 1
            validator.queued &= ~bit
            if validator.status != wanted:  # changed its mind since it was queued
                continue
            changed += 1
            if activating:
                validator.status = ValidatorStatus.ACTIVE
                validator.activation_epoch = epoch
                members.add(who)
                self.emit(host, "ValidatorActivated", account=who, epoch=epoch)
            else:
                validator.status = ValidatorStatus.NONE
                validator.exit_epoch = epoch
                members.remove(who)
                self.emit(host, "ValidatorExited", account=who, epoch=epoch)

    def active_validators(self, host: Host) -> list[tuple[bytes, int, bytes]]:
        """(address, staked, RANDAO tip) of each validator in the set: what consensus weighs."""
        return [(who, self.entry(host, who).staked, self.validator(host, who).randao_tip)
                for who in AddressSet(self.storage(host), "validators")]

    def add_genesis_validator(self, host: Host, who: bytes, stake: int, tip: bytes) -> None:
        """A validator of the genesis's consensus section: staked and active from epoch 0. The caller
        credits Stake's balance with ``stake``."""
        entry = self.entry(host, who)
        entry.staked += stake
        entry.roles |= Role.VALIDATOR
        StakeTotal(self.storage(host)).total += stake
        validator = self.validator(host, who)
        validator.randao_tip = tip
        validator.status = ValidatorStatus.ACTIVE
        AddressSet(self.storage(host), "validators").add(who)

    def apply_settlement(self, host: SystemCallHost, settlement: Sequence[tuple[bytes, int]]) -> None:
        """Apply an epoch's rewards (minted into `staked`) and penalties (burned from free stake only:
        never stake locked for tasks, never unbonding stake); a validator left under the validator
        minimum is ejected at the next boundary."""
        store = self.storage(host)
        total = StakeTotal(store)
        minted = burned = 0
        for who, delta in settlement:
            entry = self.entry(host, who)
            if delta > 0:
                host.mint(self.ADDRESS, delta)
                entry.staked += delta
                minted += delta
                continue
            taken = min(-delta, entry.staked - entry.locked)
            if taken <= 0:
                continue
            entry.staked -= taken
            host.burn(self.ADDRESS, taken)
            burned += taken
            if entry.roles & Role.VALIDATOR and entry.staked < self.config.min_validator_stake:
                self.set_roles(host, who, entry.roles & ~int(Role.VALIDATOR), ejected=True)
        total.total = total.total + minted - burned
        self.emit(host, "EpochSettled", epoch=self.epoch_at(host.timestamp), minted=minted, burned=burned)
