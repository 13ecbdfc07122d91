"""The client app: upload blobs, submit a batch task from a prescription, read its state, confirm or
dispute it. It talks to a node over JSON-RPC (web3.py) and the blob HTTP endpoint only, and signs
every transaction locally with the client's key (the node holds no unlocked keys)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.logs import DISCARD

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.files import atomic_file
from ogpu_node.types.merkle import CHUNK_SIZE, MerkleHasher, merkle_root
from ogpu_node.types.prescription import (
    DEVICE_KINDS,
    InvalidPrescription,
    Prescription,
    check_against_chain,
    prescription_hash,
    to_terms,
)

__all__ = [
    "CANCEL_REASONS", "OUTCOMES", "PHASE_NAMES", "STATE_NAMES", "CheckpointHistory", "Client", "ClientError",
    "ExecutorChange", "LossPoint", "TaskHistory", "TaskStatus", "Verdict", "build_history", "checkpoint_header",
    "extract_weights", "file_blob_hash", "mean_recent_loss",
]

TASK_ADDRESS = Web3.to_checksum_address("0x0000000000000000000000000000000000001001")
BID_ADDRESS = Web3.to_checksum_address("0x0000000000000000000000000000000000001002")
STAKE_ADDRESS = Web3.to_checksum_address("0x0000000000000000000000000000000000001000")
ROLE_PROVIDER = 2  # Stake's role bit
KIND_BATCH = 0
STATE_NAMES = {
    0: "None", 1: "Bidding", 2: "Running", 3: "Cancelled", 4: "AwaitingConfirmation", 5: "Disputed",
    6: "Settled", 7: "Forming", 8: "Active", 9: "Interrupted", 10: "Closing",
}
PHASE_NAMES = {0: "None", 1: "Committed", 2: "CouncilCommit", 3: "Reveal", 4: "Accepted"}
_MIN_DEPOSIT = re.compile(r"safety deposit of at least (\d+) wei")
_RECEIPT_TIMEOUT_S = 60.0


class ClientError(Exception):
    """A one-line, user-facing failure (unreachable node, revert reason, rejected upload ...)."""


def contract_abi(name: str) -> list[dict[str, Any]]:
    raw = json.loads((ABI_DIR / f"{name}.json").read_text())
    return raw["abi"] if isinstance(raw, dict) else raw


def file_blob_hash(path: Path) -> bytes:
    """The blob hash (Merkle root, docs/rpc.md "Blobs") of a file, read in chunks."""
    hasher = MerkleHasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.digest()


@dataclass(frozen=True)
class CheckpointStatus:
    k: int
    phase: str
    round: int
    phase_ends: int
    council: tuple[str, ...]


@dataclass(frozen=True)
class TaskStatus:
    task_id: int
    client: str
    kind: int
    state: str
    prescription_hash: bytes
    escrow: int
    deposit: int
    executor: str | None
    price: int
    bid_deadline: int
    assigned_at: int
    checkpoints: int
    bids: tuple[tuple[str, int], ...]
    accepted: int
    committed: int
    paid: int
    confirm_deadline: int
    checkpoint: CheckpointStatus | None = field(default=None)


class Client:
    """A client of one node at ``rpc_url``; ``private_key`` is needed only to send transactions."""

    def __init__(self, rpc_url: str, private_key: bytes | None = None, *, timeout: float = 30.0) -> None:
        self.rpc_url = rpc_url.rstrip("/")
        self.timeout = timeout
        self.w3 = Web3(Web3.HTTPProvider(self.rpc_url, request_kwargs={"timeout": timeout}))
        self.account = Account.from_key(private_key) if private_key is not None else None
        self.task = self.w3.eth.contract(address=TASK_ADDRESS, abi=contract_abi("Task"))
        self.bid = self.w3.eth.contract(address=BID_ADDRESS, abi=contract_abi("Bid"))
        self.stake = self.w3.eth.contract(address=STAKE_ADDRESS, abi=contract_abi("Stake"))
        self._nonce_lock = threading.Lock()
        self._chain_id: int | None = None

    # -- transport ------------------------------------------------------------------------------

    def guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` and turn transport and node failures into one-line ClientErrors."""
        try:
            return fn(*args, **kwargs)
        except ContractLogicError as exc:
            raise ClientError(f"{what}: reverted: {_reason(exc)}") from None
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the node at {self.rpc_url}") from None
        except requests.Timeout:
            raise ClientError(f"{what}: the node at {self.rpc_url} did not answer in time") from None
        except requests.RequestException as exc:
            raise ClientError(f"{what}: {exc}") from None
        except TimeExhausted:
            raise ClientError(f"{what}: not mined within {_RECEIPT_TIMEOUT_S:g}s") from None
        except (Web3Exception, ValueError) as exc:
            raise ClientError(f"{what}: {_reason(exc)}") from None

    # -- blobs ----------------------------------------------------------------------------------

    def upload_blob(self, path: Path) -> tuple[bytes, int]:
        """Stream ``path`` to ``PUT /blobs/<hash>`` (hash computed locally, checked by the node)."""
        path = Path(path)
        try:
            expected = file_blob_hash(path)
            size = path.stat().st_size
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None

        def put() -> requests.Response:
            with open(path, "rb") as body:  # a file object: requests streams it with Content-Length
                return self._put_blob(expected, body)

        return self._check_upload(path.name, expected, size, self.guard(f"upload of {path.name}", put))

    def upload_bytes(self, name: str, data: bytes) -> tuple[bytes, int]:
        """Upload ``data`` as a blob (``name`` is for messages only)."""
        expected = merkle_root(data)
        response = self.guard(f"upload of {name}", self._put_blob, expected, data)
        return self._check_upload(name, expected, len(data), response)

    def _put_blob(self, expected: bytes, body: Any) -> requests.Response:
        return requests.put(f"{self.rpc_url}/blobs/0x{expected.hex()}", data=body, timeout=self.timeout,
                            headers={"Content-Type": "application/octet-stream"})

    def _check_upload(self, name: str, expected: bytes, size: int, response: requests.Response) -> tuple[bytes, int]:
        if response.status_code not in (200, 201):
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text.strip() or response.reason
            raise ClientError(f"upload of {name} refused ({response.status_code}): {detail}")
        answer = response.json()
        if answer.get("hash", "").lower() != "0x" + expected.hex() or answer.get("size") != size:
            raise ClientError(f"upload of {name}: the node stored {answer}, expected 0x{expected.hex()}")
        return expected, size

    # -- transactions ---------------------------------------------------------------------------

    def _address(self) -> str:
        if self.account is None:
            raise ClientError("a key is needed to send transactions")
        return self.account.address

    def send(self, what: str, call: Any, value: int = 0, min_gas: int = 0) -> Any:
        """Sign ``call`` locally, send it, wait for its receipt; ClientError (one line) if it reverts.
        ``min_gas`` is a floor on the gas limit for calls whose cost the estimate cannot foresee.
        Safe from several threads: nonces are taken under a lock, receipts awaited outside it."""
        sender = self._address()

        def submit() -> bytes:
            if self._chain_id is None:
                self._chain_id = self.w3.eth.chain_id
            params = {"from": sender, "value": value}
            # Headroom over the estimate: transactions landing in the same block (another bid on the
            # same task) can make this one touch fresh storage and cost more than estimated alone.
            gas = call.estimate_gas(params)
            tx = call.build_transaction({
                **params, "gas": max(min_gas, gas * 5 // 4 + 20_000), "chainId": self._chain_id,
                "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
            })
            return self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)  # type: ignore[union-attr]

        with self._nonce_lock:
            tx_hash = self.guard(what, submit)
        receipt = self.guard(what, self.w3.eth.wait_for_transaction_receipt, tx_hash, timeout=_RECEIPT_TIMEOUT_S,
                             poll_latency=0.2)
        if receipt["status"] != 1:
            raise ClientError(f"{what}: transaction 0x{bytes(receipt['transactionHash']).hex()} reverted")
        return receipt

    def minimum_deposit(self, p: Prescription) -> int:
        """The safety deposit Task requires for ``p``, asked of the chain itself: a dry run with no deposit
        either passes (a zero-deposit chain) or reverts naming the minimum."""
        sender = self._address()
        call = self.task.functions.submitTask(prescription_hash(p), KIND_BATCH, to_terms(p))
        try:
            self.guard("submitTask", call.call, {"from": sender, "value": p.I.max_payment})
        except ClientError as exc:
            match = _MIN_DEPOSIT.search(str(exc))
            if match is None:
                raise
            return int(match.group(1))
        return 0

    def register_provider(self, device: str, memory_mib: int, score: int, endpoint: str = "",
                          stake: int | None = None, min_gas: int = 0) -> int:
        """Stake up to ``stake`` wei (default: the chain's provider minimum), register resources and
        take the provider role, as Stake requires in that order; return the wei newly staked."""
        fns = self.stake.functions
        staked, _locked, _unbonding, _release, roles = self.guard("stakeOf", fns.stakeOf(self._address()).call)
        wanted = self.guard("params", fns.params().call)[1] if stake is None else stake
        added = max(0, wanted - staked)
        if added:
            self.send("stake", fns.stake(), value=added, min_gas=min_gas)
        self.send("registerResources", fns.registerResources(DEVICE_KINDS.index(device), memory_mib, score, endpoint),
                  min_gas=min_gas)
        if not roles & ROLE_PROVIDER:
            self.send("setRoles", fns.setRoles(roles | ROLE_PROVIDER), min_gas=min_gas)
        return added

    def qualifying_providers(self, p: Prescription) -> int:
        """Providers other than this client whose registered resources meet ``p``'s hardware terms:
        the pool a council is drawn from (the executor, one of them, never sits on its own)."""
        me = self.account.address.lower() if self.account is not None else None
        mask = p.I.hardware.device_mask
        count = 0
        for provider in self.guard("providers", self.stake.functions.providers().call):
            if provider.lower() == me:
                continue
            roles = self.guard("stakeOf", self.stake.functions.stakeOf(provider).call)[4]
            device, memory, _score, _endpoint = self.guard("resourcesOf", self.stake.functions.resourcesOf(provider).call)
            if roles & ROLE_PROVIDER and memory >= p.I.hardware.min_memory_mib and (not mask or mask >> device & 1):
                count += 1
        return count

    def check_against_chain(self, p: Prescription) -> None:
        """What only the chain can refuse before any upload or payment: a council larger than the
        qualifying providers (ClientError naming `prescription.I.council_size`)."""
        try:
            check_against_chain(p, self.qualifying_providers(p), p.I.max_payment)
        except InvalidPrescription as exc:
            raise ClientError(str(exc)) from None

    def submit_task(self, p: Prescription, deposit: int | None = None) -> tuple[int, int]:
        """Submit batch task ``p`` with value = max payment + deposit (default: the chain's minimum);
        return (task id, deposit)."""
        if p.kind != "batch":
            raise ClientError("prescription.kind: only batch tasks can be submitted with `task submit`")
        self.check_against_chain(p)
        if deposit is None:
            deposit = self.minimum_deposit(p)
        # Providers fetch the document by the hash the chain records.
        self.upload_bytes("the prescription", p.canonical_json())
        call = self.task.functions.submitTask(prescription_hash(p), KIND_BATCH, to_terms(p))
        receipt = self.send("submitTask", call, value=p.I.max_payment + deposit)
        events = self.task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)
        if not events:
            raise ClientError("submitTask: no TaskSubmitted event in the receipt")
        return int(events[0]["args"]["taskId"]), deposit

    def confirm(self, task_id: int) -> Any:
        return self.send("confirm", self.task.functions.confirm(task_id))

    def dispute(self, task_id: int) -> Any:
        return self.send("dispute", self.task.functions.dispute(task_id))

    # -- reads ----------------------------------------------------------------------------------

    def status(self, task_id: int) -> TaskStatus:
        self._require_task(task_id)
        fns = self.task.functions
        (client, kind, state, phash, escrow, deposit, executor, price, _seed, bid_deadline,
         assigned_at) = self.guard("getTask", fns.getTask(task_id).call)
        terms = self.guard("getTerms", fns.getTerms(task_id).call)
        checkpoints = int(terms[3])
        providers, prices = self.guard("bidsOf", self.bid.functions.bidsOf(task_id).call)
        accepted, committed, paid, _run_start, _run_base, _gen, confirm_deadline = self.guard(
            "getProgress", fns.getProgress(task_id).call
        )
        checkpoint = None
        if kind == KIND_BATCH and accepted < checkpoints and state not in (0, 1, 3, 6):
            k = accepted + 1
            phase, rnd, _commitment, _ckpt, phase_ends, council, _step = self.guard(
                "getCheckpoint", fns.getCheckpoint(task_id, k).call
            )
            checkpoint = CheckpointStatus(k, PHASE_NAMES.get(phase, str(phase)), rnd, phase_ends, tuple(council))
        no_executor = int(executor, 16) == 0
        return TaskStatus(
            task_id=task_id, client=client, kind=kind, state=STATE_NAMES.get(state, str(state)),
            prescription_hash=bytes(phash), escrow=escrow, deposit=deposit,
            executor=None if no_executor else executor, price=price, bid_deadline=bid_deadline,
            assigned_at=assigned_at, checkpoints=checkpoints, bids=tuple(zip(providers, prices, strict=True)),
            accepted=accepted, committed=committed, paid=paid, confirm_deadline=confirm_deadline,
            checkpoint=checkpoint,
        )

    def _require_task(self, task_id: int) -> None:
        count = self.guard("taskCount", self.task.functions.taskCount().call)
        if not 1 <= task_id <= count:
            raise ClientError(f"task {task_id} does not exist (tasks: {count})")

    def checkpoint_history(self, task_id: int) -> TaskHistory:
        """Every checkpoint's verdicts, reveals and payments, the executor changes and the task's end, from
        the Task logs carrying ``task_id`` (read back from the head until its TaskSubmitted)."""
        self._require_task(task_id)
        checkpoints = int(self.guard("getTerms", self.task.functions.getTerms(task_id).call)[3])
        events = {self.task.events[name].topic: self.task.events[name]() for name in _HISTORY_EVENTS}
        submitted = self.task.events["TaskSubmitted"].topic
        task_topic = "0x" + task_id.to_bytes(32, "big").hex()
        logs: list[Any] = []
        last = self.guard("eth_blockNumber", lambda: self.w3.eth.block_number)
        while last >= 0:
            first = max(0, last - _LOG_WINDOW + 1)
            batch = self.guard("eth_getLogs", self.w3.eth.get_logs, {
                "address": TASK_ADDRESS, "fromBlock": first, "toBlock": last, "topics": [None, task_topic]})
            logs[:0] = batch
            if any("0x" + bytes(log["topics"][0]).hex() == submitted for log in batch):
                break
            last = first - 1
        decoded = []
        for log in logs:
            event = events.get("0x" + bytes(log["topics"][0]).hex())
            if event is not None:
                data = event.process_log(log)
                decoded.append((data["event"], dict(data["args"]), int(log["blockNumber"])))
        return build_history(task_id, checkpoints, decoded)

    def _get_blob(self, blob_hash: bytes) -> requests.Response:
        response = requests.get(f"{self.rpc_url}/blobs/0x{blob_hash.hex()}", stream=True, timeout=self.timeout)
        if response.status_code != 200:
            response.close()
            if response.status_code == 404:
                raise ClientError(f"blob 0x{blob_hash.hex()} is not on the node at {self.rpc_url}")
            raise ClientError(f"download of blob 0x{blob_hash.hex()}: HTTP {response.status_code}")
        return response

    def fetch_blob(self, blob_hash: bytes, max_bytes: int = 1 << 31) -> bytes:
        """Blob ``blob_hash`` in memory, hashed while it streams; ClientError if it is missing, larger
        than ``max_bytes`` or does not hash to its name."""
        def fetch() -> bytes:
            with self._get_blob(blob_hash) as response:
                hasher, parts = MerkleHasher(), []
                for chunk in response.iter_content(CHUNK_SIZE):
                    hasher.update(chunk)
                    parts.append(chunk)
                    if hasher.size > max_bytes:
                        raise ClientError(f"blob 0x{blob_hash.hex()} is larger than {max_bytes} bytes")
            if hasher.digest() != blob_hash:
                raise ClientError(f"blob 0x{blob_hash.hex()}: the node sent {hasher.size} bytes hashing to "
                                  f"0x{hasher.digest().hex()}; refused")
            return b"".join(parts)

        return self.guard(f"download of blob 0x{blob_hash.hex()}", fetch)

    def download_blob(self, blob_hash: bytes, out_path: Path) -> int:
        """Stream blob ``blob_hash`` into ``out_path``, hashing it on the way; the file appears (atomically)
        only if the bytes hash to ``blob_hash``. Returns the size."""
        out_path = Path(out_path)

        def fetch() -> int:
            with self._get_blob(blob_hash) as response, atomic_file(out_path) as out:
                hasher = MerkleHasher()
                for chunk in response.iter_content(CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                if hasher.digest() != blob_hash:
                    raise ClientError(f"blob 0x{blob_hash.hex()}: the node sent {hasher.size} bytes hashing to "
                                      f"0x{hasher.digest().hex()}; refused, nothing written")
                return hasher.size

        try:
            return self.guard(f"download of blob 0x{blob_hash.hex()}", fetch)
        except OSError as exc:
            raise ClientError(f"cannot write {out_path}: {exc.strerror or exc}") from None

    def checkpoint_metadata(self, checkpoint_hash: bytes) -> dict[str, Any]:
        """The `ogpu` metadata of a checkpoint blob, fetching only its header (8 + header length bytes).
        A partial read cannot be hash-checked: use it for display only."""
        def fetch() -> bytes:
            with self._get_blob(checkpoint_hash) as response:
                data = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    data += chunk
                    if len(data) >= 8 and len(data) >= 8 + min(int.from_bytes(data[:8], "little"), _MAX_HEADER):
                        break
                return bytes(data)

        data = self.guard(f"download of checkpoint 0x{checkpoint_hash.hex()}", fetch)
        try:
            return checkpoint_header(data)[1]
        except ValueError as exc:
            raise ClientError(f"checkpoint 0x{checkpoint_hash.hex()}: {exc}") from None

    def loss_curve(self, history: TaskHistory) -> list[LossPoint]:
        """Per checkpoint with a hash (the accepted one, else the latest revealed): the mean recent training
        loss from its header. A checkpoint whose blob the node lacks gets loss None."""
        points = []
        for c in history.checkpoints:
            accepted = c.accepted
            ckpt_hash = accepted.checkpoint_hash if accepted and accepted.checkpoint_hash else c.revealed
            if ckpt_hash is None:
                continue
            try:
                meta = self.checkpoint_metadata(ckpt_hash)
            except ClientError:
                meta = {}
            step = meta.get("step")
            points.append(LossPoint(c.k, step if isinstance(step, int) else None, mean_recent_loss(meta),
                                    accepted is not None))
        return points

    def _result_ready(self, s: TaskStatus) -> bool:
        """Whether ``s`` has an accepted final checkpoint; raises if it never will."""
        if s.state == "Cancelled":
            raise ClientError(f"task {s.task_id} was cancelled with {s.accepted}/{s.checkpoints} checkpoints "
                              "accepted: it has no result")
        return s.state in ("AwaitingConfirmation", "Settled") and s.accepted == s.checkpoints

    def result(self, task_id: int, out_path: Path, checkpoint_path: Path | None = None) -> bytes:
        """Download the accepted final checkpoint K by its on-chain hash, check it, and write its weights
        (`model/<name>` as `<name>`) to ``out_path``; keep the whole checkpoint at ``checkpoint_path`` if
        given. Returns H(ckpt_K)."""
        s = self.status(task_id)
        if not self._result_ready(s):
            raise ClientError(f"task {task_id} has no result yet: state {s.state}, "
                              f"{s.accepted}/{s.checkpoints} checkpoints accepted")
        if s.state == "Settled" and self.checkpoint_history(task_id).outcome == _OUTCOME_EXECUTOR_LOST:
            raise ClientError(f"task {task_id}: the final checkpoint was rejected on dispute: it has no result")
        ckpt = self.guard("getCheckpoint", self.task.functions.getCheckpoint(task_id, s.checkpoints).call)
        ckpt_hash = bytes(ckpt[3])
        if not any(ckpt_hash):
            raise ClientError(f"task {task_id}: checkpoint {s.checkpoints} has no revealed hash")
        out_path = Path(out_path)
        keep = Path(checkpoint_path) if checkpoint_path is not None else None
        target = keep or out_path.with_name(f".{out_path.name}.checkpoint")
        try:
            self.download_blob(ckpt_hash, target)
            extract_weights(target, out_path, ckpt_hash)
        except OSError as exc:
            raise ClientError(f"cannot write {out_path}: {exc.strerror or exc}") from None
        finally:
            if keep is None:
                target.unlink(missing_ok=True)
        return ckpt_hash

    def wait_for_result(self, task_id: int, timeout: float | None = None, poll: float = 2.0,
                        progress: Callable[[TaskStatus], None] | None = None) -> TaskStatus:
        """Poll until the final checkpoint is accepted; ``progress`` gets each status. Raises ClientError when
        the task is cancelled or ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status(task_id)
            if progress is not None:
                progress(s)
            if self._result_ready(s):
                return s
            if deadline is not None and time.monotonic() + poll > deadline:
                raise ClientError(f"timed out after {timeout:g}s waiting for task {task_id}: state {s.state}, "
                                  f"{s.accepted}/{s.checkpoints} checkpoints accepted")
            time.sleep(poll)

# -- checkpoint history, checkpoint files and results -------------------------------------------------

CANCEL_REASONS = {1: "too few bids", 2: "too few council candidates", 3: "too many inconclusive rounds",
                  4: "no bidder left to replace the executor"}
OUTCOMES = {1: "confirmed", 2: "the executor lost the dispute", 3: "the client lost the dispute"}
_OUTCOME_EXECUTOR_LOST = 2
_HISTORY_EVENTS = ("TaskSubmitted", "TaskAssigned", "ExecutorReplaced", "CheckpointRevealed", "CheckpointAccepted",
                   "CheckpointRejected", "CheckpointMissed", "CheckpointInconclusive", "TaskCancelled",
                   "TaskSettled")
_LOG_WINDOW = 100_000  # blocks per eth_getLogs call: the node's range limit (docs/rpc.md)
_CHECKPOINT_META_KEY = "ogpu"  # compute/checkpoint.py META_KEY
_MAX_HEADER = 16 * 1024 * 1024
_COPY_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """One decision on checkpoint k: `accepted` (with its payments and the hash accepted), `rejected` or
    `missed` (the executor slashed by `penalty`), or an `inconclusive` council round."""

    k: int
    kind: str
    block: int
    checkpoint_hash: bytes | None = None
    executor: str | None = None
    executor_paid: int = 0
    council_paid: int = 0
    discount: int = 0
    penalty: int = 0
    round: int | None = None


@dataclass(frozen=True)
class ExecutorChange:
    """The task assigned (`previous` None) or re-assigned, resuming after checkpoint `resume_from`."""

    block: int
    executor: str
    price: int
    previous: str | None = None
    resume_from: int = 0


@dataclass(frozen=True)
class CheckpointHistory:
    k: int
    verdicts: tuple[Verdict, ...] = ()
    revealed: bytes | None = None  # the latest H(ckpt_k) the executor revealed

    @property
    def accepted(self) -> Verdict | None:
        return next((v for v in reversed(self.verdicts) if v.kind == "accepted"), None)


@dataclass(frozen=True)
class TaskHistory:
    task_id: int
    checkpoints: tuple[CheckpointHistory, ...]  # k = 1..K
    executors: tuple[ExecutorChange, ...]
    executor_paid: int
    council_paid: int
    discounts: int
    cancel_reason: int | None = None  # TaskCancelled
    outcome: int | None = None  # TaskSettled
    refund: int | None = None  # of either

    @property
    def paid(self) -> int:
        return self.executor_paid + self.council_paid


@dataclass(frozen=True)
class LossPoint:
    """The mean of checkpoint k's `recent_losses` (None: no loss data), and whether k is accepted yet."""

    k: int
    step: int | None
    loss: float | None
    accepted: bool


def build_history(task_id: int, checkpoints: int, events: list[tuple[str, dict[str, Any], int]]) -> TaskHistory:
    """Fold a task's Task events, in chain order, as (name, args, block number), into its history."""
    verdicts: dict[int, list[Verdict]] = {k: [] for k in range(1, checkpoints + 1)}
    revealed: dict[int, bytes] = {}
    executors: list[ExecutorChange] = []
    ended: dict[str, int] = {}
    for name, a, block in events:
        k = a.get("k", 0)
        if name == "TaskAssigned":
            executors.append(ExecutorChange(block, a["executor"], a["price"]))
        elif name == "ExecutorReplaced":
            executors.append(ExecutorChange(block, a["executor"], a["price"], a["previous"], a["resumeFrom"]))
        elif name == "CheckpointRevealed":
            revealed[k] = bytes(a["checkpointHash"])
        elif name == "CheckpointAccepted":
            verdicts.setdefault(k, []).append(Verdict(
                k, "accepted", block, checkpoint_hash=revealed.get(k), executor_paid=a["executorPaid"],
                council_paid=a["councilPaid"], discount=a["discount"]))
        elif name in ("CheckpointRejected", "CheckpointMissed"):
            kind = "rejected" if name == "CheckpointRejected" else "missed"
            verdicts.setdefault(k, []).append(Verdict(
                k, kind, block, checkpoint_hash=revealed.get(k), executor=a["executor"], penalty=a["penalty"]))
        elif name == "CheckpointInconclusive":
            verdicts.setdefault(k, []).append(Verdict(k, "inconclusive", block, round=a["round"]))
        elif name == "TaskCancelled":
            ended = {"cancel_reason": a["reason"], "refund": a["refund"]}
        elif name == "TaskSettled":
            ended = {"outcome": a["outcome"], "refund": a["refund"]}
    accepted = [v for vs in verdicts.values() for v in vs if v.kind == "accepted"]
    return TaskHistory(
        task_id=task_id,
        checkpoints=tuple(CheckpointHistory(k, tuple(vs), revealed.get(k)) for k, vs in sorted(verdicts.items())),
        executors=tuple(executors), executor_paid=sum(v.executor_paid for v in accepted),
        council_paid=sum(v.council_paid for v in accepted), discounts=sum(v.discount for v in accepted), **ended,
    )


def checkpoint_header(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, ogpu metadata) from the start of a checkpoint file (8 + header length bytes suffice);
    the metadata is `{}` when absent. Raises ValueError when it is not a safetensors header."""
    if len(data) < 8:
        raise ValueError("truncated safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER or len(data) < 8 + n:
        raise ValueError("truncated or oversized safetensors header")
    header = json.loads(data[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not an object")
    meta = json.loads((header.pop("__metadata__", None) or {}).get(_CHECKPOINT_META_KEY, "{}"))
    return header, meta if isinstance(meta, dict) else {}


def mean_recent_loss(meta: dict[str, Any]) -> float | None:
    """The mean of the finite numbers in `recent_losses` (None without any)."""
    losses = meta.get("recent_losses")
    if not isinstance(losses, list):
        return None
    finite = [float(x) for x in losses
              if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    return sum(finite) / len(finite) if finite else None


def extract_weights(checkpoint: Path, out_path: Path, checkpoint_hash: bytes) -> int:
    """Write the checkpoint file's `model/<name>` tensors as `<name>` into a safetensors file at ``out_path``
    (atomically), copying their bytes unchanged; return the number of tensors."""
    name = f"checkpoint 0x{checkpoint_hash.hex()}"
    size = checkpoint.stat().st_size
    with open(checkpoint, "rb") as src:
        prefix = src.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        try:
            tensors, meta = checkpoint_header(prefix + src.read(min(n, _MAX_HEADER)))
        except ValueError as exc:
            raise ClientError(f"{name} is not a safetensors file: {exc}") from None
        base, layout, sources, offset = 8 + n, {}, [], 0
        weights = [(t, info) for t, info in tensors.items() if t.startswith("model/")]
        try:
            weights.sort(key=lambda item: item[1]["data_offsets"][0])  # keeps the writer's alignment order
            for tensor, info in weights:
                begin, end = (int(x) for x in info["data_offsets"])
                if not 0 <= begin <= end <= size - base:
                    raise ValueError("offsets out of range")
                layout[tensor.removeprefix("model/")] = {
                    "dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + end - begin]}
                sources.append((begin, end))
                offset += end - begin
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(f"{name}: bad tensor entry: {exc}") from None
        if not layout:
            raise ClientError(f"{name} holds no model/ tensors")
        info_meta = {"ogpu_checkpoint": "0x" + checkpoint_hash.hex()}
        if "family" in meta:
            info_meta["family"] = str(meta["family"])
            info_meta["hparams"] = json.dumps(meta.get("hparams"), sort_keys=True, separators=(",", ":"))
        header = json.dumps({"__metadata__": info_meta, **layout}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with atomic_file(out_path) as dst:
            dst.write(len(header).to_bytes(8, "little") + header)
            for begin, end in sources:
                src.seek(base + begin)
                left = end - begin
                while left:
                    chunk = src.read(min(left, _COPY_SIZE))
                    if not chunk:
                        raise ClientError(f"{name}: truncated tensor data")
                    dst.write(chunk)
                    left -= len(chunk)
    return len(layout)


def _reason(exc: BaseException) -> str:
    """The revert reason or node message of a web3 error, on one line."""
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else str(exc))
    if isinstance(message, dict):
        message = message.get("message", str(message))
    text = str(message)
    for prefix in ("execution reverted: ",):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return " ".join(text.split())
