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
from ogpu_node.contracts.storage import AddressSet
from ogpu_node.types.protocol import ALL_ROLES, BPS, DEVICE_KINDS, MAX_ENDPOINT_BYTES, Role


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
        store = self.storage(host)
        total = store.add("staked", host.caller, delta=host.value)
        store.add("total", delta=host.value)
        self.emit(host, "Staked", account=host.caller, amount=host.value, total=total)

    def requestUnstake(self, host: Host, amount: int) -> None:
        store = self.storage(host)
        who = host.caller
        staked, locked = store.get("staked", who), store.get("locked", who)
        if amount == 0:
            raise Revert("Stake.requestUnstake: amount is zero")
        if amount > staked - locked:
            raise Revert("Stake.requestUnstake: amount exceeds free stake")
        remaining = staked - amount
        roles = store.get("roles", who)
        if roles & Role.VALIDATOR and remaining < self.config.min_validator_stake:
            raise Revert("Stake.requestUnstake: stake would fall below the validator minimum; clear the role first")
        if roles & Role.PROVIDER and remaining < self.config.min_provider_stake:
            raise Revert("Stake.requestUnstake: stake would fall below the provider minimum; clear the role first")
        store.set("staked", who, value=remaining)
        store.add("total", delta=-amount)
        store.add("unbonding", who, delta=amount)
        # One unbonding entry per account: a new request restarts the delay for the whole amount.
        release = host.timestamp + self.config.unbonding_delay
        store.set("release", who, value=release)
        self.emit(host, "UnstakeRequested", account=who, amount=amount, releaseTime=release)

    def withdraw(self, host: Host) -> int:
        store = self.storage(host)
        who = host.caller
        amount = store.get("unbonding", who)
        if amount == 0:
            raise Revert("Stake.withdraw: nothing to withdraw")
        release = store.get("release", who)
        if host.timestamp < release:
            raise Revert(f"Stake.withdraw: unbonding until timestamp {release}")
        store.set("unbonding", who, value=0)
        store.set("release", who, value=0)
        host.transfer(STAKE, who, amount)
        self.emit(host, "Withdrawn", account=who, amount=amount)
        return amount

    def setRoles(self, host: Host, roles: int) -> None:
        if roles & ~int(ALL_ROLES):  # int: ~ of an IntFlag keeps only its known bits
            raise Revert("Stake.setRoles: unknown role bits")
        store = self.storage(host)
        who = host.caller
        staked = store.get("staked", who)
        if roles & Role.VALIDATOR and staked < self.config.min_validator_stake:
            raise Revert("Stake.setRoles: stake below the validator minimum")
        if roles & Role.PROVIDER:
            if staked < self.config.min_provider_stake:
                raise Revert("Stake.setRoles: stake below the provider minimum")
            if store.get("memory", who) == 0:
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
        store = self.storage(host)
        who = host.caller
        store.set("device", who, value=device_kind)
        store.set("memory", who, value=memory_mib)
        store.set("score", who, value=score)
        store.set_bytes("endpoint", who, value=encoded)
        self.emit(
            host, "ResourcesRegistered", account=who, deviceKind=device_kind, memoryMiB=memory_mib,
            throughputScore=score, endpoint=endpoint,
        )

    # -- views --

    def stakeOf(self, host: Host, who: bytes) -> tuple[int, int, int, int, int]:
        store = self.storage(host)
        return (
            store.get("staked", who), store.get("locked", who), store.get("unbonding", who),
            store.get("release", who), store.get("roles", who),
        )

    def freeStake(self, host: Host, who: bytes) -> int:
        return self.free_stake(host, who)

    def resourcesOf(self, host: Host, who: bytes) -> tuple[int, int, int, str]:
        store = self.storage(host)
        return (
            store.get("device", who), store.get("memory", who), store.get("score", who),
            store.get_bytes("endpoint", who).decode(errors="replace"),
        )

    def validators(self, host: Host) -> list[bytes]:
        return list(AddressSet(self.storage(host), "validators"))

    def providers(self, host: Host) -> list[bytes]:
        return list(AddressSet(self.storage(host), "providers"))

    def totalStaked(self, host: Host) -> int:
        return self.storage(host).get("total")

    def params(self, host: Host) -> tuple[int, int, int]:
        c = self.config
        return c.min_validator_stake, c.min_provider_stake, c.unbonding_delay

    # -- internal interface for Task, Bid and Slashing (plain calls within one transaction) --

    def free_stake(self, host: Host, who: bytes) -> int:
        store = self.storage(host)
        return store.get("staked", who) - store.get("locked", who)

    def lock(self, host: Host, who: bytes, amount: int) -> None:
        """Pledge free stake to a bid or a council seat."""
        if amount > self.free_stake(host, who):
            raise Revert("Stake: insufficient free stake")
        locked = self.storage(host).add("locked", who, delta=amount)
        self.emit(host, "StakeLocked", account=who, amount=amount, locked=locked)

    def unlock(self, host: Host, who: bytes, amount: int) -> None:
        store = self.storage(host)
        amount = min(amount, store.get("locked", who))  # a slash may already have consumed the pledge
        locked = store.add("locked", who, delta=-amount)
        self.emit(host, "StakeUnlocked", account=who, amount=amount, locked=locked)

    def slash(self, host: Host, who: bytes, amount: int, beneficiary: bytes, reward_bps: int) -> int:
        """Take up to `amount` from active then unbonding stake; `reward_bps` of it goes to
        `beneficiary`, the rest is burned. An account left below a role minimum loses the role."""
        if not 0 <= reward_bps <= BPS:
            raise Revert("Stake: reward share out of range")
        store = self.storage(host)
        staked, unbonding = store.get("staked", who), store.get("unbonding", who)
        taken = min(amount, staked + unbonding)
        from_staked = min(taken, staked)
        store.set("staked", who, value=staked - from_staked)
        store.add("total", delta=-from_staked)
        store.set("unbonding", who, value=unbonding - (taken - from_staked))
        if unbonding and unbonding == taken - from_staked:
            store.set("release", who, value=0)  # nothing left unbonding
        locked = store.get("locked", who)
        if locked > staked - from_staked:
            store.set("locked", who, value=staked - from_staked)
        reward = taken * reward_bps // BPS
        if reward:
            host.transfer(STAKE, beneficiary, reward)
        host.burn(STAKE, taken - reward)
        self.emit(
            host, "StakeSlashed", account=who, amount=taken, burned=taken - reward, rewarded=reward,
            beneficiary=beneficiary,
        )
        roles = store.get("roles", who)
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
        store.set("roles", who, value=roles)
        for bit, name in ((Role.VALIDATOR, "validators"), (Role.PROVIDER, "providers")):
            members = AddressSet(store, name)
            if roles & bit:
                members.add(who)
            else:
                members.remove(who)
        self.emit(host, "RolesChanged", account=who, roles=roles)

