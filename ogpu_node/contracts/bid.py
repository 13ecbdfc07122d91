"""Bid: providers' offers for batch tasks (DESIGN.md §6).

One live bid per provider and task; a re-bid must lower the price and replaces the old one. A bid
locks `collateral_bps` of its price, and at least the task's collateral floor, from the provider's free
stake until the task assigns (losers are unlocked then) or is cancelled. Bidding closes when Task applies the halting rule H.
"""

from __future__ import annotations

from ogpu_node.config import ProtocolParams
from ogpu_node.contracts.addresses import BID
from ogpu_node.contracts.base import NativeContract
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.layout import BidEntry, BidSequence
from ogpu_node.contracts.stake import Stake
from ogpu_node.contracts.storage import AddressSet
from ogpu_node.types.protocol import BPS, Role
from ogpu_node.types.records import BidsRecord


class Bid(NativeContract):
    NAME = "Bid"
    ADDRESS = BID

    def __init__(self, params: ProtocolParams, stake: Stake) -> None:
        super().__init__()
        self.config = params
        self.stake = stake
        self.task = None  # set by Task: the two call each other within one transaction

    def _bidders(self, host: Host, task_id: int) -> AddressSet:
        return AddressSet(self.storage(host), f"bidders/{task_id}")

    def collateral_for(self, price: int, floor: int) -> int:
        """What a bid at `price` locks on a task whose collateral floor is `floor`."""
        return max(price * self.config.collateral_bps // BPS, floor)

    def collateralFor(self, host: Host, task_id: int, price: int) -> int:
        return self.collateral_for(price, self.task.collateral_floor(host, task_id))

    def placeBid(self, host: Host, task_id: int, price: int) -> None:
        task = self.task.open_for_bids(host, task_id)
        provider = host.caller
        if provider == task.client:
            raise Revert("Bid: a client cannot bid on its own task")
        if not self.stake.stakeOf(host, provider).roles & Role.PROVIDER:
            raise Revert("Bid: caller is not a staked provider")
        if price == 0:
            raise Revert("Bid: price is zero")
        if price > task.max_payment:
            raise Revert("Bid: price above the task's maximum payment")
        store = self.storage(host)
        bidders = self._bidders(host, task_id)
        entry = BidEntry(store, task_id, provider)
        if provider in bidders:
            if price >= entry.price:
                raise Revert("Bid: a new bid must lower the price")
            self.stake.unlock(host, provider, entry.collateral)
        else:
            bidders.add(provider)
        collateral = self.collateral_for(price, task.collateral_floor)
        self.stake.lock(host, provider, collateral)
        entry.price = price
        entry.collateral = collateral
        # Ties go to the earliest bid: a re-bid is a new offer and takes a new place.
        counter = BidSequence(store)
        sequence = counter.sequence + 1
        counter.sequence = sequence
        entry.order = sequence
        self.emit(host, "BidPlaced", taskId=task_id, provider=provider, price=price, collateral=collateral)
        if task.first_n and len(bidders) >= task.first_n:
            self.task.close_bidding(host, task_id)

    def subscribe(self, host: Host, task_id: int) -> None:
        client, min_memory, mask, profile = self.task.open_for_subscription(host, task_id)
        provider = host.caller
        if provider == client:
            raise Revert("Bid: a client cannot subscribe to its own task")
        if not self.stake.stakeOf(host, provider).roles & Role.PROVIDER:
            raise Revert("Bid: caller is not a staked provider")
        resources = self.stake.resourcesOf(host, provider)
        if resources.memory_mib < min_memory or (mask and not mask >> resources.device_kind & 1):
            raise Revert("Bid: provider resources do not meet the task's terms")
        if not self.stake.honours(host, provider, profile):
            raise Revert("Bid: provider has not registered the task's numeric profile")
        subscribers = self.subscribers(host, task_id)
        if provider in subscribers:
            raise Revert("Bid: already subscribed")
        self.stake.lock(host, provider, self.config.council_seat_stake)
        subscribers.add(provider)
        self.emit(host, "Subscribed", taskId=task_id, provider=provider, stake=self.config.council_seat_stake)
        self.task.membership_changed(host, task_id)

    def unsubscribe(self, host: Host, task_id: int) -> None:
        if host.caller not in self.subscribers(host, task_id):
            raise Revert("Bid: not subscribed")
        self.remove_subscriber(host, task_id, host.caller)

    def subscribersOf(self, host: Host, task_id: int) -> list[bytes]:
        return list(self.subscribers(host, task_id))

    def subscribers(self, host: Host, task_id: int) -> AddressSet:
        return AddressSet(self.storage(host), f"subscribers/{task_id}")

    def remove_subscriber(self, host: Host, task_id: int, provider: bytes) -> None:
        """`provider` leaves the stream, by its own choice or for a proved fault (Slashing): its seat's
        stake is free again and the stream re-forms, or is interrupted below c."""
        self._release_seat(host, task_id, provider)
        self.task.membership_changed(host, task_id)

    def release_subscribers(self, host: Host, task_id: int) -> None:
        """The stream closed: every subscriber's stake is free again."""
        for provider in list(self.subscribers(host, task_id)):
            self._release_seat(host, task_id, provider)

    def _release_seat(self, host: Host, task_id: int, provider: bytes) -> None:
        self.stake.unlock(host, provider, self.config.council_seat_stake)
        self.subscribers(host, task_id).remove(provider)
        self.emit(host, "Unsubscribed", taskId=task_id, provider=provider)

    def bidsOf(self, host: Host, task_id: int) -> BidsRecord:
        store = self.storage(host)
        providers = list(self._bidders(host, task_id))
        return BidsRecord(providers, [BidEntry(store, task_id, p).price for p in providers])

    # -- internal interface for Task --

    def ranked(self, host: Host, task_id: int) -> list[tuple[int, int, bytes]]:
        """(price, order, provider) of every live bid, best first."""
        store = self.storage(host)
        bids = ((BidEntry(store, task_id, p), p) for p in self._bidders(host, task_id))
        return sorted((entry.price, entry.order, p) for entry, p in bids)

    def release(self, host: Host, task_id: int, keep: bytes | None) -> None:
        """Close the task's bidding: unlock every bid's collateral but `keep`'s (the executor's)."""
        store = self.storage(host)
        count = 0
        for provider in list(self._bidders(host, task_id)):
            count += 1
            if provider != keep:
                self.stake.unlock(host, provider, BidEntry(store, task_id, provider).collateral)
        self.emit(host, "BidsClosed", taskId=task_id, count=count)
