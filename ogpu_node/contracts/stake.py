"""Stake: validator and provider stakes, locked stake, registered resources, the unbonding queue.

Invariant: the contract's balance = Σ staked + Σ unbonding. Active (staked) stake backs roles, bids and
council seats; `locked` is the part of it pledged to bids and seats; unbonding stake is on its way
out but stays slashable until withdrawn.
"""

from __future__ import annotations

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts.addresses import STAKE
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.layout import ResourcesEntry, StakeEntry, StakeTotal
from ogpu_node.contracts.storage import AddressSet
from ogpu_node.types.protocol import ALL_ROLES, BPS, DEVICE_KINDS, MAX_ENDPOINT_BYTES, Role
from ogpu_node.types.records import ResourcesRecord, StakeParamsRecord, StakeRecord


class Stake(NativeContract):
    NAME = "Stake"
    ADDRESS = STAKE

    def __init__(self, params: ProtocolParams) -> None:
        super().__init__()
        self.config = params

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

    # -- views --

    def stakeOf(self, host: Host, who: bytes) -> StakeRecord:
        return self.entry(host, who).load(StakeRecord)

    def freeStake(self, host: Host, who: bytes) -> int:
        return self.free_stake(host, who)

    def resourcesOf(self, host: Host, who: bytes) -> ResourcesRecord:
        return ResourcesEntry(self.storage(host), who).load(ResourcesRecord)

    def validators(self, host: Host) -> list[bytes]:
        return list(AddressSet(self.storage(host), "validators"))

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
            self.set_roles(host, who, kept)
        return taken

    def set_roles(self, host: Host, who: bytes, roles: int) -> None:
        store = self.storage(host)
        self.entry(host, who).roles = roles
        for bit, name in ((Role.VALIDATOR, "validators"), (Role.PROVIDER, "providers")):
            members = AddressSet(store, name)
            if roles & bit:
                members.add(who)
            else:
                members.remove(who)
        self.emit(host, "RolesChanged", account=who, roles=roles)

