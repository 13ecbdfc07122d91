"""Councils of a batch task's checkpoints (DESIGN.md §6, steps 2-4), as a part of Task.

The next block's system call draws c providers by free stake from the RANDAO mix; members commit and
reveal within their windows; the tally counts votes (under `exact`, only those with the majority's
state hash at the drawn step) and accepts, rejects or calls a fresh council.
"""

from __future__ import annotations

from collections import Counter

from eth_abi import encode
from eth_hash.auto import keccak

from ogpu_node.contracts.checkpoints import exact_result_commitment, subject, verdict_commitment
from ogpu_node.contracts.host import Host, Revert
from ogpu_node.contracts.storage import AddressSet, Storage
from ogpu_node.types.protocol import (
    CancelReason,
    DeadlineKind,
    Equivalence,
    Outcome,
    Penalty,
    Phase,
    Role,
    TaskState,
)


class CouncilProtocol:
    """Mixed into Task beside CheckpointProtocol; uses its storage, queue, stake and slashing."""

    def _council(self, store: Storage, task_id: int, k: int, round_: int) -> AddressSet:
        return AddressSet(store, f"council/{task_id}/{k}/{round_}")

    def _release_council(self, host: Host, store: Storage, task_id: int, k: int) -> None:
        """Unlock the seats of checkpoint k's current council, if one is sitting."""
        if store.get("ck", task_id, k, "phase") not in (Phase.COUNCIL_COMMIT, Phase.REVEAL):
            return
        for member in self._council(store, task_id, k, store.get("ck", task_id, k, "round")):
            self.stake.unlock(host, member, self.config.council_seat_stake)
        store.set("ck", task_id, k, "phase", value=Phase.COMMITTED)

    def _require_member(self, store: Storage, host: Host, task_id: int, k: int) -> int:
        round_ = store.get("ck", task_id, k, "round")
        if host.caller not in self._council(store, task_id, k, round_):
            raise Revert("Task: caller is not on this checkpoint's council")
        return round_

    def commitResult(self, host: Host, task_id: int, k: int, commitment: bytes) -> None:
        store = self._existing(host, task_id)
        round_ = self._require_member(store, host, task_id, k)
        if store.get("ck", task_id, k, "phase") != Phase.COUNCIL_COMMIT or host.timestamp >= store.get(
            "ck", task_id, k, "phaseEnds"
        ):
            raise Revert("Task: the council's commit window is closed")
        if self._term(store, task_id, "equivalence") != Equivalence.EXACT and not store.get("ck", task_id, k, "revealed"):
            raise Revert("Task: the executor has not revealed this checkpoint yet")
        if store.get("vote", task_id, k, round_, host.caller, "commitment"):
            raise Revert("Task: result already committed")
        store.set("vote", task_id, k, round_, host.caller, "commitment", value=int.from_bytes(commitment, "big"))
        count = store.add("ck", task_id, k, "commits", delta=1)
        self.emit(host, "ResultCommitted", taskId=task_id, k=k, member=host.caller)
        if count == len(self._council(store, task_id, k, round_)):
            self._open_reveals(host, store, task_id, k, round_)  # all in: the window closes early

    def revealResult(
        self, host: Host, task_id: int, k: int, verdict: bool, result_hash: bytes, step_hash: bytes,
        salt: bytes, fetched: bool,
    ) -> None:
        store = self._existing(host, task_id)
        round_ = self._require_member(store, host, task_id, k)
        member = host.caller
        if store.get("ck", task_id, k, "phase") != Phase.REVEAL or host.timestamp >= store.get(
            "ck", task_id, k, "phaseEnds"
        ):
            raise Revert("Task: the reveal window is closed")
        if not store.get("ck", task_id, k, "revealed"):
            raise Revert("Task: the executor has not revealed this checkpoint yet")
        committed = store.get("vote", task_id, k, round_, member, "commitment")
        if not committed:
            raise Revert("Task: no result committed")
        if store.get("vote", task_id, k, round_, member, "revealed"):
            raise Revert("Task: result already revealed")
        if self._term(store, task_id, "equivalence") == Equivalence.EXACT:
            expected = exact_result_commitment(task_id, k, member, result_hash, step_hash, salt)
            verdict = result_hash == store.get("ck", task_id, k, "hash").to_bytes(32, "big")
        else:
            expected = verdict_commitment(task_id, k, member, verdict, result_hash, salt)
        if expected != committed.to_bytes(32, "big"):
            raise Revert("Task: reveal does not match the commitment")
        vote = ("vote", task_id, k, round_, member)
        store.set(*vote, "revealed", value=1)
        store.set(*vote, "verdict", value=int(verdict))
        store.set(*vote, "step", value=int.from_bytes(step_hash, "big"))
        store.set(*vote, "fetched", value=int(fetched))
        reveals = store.add("ck", task_id, k, "reveals", delta=1)
        self.emit(host, "ResultRevealed", taskId=task_id, k=k, member=member, verdict=verdict)
        if reveals == store.get("ck", task_id, k, "commits"):
            self._tally_if_complete(host, store, task_id, k)

    def draw_council(self, host: Host, task_id: int, k: int, round_: int) -> None:
        store = self.storage(host)
        if store.get("state", task_id) not in (TaskState.RUNNING, TaskState.DISPUTED):
            return
        if store.get("ck", task_id, k, "phase") != Phase.COMMITTED or store.get("ck", task_id, k, "round") != round_:
            return
        size = self._term(store, task_id, "council_size")
        seed = keccak(host.mix_hash + encode(["uint256", "uint16", "uint8"], [task_id, k, round_]))
        members = self._sample(host, store, task_id, size, seed)
        if len(members) < size:
            self.cancel(host, task_id, CancelReason.TOO_FEW_CANDIDATES)
            return
        council = self._council(store, task_id, k, round_)
        history = AddressSet(store, f"history/{task_id}")
        for member in members:
            self.stake.lock(host, member, self.config.council_seat_stake)
            council.add(member)
            history.add(member)
        ends = host.timestamp + self._term(store, task_id, "segment_window")
        step_index = int.from_bytes(keccak(seed + b"step")[:8], "big")
        store.set("ck", task_id, k, "phase", value=Phase.COUNCIL_COMMIT)
        store.set("ck", task_id, k, "phaseEnds", value=ends)
        store.set("ck", task_id, k, "step", value=step_index)
        store.set("ck", task_id, k, "commits", value=0)
        store.set("ck", task_id, k, "reveals", value=0)
        self.queue(host).schedule(ends, DeadlineKind.CLOSE_COMMITS, subject(task_id, k, round_))
        self.emit(
            host, "CouncilDrawn", taskId=task_id, k=k, round=round_, members=members, commitDeadline=ends,
            stepIndex=step_index,
        )

    def _sample(self, host: Host, store: Storage, task_id: int, size: int, seed: bytes) -> list[bytes]:
        """`size` distinct qualifying providers, drawn with probability proportional to free stake."""
        client = store.get_address("client", task_id)
        executor = store.get_address("executor", task_id)
        min_memory = self._term(store, task_id, "min_memory_mib")
        mask = self._term(store, task_id, "device_mask")
        seat = self.config.council_seat_stake
        candidates: list[tuple[bytes, int]] = []
        for provider in self.stake.providers(host):
            if provider in (client, executor):
                continue
            device, memory, _, _ = self.stake.resourcesOf(host, provider)
            if memory < min_memory or (mask and not mask >> device & 1):
                continue
            if not self.stake.stakeOf(host, provider)[4] & Role.PROVIDER:
                continue
            free = self.stake.free_stake(host, provider)
            if free >= seat:
                candidates.append((provider, free))
        chosen: list[bytes] = []
        for i in range(min(size, len(candidates))):
            total = sum(weight for _, weight in candidates)
            point = int.from_bytes(keccak(seed + i.to_bytes(32, "big")), "big") % total
            for index, (provider, weight) in enumerate(candidates):
                if point < weight:
                    chosen.append(provider)
                    del candidates[index]
                    break
                point -= weight
        return chosen

    def close_commits(self, host: Host, task_id: int, k: int, round_: int) -> None:
        store = self.storage(host)
        if store.get("ck", task_id, k, "phase") == Phase.COUNCIL_COMMIT and store.get("ck", task_id, k, "round") == round_:
            self._open_reveals(host, store, task_id, k, round_)

    def _open_reveals(self, host: Host, store: Storage, task_id: int, k: int, round_: int) -> None:
        ends = host.timestamp + self.config.reveal_window
        store.set("ck", task_id, k, "phase", value=Phase.REVEAL)
        store.set("ck", task_id, k, "phaseEnds", value=ends)
        self.queue(host).schedule(ends, DeadlineKind.CLOSE_REVEALS, subject(task_id, k, round_))
        self.emit(host, "RevealPhase", taskId=task_id, k=k, round=round_, revealDeadline=ends)

    def close_reveals(self, host: Host, task_id: int, k: int, round_: int) -> None:
        store = self.storage(host)
        if store.get("ck", task_id, k, "phase") != Phase.REVEAL or store.get("ck", task_id, k, "round") != round_:
            return
        ends = store.get("ck", task_id, k, "phaseEnds")
        if host.timestamp < ends:  # the executor's late reveal extended the window
            self.queue(host).schedule(ends, DeadlineKind.CLOSE_REVEALS, subject(task_id, k, round_))
            return
        self._tally(host, store, task_id, k, round_)

    def _tally_if_complete(self, host: Host, store: Storage, task_id: int, k: int) -> None:
        if store.get("ck", task_id, k, "phase") != Phase.REVEAL or not store.get("ck", task_id, k, "revealed"):
            return
        round_ = store.get("ck", task_id, k, "round")
        size = len(self._council(store, task_id, k, round_))
        if store.get("ck", task_id, k, "reveals") == size:
            self._tally(host, store, task_id, k, round_)

    def _tally(self, host: Host, store: Storage, task_id: int, k: int, round_: int) -> None:
        council = list(self._council(store, task_id, k, round_))
        size = len(council)
        revealed = [m for m in council if store.get("vote", task_id, k, round_, m, "revealed")]
        if store.get("ck", task_id, k, "revealed"):
            absent = [m for m in council if m not in revealed]
        elif self._term(store, task_id, "equivalence") == Equivalence.EXACT:
            # Without the executor's reveal nobody could reveal; only a missing commit is the member's fault.
            absent = [m for m in council if not store.get("vote", task_id, k, round_, m, "commitment")]
        else:
            absent = []  # under allclose nobody could even commit
        self._release_council(host, store, task_id, k)
        client = store.get_address("client", task_id)
        for member in absent:
            self.slashing.penalize(host, member, task_id, Penalty.MISSED_VOTE, self.config.missed_vote_penalty, client)
        if not store.get("ck", task_id, k, "revealed"):
            store.set("ck", task_id, k, "phase", value=Phase.NONE)
            self._executor_failed(host, store, task_id, k, Penalty.MISSED_CHECKPOINT, beneficiaries=[])
            return
        counted = revealed
        if self._term(store, task_id, "equivalence") == Equivalence.EXACT and revealed:
            # A vote counts only with the majority's state hash at the drawn step: copying a
            # published checkpoint hash without computing does not pass.
            steps = Counter(store.get("vote", task_id, k, round_, m, "step") for m in revealed)
            (top, top_count), *rest = steps.most_common()
            if rest and rest[0][1] == top_count:
                counted = []
            else:
                counted = [m for m in revealed if store.get("vote", task_id, k, round_, m, "step") == top]
        yes = [m for m in counted if store.get("vote", task_id, k, round_, m, "verdict")]
        no = [m for m in counted if not store.get("vote", task_id, k, round_, m, "verdict")]
        attested = [m for m in counted if store.get("vote", task_id, k, round_, m, "fetched")]
        disputed = store.get("state", task_id) == TaskState.DISPUTED
        if 3 * len(yes) >= 2 * size and 3 * len(attested) >= 2 * size:
            if disputed:
                self._settle_dispute(host, store, task_id, executor_lost=False, majority=yes)
            else:
                self._accept(host, store, task_id, k, yes)
        elif 3 * len(no) >= 2 * size:
            if disputed:
                self._settle_dispute(host, store, task_id, executor_lost=True, majority=no)
            else:
                store.set("ck", task_id, k, "phase", value=Phase.NONE)
                self._executor_failed(host, store, task_id, k, Penalty.REJECTED, beneficiaries=no)
        else:
            self.emit(host, "CheckpointInconclusive", taskId=task_id, k=k, round=round_)
            if store.add("ck", task_id, k, "inconclusive", delta=1) >= self.config.max_inconclusive_rounds:
                if disputed:  # no fault proven either way: settle as confirmed
                    self._settle_task(host, task_id, Outcome.CONFIRMED)
                else:
                    self.cancel(host, task_id, CancelReason.INCONCLUSIVE)
                return
            store.set("ck", task_id, k, "round", value=round_ + 1)
            store.set("ck", task_id, k, "phase", value=Phase.COMMITTED)
            self._schedule_draw(host, store, task_id, k)
