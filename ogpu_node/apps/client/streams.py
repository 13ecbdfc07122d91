"""The client's side of stream tasks (docs/streams.md): open a stream, sign and send requests to the
node, check the answer it returns, and pay the members that agreed with cumulative receipts.

- `served_weights`: the weights file a stream serves (M.initial_weights), from `task result`'s output;
- `build_request` / `sign_request`: a `StreamRequest` and its signature over the request id;
- `check_answer`: the node's answer against the request (its id, the response hash, each agreeing
  member's signature), so the client pays only members that really signed that response;
- `ReceiptLedger`: the cumulative units served per (task, terms version, member), kept in the client's
  datadir so receipts grow across invocations (a receipt pays only its increase, so a lower one would
  underpay and a forgotten credit be lost);
- `StreamClient`: the above over one node (`Client` for transactions and views, raw JSON-RPC for the
  node's `ogpu_stream*` methods).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from eth_hash.auto import keccak
from web3.logs import DISCARD

from ogpu_node.apps.client.app import Client
from ogpu_node.apps.client.blobs import file_blob_hash
from ogpu_node.apps.client.errors import ClientError, KeyRequired, NodeError, translate
from ogpu_node.apps.client.results import WEIGHTS_PREFIX, extract_weights
from ogpu_node.crypto import Keypair
from ogpu_node.crypto.signatures import InvalidSignature, recover_signer
from ogpu_node.files import atomic_write
from ogpu_node.types.prescription import InvalidPrescription, Prescription, prescription_hash, to_stream_terms
from ogpu_node.types.protocol import ResponseMethod, TaskKind, TaskState
from ogpu_node.types.signing import StreamReceipt, StreamRequest, StreamResponse
from ogpu_node.types.streams import MAX_PROMPT_BYTES, MAX_RESPONSE_TOKENS

__all__ = [
    "LEDGER_FILE", "Answer", "ReceiptLedger", "StreamClient", "StreamRefused", "build_request", "check_answer",
    "receipt_json", "request_json", "served_weights", "sign_request",
]

LEDGER_FILE = Path("client") / "streams.json"  # under the client's datadir
KEPT_REQUESTS = 4_096  # requests remembered per chain (to credit members an optimistic answer adds later)
UINT64 = 1 << 64


class StreamRefused(NodeError):
    """The node refused a stream call, or the request failed (`data`: the request as it stands, if any)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


# -- requests ---------------------------------------------------------------------------------------------


def build_request(task_id: int, terms_version: int, block_number: int, prompt: bytes, max_tokens: int,
                  seed: int | None = None, nonce: int | None = None) -> StreamRequest:
    """A request to stream `task_id`; `seed` and `nonce` random when not given. ClientError for what
    the node would refuse anyway (prompt 1–4 096 bytes, 1 ≤ max_tokens ≤ 1 024, 64-bit seed)."""
    if not 1 <= len(prompt) <= MAX_PROMPT_BYTES:
        raise ClientError(f"prompt: must be 1 to {MAX_PROMPT_BYTES} bytes (UTF-8), got {len(prompt)}")
    if not 1 <= max_tokens <= MAX_RESPONSE_TOKENS:
        raise ClientError(f"max tokens: must be 1 to {MAX_RESPONSE_TOKENS}, got {max_tokens}")
    if seed is not None and not 0 <= seed < UINT64:
        raise ClientError(f"seed: must be 0 to {UINT64 - 1}")
    return StreamRequest(
        task_id=task_id, terms_version=terms_version, block_number=block_number,
        seed=secrets.randbelow(UINT64) if seed is None else seed, max_tokens=max_tokens,
        prompt_hash=keccak(prompt), nonce=secrets.randbelow(UINT64) if nonce is None else nonce,
    )


def sign_request(key: Keypair, request: StreamRequest, chain_id: int, genesis_hash: bytes) -> tuple[bytes, bytes]:
    """(request id, signature): the request id is the request's signing root, and the signature is over it."""
    request_id = request.request_id(chain_id, genesis_hash)
    return request_id, key.sign_hash(request_id)


def request_json(request: StreamRequest, prompt: bytes, signature: bytes) -> dict[str, str]:
    """`ogpu_streamRequest`'s parameter: numbers as hex quantities, bytes as 0x-hex."""
    return {
        "taskId": hex(request.task_id), "termsVersion": hex(request.terms_version),
        "blockNumber": hex(request.block_number), "seed": hex(request.seed), "maxTokens": hex(request.max_tokens),
        "nonce": hex(request.nonce), "prompt": "0x" + prompt.hex(), "signature": "0x" + signature.hex(),
    }


def receipt_json(key: Keypair, receipt: StreamReceipt, chain_id: int, genesis_hash: bytes) -> dict[str, str]:
    """One signed receipt as `ogpu_streamReceipts` takes it."""
    signature = key.sign_hash(receipt.signing_root(chain_id, genesis_hash))
    return {"taskId": hex(receipt.task_id), "provider": "0x" + receipt.provider.hex(),
            "cumulativeUnits": hex(receipt.cumulative_units), "termsVersion": hex(receipt.terms_version),
            "signature": "0x" + signature.hex()}


# -- the served weights -----------------------------------------------------------------------------------


def served_weights(path: Path, family: str, hparams: dict[str, Any], out_dir: Path) -> Path:
    """The file to upload as M.initial_weights from `path`: a weights file (`task result --out`) as it
    is, or a whole checkpoint (`task result --checkpoint`) reduced to its weights in `out_dir`. Checked
    against M before anything is paid for: every tensor of the model, by name, shape and dtype."""
    from types import SimpleNamespace

    from ogpu_node.compute import check_initial_weights  # torch: loaded only by the submit command
    from ogpu_node.compute.errors import InvalidTrainSpec
    from ogpu_node.compute.tensorfile import TensorFileError, read_header

    try:
        data = Path(path).read_bytes()
        names = read_header(data)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    except TensorFileError as exc:
        raise ClientError(f"{path} is not a safetensors file: {exc}") from None
    if any(name.startswith(WEIGHTS_PREFIX) for name in names):  # a whole checkpoint: keep its weights
        weights = Path(out_dir) / f"{Path(path).stem}.weights.safetensors"
        extract_weights(Path(path), weights, file_blob_hash(Path(path)))
        path, data = weights, weights.read_bytes()
    try:  # the check reads only the model's family and hparams
        check_initial_weights(SimpleNamespace(family=family, hparams=hparams), data)  # type: ignore[arg-type]
    except InvalidTrainSpec as exc:
        raise ClientError(f"{path}: {exc}") from None
    return Path(path)


# -- answers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A request as the node reports it (`ogpu_streamRequest`, `ogpu_streamStatus`), checked."""

    request_id: bytes
    task_id: int
    status: str  # pending | answered | validated | faulty | failed
    method: str
    response: bytes | None
    response_hash: bytes | None
    council: tuple[bytes, ...]
    agreed: tuple[bytes, ...]  # the members the node counted as agreeing
    verified: tuple[bytes, ...]  # of those, the ones whose signature over the answer checks: who is paid
    skipped: tuple[bytes, ...]
    error: str | None
    raw: dict[str, Any]

    @property
    def text(self) -> str:
        return "" if self.response is None else self.response.decode("utf-8", "replace")


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise NodeError(f"the node's answer: {what} is not 0x-hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise NodeError(f"the node's answer: {what} is not 0x-hex") from None


def _quantity(value: Any, what: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise NodeError(f"the node's answer: {what} is not a hex quantity")


def check_answer(raw: Any, request_id: bytes, terms_version: int | None, chain_id: int,
                 genesis_hash: bytes) -> Answer:
    """Decode the node's answer to `request_id`; `verified` holds the agreeing members whose signature
    over (task, request id, terms version, response hash) recovers to them: the members a receipt pays
    (none when the terms version is unknown: the signatures cannot be checked)."""
    if not isinstance(raw, dict):
        raise NodeError("the node's answer is not an object")
    if _bytes(raw.get("requestId"), "requestId") != request_id:
        raise NodeError("the node answered another request")
    task_id = _quantity(raw.get("taskId"), "taskId")
    response = None if raw.get("response") is None else _bytes(raw["response"], "response")
    answer_hash = None if raw.get("responseHash") is None else _bytes(raw["responseHash"], "responseHash")
    if response is not None and keccak(response) != answer_hash:
        raise NodeError("the node's answer: the response does not hash to responseHash")
    signed: dict[bytes, bytes] = {}  # member → signature over the answer's hash
    for item in raw.get("responses") or []:
        if isinstance(item, dict) and answer_hash is not None and item.get("responseHash") == raw["responseHash"]:
            signed[_bytes(item.get("member"), "member")] = _bytes(item.get("signature"), "signature")
    agreed = tuple(_bytes(m, "agreed") for m in raw.get("agreed") or [])
    verified = []
    for member in agreed:
        if answer_hash is None or terms_version is None or member not in signed:
            continue
        message = StreamResponse(task_id, request_id, terms_version, answer_hash)
        try:
            if recover_signer(message.signing_root(chain_id, genesis_hash), signed[member]) == member:
                verified.append(member)
        except InvalidSignature:
            pass  # not paid: a member is paid for a response it signed
    return Answer(
        request_id=request_id, task_id=task_id, status=str(raw.get("status")), method=str(raw.get("method")),
        response=response, response_hash=answer_hash,
        council=tuple(_bytes(m, "council") for m in raw.get("council") or []), agreed=agreed,
        verified=tuple(verified),
        skipped=tuple(_bytes(m, "skipped") for m in raw.get("skipped") or []),
        error=raw.get("error") if isinstance(raw.get("error"), str) else None, raw=raw,
    )


# -- the receipt ledger -----------------------------------------------------------------------------------


class ReceiptLedger:
    """Cumulative output units served to each member, per chain, stream task and terms version, in one
    JSON file. Each request credits a member at most once, so crediting is idempotent (a repeated
    `stream status` pays nothing twice). Writes are atomic, under an exclusive lock where the platform
    has `fcntl`, so two invocations at once do not lose each other's credits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            try:
                import fcntl
            except ImportError:  # Windows: one invocation at a time is the user's to ensure
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            doc = self._read()
            yield doc
            atomic_write(self.path, json.dumps(doc, sort_keys=True, indent=1).encode())

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"chains": {}}
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read the receipt ledger {self.path}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("chains"), dict):
            raise ClientError(f"the receipt ledger {self.path} is not one this client wrote")
        return doc

    def units(self, chain: str, task_id: int, terms_version: int, member: bytes) -> int:
        """The units credited so far to `member` under that task's terms version."""
        return int(self._read()["chains"].get(chain, {}).get("units", {}).get(
            _unit_key(task_id, terms_version, member), 0))

    def record_request(self, chain: str, request_id: bytes, task_id: int, terms_version: int) -> None:
        """Remember a request's task and terms version (an optimistic answer may be credited later)."""
        with self._locked() as doc:
            requests_ = doc["chains"].setdefault(chain, {"units": {}, "requests": {}})["requests"]
            requests_.setdefault("0x" + request_id.hex(), {"task": task_id, "version": terms_version, "credited": []})
            while len(requests_) > KEPT_REQUESTS:
                del requests_[next(iter(requests_))]

    def request(self, chain: str, request_id: bytes) -> tuple[int, int] | None:
        """(task id, terms version) of a request this client sent, if remembered."""
        entry = self._read()["chains"].get(chain, {}).get("requests", {}).get("0x" + request_id.hex())
        return None if entry is None else (int(entry["task"]), int(entry["version"]))

    def credit(self, chain: str, request_id: bytes, members: tuple[bytes, ...], units: int,
               floors: dict[bytes, int] | None = None) -> dict[bytes, int]:
        """Add `units` for each member not yet credited for this request; return every member's
        cumulative units (credited now or before). `floors`: units already settled on chain, which a
        cumulative count never goes below (a lost ledger must not sign receipts that pay nothing)."""
        with self._locked() as doc:
            entries = doc["chains"].setdefault(chain, {"units": {}, "requests": {}})
            entry = entries["requests"].get("0x" + request_id.hex())
            if entry is None:
                raise ClientError(f"request 0x{request_id.hex()} was not sent by this client (datadir)")
            cumulative = {}
            for member in members:
                key = _unit_key(entry["task"], entry["version"], member)
                total = max(int(entries["units"].get(key, 0)), (floors or {}).get(member, 0))
                if "0x" + member.hex() not in entry["credited"]:
                    total += units
                    entry["credited"].append("0x" + member.hex())
                entries["units"][key] = total
                cumulative[member] = total
            return cumulative


OPEN_STATES = {s.label for s in (TaskState.FORMING, TaskState.ACTIVE, TaskState.INTERRUPTED)}  # ogpu_streamTask names


def _unit_key(task_id: int, terms_version: int, member: bytes) -> str:
    return f"{task_id}/{terms_version}/0x{member.hex()}"


# -- over a node ------------------------------------------------------------------------------------------


class StreamClient:
    """Stream tasks through the node behind `client`; `datadir` holds the receipt ledger."""

    def __init__(self, client: Client, datadir: Path | None = None) -> None:
        self.client = client
        self.ledger = None if datadir is None else ReceiptLedger(Path(datadir) / LEDGER_FILE)
        self._chain: tuple[int, bytes, str] | None = None

    def key(self) -> Keypair:
        account = self.client.account
        if account is None:
            raise KeyRequired("a key is needed to sign stream requests and receipts")
        return Keypair.from_private_key(bytes(account.key))

    def chain(self) -> tuple[int, bytes, str]:
        """(chain id, genesis hash, ledger key). The ledger key adds block 1's hash: a dev chain restarted
        from the same genesis is another chain, and its task 1 must not inherit the old one's units."""
        if self._chain is None:
            w3 = self.client.w3
            chain_id = self.client.rpc.chain_id()
            genesis = bytes(self.client.guard("eth_getBlockByNumber", w3.eth.get_block, 0)["hash"])
            first = bytes(self.client.guard("eth_getBlockByNumber", w3.eth.get_block, 1)["hash"])
            self._chain = (chain_id, genesis, f"{chain_id}:0x{genesis.hex()}:0x{first.hex()}")
        return self._chain

    def call(self, method: str, params: list[Any], timeout: float | None = None) -> Any:
        """A raw JSON-RPC call; the node's error becomes StreamRefused with its message."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        url = self.client.rpc_url
        reply = translate(method, url, requests.post, url, json=body, timeout=timeout or self.client.timeout)
        try:
            doc = reply.json()
        except ValueError:
            raise NodeError(f"{method}: the node at {url} did not answer JSON (HTTP {reply.status_code})") from None
        if not isinstance(doc, dict):
            raise NodeError(f"{method}: malformed JSON-RPC reply")
        error = doc.get("error")
        if error is not None:
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise StreamRefused(" ".join(str(message).split()), error.get("data") if isinstance(error, dict) else None)
        return doc.get("result")

    # -- the client's transactions --

    def submit(self, p: Prescription, deposit: int | None = None) -> tuple[int, int]:
        """Open stream `p`: upload its prescription, then Task.submitStream with value = budget + deposit
        (default: the chain's minimum); return (task id, deposit)."""
        if p.kind != "stream":
            raise ClientError("prescription.kind: `stream submit` opens stream tasks; use `task submit`")
        if p.M.initial_weights is None:
            raise ClientError(str(InvalidPrescription("prescription.M.initial_weights", "required: the served weights")))
        budget = p.I.max_payment
        if deposit is None:
            deposit = self.client.views.minimum_deposit(budget)
        self.client.upload_bytes("the prescription", p.canonical_json())  # providers fetch it by its hash
        call = self.client.task.functions.submitStream(prescription_hash(p), to_stream_terms(p))
        receipt = self.client.send("submitStream", call, value=budget + deposit)
        events = self.client.task.events.TaskSubmitted().process_receipt(receipt, errors=DISCARD)
        if not events:
            raise NodeError("submitStream: no TaskSubmitted event in the receipt")
        return int(events[0]["args"]["taskId"]), deposit

    def require_stream(self, task_id: int) -> Any:
        """The task's record; ClientError unless it is a stream."""
        self.client.views.require_task(task_id)
        task = self.client.views.task(task_id)
        if task.kind != TaskKind.STREAM:
            raise ClientError(f"task {task_id} is a batch task, not a stream")
        return task

    def retract(self, task_id: int) -> Any:
        self.require_stream(task_id)
        return self.client.send("retract", self.client.task.functions.retract(task_id))

    def update_terms(self, task_id: int, price: int | None, method: str | None, weight: int | None) -> tuple[int, Any]:
        """A new terms version: what is not given keeps its current value (a weight only with `weighted`).
        Returns (the new version, the transaction receipt)."""
        self.require_stream(task_id)
        current = self.client.views.stream(task_id)
        method_code = current.response_method if method is None else int(ResponseMethod[method.upper()])
        if weight is None:
            weight = current.response_weight if method_code == ResponseMethod.WEIGHTED else 0
        if method_code == ResponseMethod.WEIGHTED and not 1 <= weight <= 10_000:
            raise ClientError("--weight: a weighted response method needs a weight of 1 to 10000 bps")
        if method_code != ResponseMethod.WEIGHTED and weight:
            raise ClientError("--weight: only a weighted response method takes a weight")
        price = current.price_per_unit if price is None else price
        call = self.client.task.functions.updateTerms(task_id, price, method_code, weight)
        receipt = self.client.send("updateTerms", call)
        events = self.client.task.events.TermsUpdated().process_receipt(receipt, errors=DISCARD)
        return (int(events[0]["args"]["version"]) if events else current.terms_version + 1), receipt

    # -- requests --

    def request(self, task_id: int, prompt: bytes, max_tokens: int, seed: int | None = None,
                timeout: float = 120.0) -> tuple[StreamRequest, Answer]:
        """Sign a request for the stream's current terms version at the head, send it, check the answer."""
        if self.ledger is None:
            raise ClientError("a datadir is needed to keep the receipts' cumulative units")
        # One round trip for the stream's state, terms version and the head (a request's latency counts).
        try:
            at_head = self.call("ogpu_streamTask", [hex(task_id)], timeout)
        except StreamRefused:
            self.require_stream(task_id)  # the client's own words for a task that is missing or a batch task
            raise
        try:
            state, version = str(at_head["state"]), _quantity(at_head["termsVersion"], "termsVersion")
            head = _quantity(at_head["blockNumber"], "blockNumber")
        except (KeyError, TypeError) as exc:
            raise NodeError(f"ogpu_streamTask: malformed answer ({exc})") from None
        if state not in OPEN_STATES:
            raise ClientError(f"stream {task_id} is {state}: it takes no requests")
        request = build_request(task_id, version, head, prompt, max_tokens, seed)
        chain_id, genesis, chain = self.chain()
        request_id, signature = sign_request(self.key(), request, chain_id, genesis)
        self.ledger.record_request(chain, request_id, task_id, version)  # before the node can answer it
        raw = self.call("ogpu_streamRequest", [request_json(request, prompt, signature)], timeout)
        return request, check_answer(raw, request_id, version, chain_id, genesis)

    def status(self, request_id: bytes) -> tuple[Answer, int | None]:
        """A request as the node reports it now, and its terms version if this client sent it."""
        raw = self.call("ogpu_streamStatus", ["0x" + request_id.hex()])
        if raw is None:
            raise ClientError(f"request 0x{request_id.hex()} is unknown to the node")
        chain_id, genesis, chain = self.chain()
        known = None if self.ledger is None else self.ledger.request(chain, request_id)
        version = known[1] if known is not None else None
        return check_answer(raw, request_id, version, chain_id, genesis), version

    def pay(self, answer: Answer) -> tuple[int, int]:
        """Sign and send receipts for the members that agreed on `answer` (cumulative units, each
        member credited once per request); return (receipts signed, delivered to a provider)."""
        if self.ledger is None:
            raise ClientError("a datadir is needed to keep the receipts' cumulative units")
        if answer.response is None or not answer.verified or answer.status not in ("answered", "validated"):
            return 0, 0
        chain_id, genesis, chain = self.chain()
        known = self.ledger.request(chain, answer.request_id)
        if known is None:
            return 0, 0
        task_id, version = known
        floors = {m: int(self.client.rpc.call("settledUnits", self.client.task.functions.settledUnits(
            task_id, self.client.w3.to_checksum_address(m), version))) for m in answer.verified}
        cumulative = self.ledger.credit(chain, answer.request_id, answer.verified, len(answer.response), floors)
        key = self.key()
        items = [receipt_json(key, StreamReceipt(task_id, member, units, version), chain_id, genesis)
                 for member, units in cumulative.items()]
        delivered = self.call("ogpu_streamReceipts", [items])
        return len(items), int(delivered) if isinstance(delivered, int) else 0

