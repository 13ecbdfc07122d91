"""Stake: validator and provider stakes, locked stake, registered resources, the unbonding queue, and
the validator set's activation, exit and ejection queues.

Invariant: the contract's balance = Σ staked + Σ unbonding. Active (staked) stake backs roles, bids and
council seats; `locked` is the part of it pledged to bids and seats; unbonding stake is on its way
out but stays slashable until withdrawn.

The validator set (`validators()`) changes only at epoch boundaries: taking or clearing the validator
role queues the account, and the system call of each epoch's first block applies the queues, at most
`churnLimit` activations and as many exits (docs/consensus.md, "Validator set"). Under `--dev` (no
consensus section) every block with a new timestamp is a boundary and the churn is unlimited.
"""

from __future__ import annotations

from ogpu_node.config import ConsensusConfig, ProtocolParams
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.layout import (
    ProfileCount,
    ProfileFlag,
    ProfileItem,
    ResourcesEntry,
    StakeEntry,
    StakeTotal,
    ValidatorEpoch,
)
from ogpu_node.contracts.storage import AddressQueue, AddressSet
from ogpu_node.contracts.validator_set import ValidatorSetSteps
from ogpu_node.types.protocol import (
    ALL_ROLES,
    BPS,
    DEVICE_KINDS,
    MAX_ENDPOINT_BYTES,
    MAX_PROFILES,
    NO_PROFILE,
    Role,
    ValidatorStatus,
)
from ogpu_node.types.records import ResourcesRecord, StakeParamsRecord, StakeRecord, ValidatorRecord


class Stake(ValidatorSetSteps, NativeContract):
    NAME = "Stake"
    ADDRESS = STAKE

    def __init__(self, params: ProtocolParams, consensus: ConsensusConfig | None = None) -> None:
        super().__init__()
        self.config = params
        self.consensus = consensus

    # -- external functions --

    def stake(self, host: Host) -> None:
        if host.value == 0:
            raise Revert("Stake.stake: no value sent")
        entry = self.entry(host, host.caller)
        total = entry.staked + host.value
        entry.staked = total
        StakeTotal(self.storage(host)).total += host.value
        self.emit(host, "Staked", account=host.caller, amount=host.value, total=total)

    def requestUnstake(self, host: Host, amount: int) -> None:
        who = host.caller
        entry = self.entry(host, who)
        staked, locked = entry.staked, entry.locked
        if amount == 0:
            raise Revert("Stake.requestUnstake: amount is zero")
        if amount > staked - locked:
            raise Revert("Stake.requestUnstake: amount exceeds free stake")
        remaining = staked - amount
        roles = entry.roles
        if roles & Role.VALIDATOR and remaining < self.config.min_validator_stake:
            raise Revert("Stake.requestUnstake: stake would fall below the validator minimum; clear the role first")
        if remaining < self.config.min_validator_stake and self.validator(host, who).status != ValidatorStatus.NONE:
            raise Revert("Stake.requestUnstake: a validator's stake stays until an epoch boundary takes it out "
                         "of the validator set")
        if roles & Role.PROVIDER and remaining < self.config.min_provider_stake:
            raise Revert("Stake.requestUnstake: stake would fall below the provider minimum; clear the role first")
        entry.staked = remaining
        StakeTotal(self.storage(host)).total -= amount
        entry.unbonding += amount
        # One unbonding entry per account: a new request restarts the delay for the whole amount.
        release = host.timestamp + self.config.unbonding_delay
        entry.release_time = release
        self.emit(host, "UnstakeRequested", account=who, amount=amount, releaseTime=release)

    def withdraw(self, host: Host) -> int:
        who = host.caller
        entry = self.entry(host, who)
        amount = entry.unbonding
        if amount == 0:
            raise Revert("Stake.withdraw: nothing to withdraw")
        release = entry.release_time
        if host.timestamp < release:
            raise Revert(f"Stake.withdraw: unbonding until timestamp {release}")
        entry.unbonding = 0
        entry.release_time = 0
        host.transfer(STAKE, who, amount)
        self.emit(host, "Withdrawn", account=who, amount=amount)
        return amount

    def setRoles(self, host: Host, roles: int) -> None:
        if roles & ~int(ALL_ROLES):  # int: ~ of an IntFlag keeps only its known bits
            raise Revert("Stake.setRoles: unknown role bits")
        who = host.caller
        staked = self.entry(host, who).staked
        if roles & Role.VALIDATOR and staked < self.config.min_validator_stake:
            raise Revert("Stake.setRoles: stake below the validator minimum")
        if roles & Role.VALIDATOR and self.validator(host, who).randao_tip == bytes(32):
            raise Revert("Stake.setRoles: register a RANDAO tip (setRandaoTip) before taking the validator role")
        if roles & Role.PROVIDER:
            if staked < self.config.min_provider_stake:
                raise Revert("Stake.setRoles: stake below the provider minimum")
            if ResourcesEntry(self.storage(host), who).memory_mib == 0:
                raise Revert("Stake.setRoles: register resources before taking the provider role")
        self.set_roles(host, who, roles)

    def registerResources(self, host: Host, device_kind: int, memory_mib: int, score: int, endpoint: str) -> None:
        if device_kind >= len(DEVICE_KINDS):
            raise Revert("Stake.registerResources: unknown device kind")
        if memory_mib == 0:
            raise Revert("Stake.registerResources: memory must be positive")
        encoded = endpoint.encode()
        if len(encoded) > MAX_ENDPOINT_BYTES:
            raise Revert(f"Stake.registerResources: endpoint longer than {MAX_ENDPOINT_BYTES} bytes")
        resources = ResourcesEntry(self.storage(host), host.caller)
        resources.device_kind = device_kind
        resources.memory_mib = memory_mib
        resources.throughput_score = score
        resources.endpoint = endpoint
        self.emit(
            host, "ResourcesRegistered", account=host.caller, deviceKind=device_kind, memoryMiB=memory_mib,
            throughputScore=score, endpoint=endpoint,
        )

    def setRandaoTip(self, host: Host, tip: bytes) -> None:
        """Register the tip of the caller's RANDAO hash chain, once: a tip that could change would let
        a validator choose among reveals."""
        if tip == bytes(32):
            raise Revert("Stake.setRandaoTip: the tip is zero")
        validator = self.validator(host, host.caller)
        if validator.randao_tip != bytes(32):
            raise Revert("Stake.setRandaoTip: the RANDAO tip is already registered (it never changes)")
        validator.randao_tip = tip
        self.emit(host, "RandaoTipSet", account=host.caller, tip=tip)

    def setProfiles(self, host: Host, profiles: list[bytes]) -> None:
        """Register the numeric profiles (protocol.profile_id of each name) the caller can compute
        under, replacing the earlier list: a task that names a profile draws only providers that
        registered it, so honest members' results match bit for bit."""
        if len(profiles) > MAX_PROFILES:
            raise Revert(f"Stake.setProfiles: more than {MAX_PROFILES} profiles")
        if NO_PROFILE in profiles:
            raise Revert("Stake.setProfiles: a profile id is zero")
        if len(set(profiles)) != len(profiles):
            raise Revert("Stake.setProfiles: a profile is listed twice")
        store, who = self.storage(host), host.caller
        count = ProfileCount(store, who)
        for i in range(1, count.count + 1):
            ProfileFlag(store, who, ProfileItem(store, who, i).profile).registered = False
        for i in range(len(profiles), count.count):  # clear the old tail (storage refunds)
            ProfileItem(store, who, i + 1).profile = NO_PROFILE
        for i, profile in enumerate(profiles, start=1):
            ProfileItem(store, who, i).profile = profile
            ProfileFlag(store, who, profile).registered = True
        count.count = len(profiles)
        self.emit(host, "ProfilesSet", account=who, profiles=list(profiles))

    # -- views --

    def stakeOf(self, host: Host, who: bytes) -> StakeRecord:
        return self.entry(host, who).load(StakeRecord)

    def freeStake(self, host: Host, who: bytes) -> int:
        return self.free_stake(host, who)

    def resourcesOf(self, host: Host, who: bytes) -> ResourcesRecord:
        return ResourcesEntry(self.storage(host), who).load(ResourcesRecord)

    def profilesOf(self, host: Host, who: bytes) -> list[bytes]:
        store = self.storage(host)
        return [ProfileItem(store, who, i).profile for i in range(1, ProfileCount(store, who).count + 1)]

    def validatorOf(self, host: Host, who: bytes) -> ValidatorRecord:
        return self.validator(host, who).load(ValidatorRecord)

    def validators(self, host: Host) -> list[bytes]:
        return list(AddressSet(self.storage(host), "validators"))

    def validatorQueues(self, host: Host) -> tuple[int, int, int]:
        """(the last epoch boundary applied, 0 under --dev where every block is one; entries in the
        activation queue, in the exit queues);
        entries of accounts that changed their mind since are skipped when reached."""
        store = self.storage(host)
        exits = len(AddressQueue(store, "exits")) + len(AddressQueue(store, "ejections"))
        return ValidatorEpoch(store).epoch, len(AddressQueue(store, "activations")), exits

    def providers(self, host: Host) -> list[bytes]:
        return list(AddressSet(self.storage(host), "providers"))

    def totalStaked(self, host: Host) -> int:
        return StakeTotal(self.storage(host)).total

    def params(self, host: Host) -> StakeParamsRecord:
        c = self.config
        return StakeParamsRecord(c.min_validator_stake, c.min_provider_stake, c.unbonding_delay)

    # -- internal interface for Task, Bid and Slashing (plain calls within one transaction) --

    def entry(self, host: Host, who: bytes) -> StakeEntry:
        return StakeEntry(self.storage(host), who)

    def honours(self, host: Host, who: bytes, profile: bytes) -> bool:
        """Whether `who` may serve a task naming `profile`: any provider if it is zero, otherwise one
        that registered it."""
        return profile == NO_PROFILE or ProfileFlag(self.storage(host), who, profile).registered

    def free_stake(self, host: Host, who: bytes) -> int:
        entry = self.entry(host, who)
        return entry.staked - entry.locked

    def lock(self, host: Host, who: bytes, amount: int) -> None:
        """Pledge free stake to a bid or a council seat."""
        if amount > self.free_stake(host, who):
            raise Revert("Stake: insufficient free stake")
        entry = self.entry(host, who)
        locked = entry.locked + amount
        entry.locked = locked
        self.emit(host, "StakeLocked", account=who, amount=amount, locked=locked)

    def unlock(self, host: Host, who: bytes, amount: int) -> None:
        entry = self.entry(host, who)
        amount = min(amount, entry.locked)  # a slash may already have consumed the pledge
        locked = entry.locked - amount
        entry.locked = locked
        self.emit(host, "StakeUnlocked", account=who, amount=amount, locked=locked)

    def slash(self, host: Host, who: bytes, amount: int, beneficiary: bytes, reward_bps: int) -> int:
        """Take up to `amount` from active then unbonding stake; `reward_bps` of it goes to
        `beneficiary`, the rest is burned. An account left below a role minimum loses the role."""
        if not 0 <= reward_bps <= BPS:
            raise Revert("Stake: reward share out of range")
        entry = self.entry(host, who)
        staked, unbonding = entry.staked, entry.unbonding
        taken = min(amount, staked + unbonding)
        from_staked = min(taken, staked)
        entry.staked = staked - from_staked
        StakeTotal(self.storage(host)).total -= from_staked
        entry.unbonding = unbonding - (taken - from_staked)
        if unbonding and unbonding == taken - from_staked:
            entry.release_time = 0  # nothing left unbonding
        if entry.locked > staked - from_staked:
            entry.locked = staked - from_staked
        reward = taken * reward_bps // BPS
        if reward:
            host.transfer(STAKE, beneficiary, reward)
        host.burn(STAKE, taken - reward)
        self.emit(
            host, "StakeSlashed", account=who, amount=taken, burned=taken - reward, rewarded=reward,
            beneficiary=beneficiary,
        )
        roles = entry.roles
        remaining = staked - from_staked
        kept = roles
        if remaining < self.config.min_validator_stake:
            kept &= ~int(Role.VALIDATOR)
        if remaining < self.config.min_provider_stake:
            kept &= ~int(Role.PROVIDER)
        if kept != roles:
            self.set_roles(host, who, kept, ejected=True)
        return taken

    def set_roles(self, host: Host, who: bytes, roles: int, *, ejected: bool = False) -> None:
        """Set ``who``'s roles. The provider role applies at once; the validator role queues the
        account for activation or exit (``ejected``: a slashed validator, out at the next boundary
        whatever the churn)."""
        entry = self.entry(host, who)
        old = entry.roles
        entry.roles = roles
        providers = AddressSet(self.storage(host), "providers")
        if roles & Role.PROVIDER:
            providers.add(who)
        else:
            providers.remove(who)
        self.emit(host, "RolesChanged", account=who, roles=roles)
        if roles & Role.VALIDATOR and not old & Role.VALIDATOR:
            self._join(host, who)
        elif old & Role.VALIDATOR and not roles & Role.VALIDATOR:
            self._leave(host, who, ejected)
