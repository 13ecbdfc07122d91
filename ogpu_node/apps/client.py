"""The client app: upload blobs, submit a batch task from a prescription, read its state, confirm or
dispute it. It talks to a node over JSON-RPC (web3.py) and the blob HTTP endpoint only, and signs
every transaction locally with the client's key (the node holds no unlocked keys)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception
from web3.logs import DISCARD

from ogpu_node.types.merkle import CHUNK_SIZE, MerkleHasher, merkle_root
from ogpu_node.types.prescription import Prescription, prescription_hash, to_terms

__all__ = ["STATE_NAMES", "PHASE_NAMES", "Client", "ClientError", "TaskStatus", "file_blob_hash"]

_ABI_DIR = Path(__file__).resolve().parents[2] / "contracts"
TASK_ADDRESS = Web3.to_checksum_address("0x0000000000000000000000000000000000001001")
BID_ADDRESS = Web3.to_checksum_address("0x0000000000000000000000000000000000001002")
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


def _abi(name: str) -> list[dict[str, Any]]:
    raw = json.loads((_ABI_DIR / f"{name}.json").read_text())
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
        self.task = self.w3.eth.contract(address=TASK_ADDRESS, abi=_abi("Task"))
        self.bid = self.w3.eth.contract(address=BID_ADDRESS, abi=_abi("Bid"))

    # -- transport ------------------------------------------------------------------------------

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
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

        return self._check_upload(path.name, expected, size, self._guard(f"upload of {path.name}", put))

    def upload_bytes(self, name: str, data: bytes) -> tuple[bytes, int]:
        """Upload ``data`` as a blob (``name`` is for messages only)."""
        expected = merkle_root(data)
        response = self._guard(f"upload of {name}", self._put_blob, expected, data)
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

    def _send(self, what: str, call: Any, value: int = 0) -> Any:
        sender = self._address()

        def send() -> Any:
            tx = call.build_transaction({
                "from": sender, "value": value, "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
                "chainId": self.w3.eth.chain_id,
            })
            signed = self.account.sign_transaction(tx)  # type: ignore[union-attr]
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=_RECEIPT_TIMEOUT_S, poll_latency=0.2)

        receipt = self._guard(what, send)
        if receipt["status"] != 1:
            raise ClientError(f"{what}: transaction 0x{bytes(receipt['transactionHash']).hex()} reverted")
        return receipt

    def minimum_deposit(self, p: Prescription) -> int:
        """The safety deposit Task requires for ``p``, asked of the chain itself: a dry run with no deposit
        either passes (a zero-deposit chain) or reverts naming the minimum."""
        sender = self._address()
        call = self.task.functions.submitTask(prescription_hash(p), KIND_BATCH, to_terms(p))
        try:
            self._guard("submitTask", call.call, {"from": sender, "value": p.I.max_payment})
        except ClientError as exc:
            match = _MIN_DEPOSIT.search(str(exc))
            if match is None:
                raise
            return int(match.group(1))
        return 0

    def submit_task(self, p: Prescription, deposit: int | None = None) -> tuple[int, int]:
        """Submit batch task ``p`` with value = max payment + deposit (default: the chain's minimum);
        return (task id, deposit)."""
        if p.kind != "batch":
            raise ClientError("prescription.kind: only batch tasks can be submitted with `task submit`")
        if deposit is None:
            deposit = self.minimum_deposit(p)
        # Providers fetch the document by the hash the chain records.
        self.upload_bytes("the prescription", p.canonical_json())
        call = self.task.functions.submitTask(prescription_hash(p), KIND_BATCH, to_terms(p))
        receipt = self._send("submitTask", call, value=p.I.max_payment + deposit)
        events = self.task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)
        if not events:
            raise ClientError("submitTask: no TaskSubmitted event in the receipt")
        return int(events[0]["args"]["taskId"]), deposit

    def confirm(self, task_id: int) -> Any:
        return self._send("confirm", self.task.functions.confirm(task_id))

    def dispute(self, task_id: int) -> Any:
        return self._send("dispute", self.task.functions.dispute(task_id))

    # -- reads ----------------------------------------------------------------------------------

    def status(self, task_id: int) -> TaskStatus:
        count = self._guard("taskCount", self.task.functions.taskCount().call)
        if not 1 <= task_id <= count:
            raise ClientError(f"task {task_id} does not exist (tasks: {count})")
        fns = self.task.functions
        (client, kind, state, phash, escrow, deposit, executor, price, _seed, bid_deadline,
         assigned_at) = self._guard("getTask", fns.getTask(task_id).call)
        terms = self._guard("getTerms", fns.getTerms(task_id).call)
        checkpoints = int(terms[3])
        providers, prices = self._guard("bidsOf", self.bid.functions.bidsOf(task_id).call)
        accepted, committed, paid, _run_start, _run_base, _gen, confirm_deadline = self._guard(
            "getProgress", fns.getProgress(task_id).call
        )
        checkpoint = None
        if kind == KIND_BATCH and accepted < checkpoints and state not in (0, 1, 3, 6):
            k = accepted + 1
            phase, rnd, _commitment, _ckpt, phase_ends, council, _step = self._guard(
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
