"""An in-process harness for native-contract tests: real blocks on a real `Chain`, no node process.

Transactions are signed by dev accounts (through tests/txfactory.py) and sealed into blocks whose
timestamp and mix hash the test chooses; views run as `eth_call` does; calldata, return values, revert reasons and events are encoded
and decoded from the ABI JSON in `contracts/` (the one source of the interface, read here on its own,
not through `ogpu_node.contracts.abi`).

Import it as `from harness import Harness` (pyproject's pytest `pythonpath` lists this folder).

Revert reasons of transactions: a receipt carries only a status, so the harness gives the chain's VM
class a state class that keeps each transaction's computation (what py-evm's
`state.apply_transaction` returns) and decodes the `Error(string)` data from there. Execution is
otherwise the node's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth.vm.spoof import SpoofTransaction
from eth_abi import decode, encode
from eth_hash.auto import keccak
from txfactory import sign_tx

from ogpu_node.contracts.abi import ABI_DIR
from ogpu_node.contracts.addresses import BID, SLASHING, STAKE, TASK
from ogpu_node.execution.calls import CallRequest, call
from ogpu_node.execution.errors import ExecutionReverted
from ogpu_node.execution.state import BlockAttributes, ExecutedBlock
from ogpu_node.types.protocol import Role

ROOT = Path(__file__).resolve().parents[3]
OGPU = 10**18
GWEI = 10**9
ZERO_ADDRESS = b"\x00" * 20
SUCCESS = b"\x01"  # a post-Byzantium receipt's status, as py-evm keeps it in `state_root`
_ERROR_SELECTOR = keccak(b"Error(string)")[:4]


# -- ABI (from abis/<Name>.json) --


def abi_type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + kind[5:]
    return kind


def _to_python(param: dict[str, Any], value: Any) -> Any:
    """eth_abi's decoded value with addresses as 20 bytes and structs as dicts by component name."""
    kind = param["type"]
    if kind == "address":
        return bytes.fromhex(value[2:])
    if kind.startswith("tuple"):
        if kind.endswith("]"):
            inner = dict(param, type=kind[: kind.index("[")])
            return [_to_python(inner, v) for v in value]
        return {c["name"]: _to_python(c, v) for c, v in zip(param["components"], value, strict=True)}
    if kind.endswith("[]"):
        inner = dict(param, type=kind[:-2])
        return [_to_python(inner, v) for v in value]
    return value


def _zero(param: dict[str, Any]) -> Any:
    """A missing struct component's value: zero bytes for a bytesN, 0 otherwise."""
    kind = param["type"]
    return bytes(int(kind[5:])) if kind.startswith("bytes") and kind != "bytes" else 0


def _from_python(param: dict[str, Any], value: Any) -> Any:
    """Accept a struct as a dict by component name (missing components are zero) or as a sequence."""
    kind = param["type"]
    if kind.startswith("tuple") and not kind.endswith("]") and isinstance(value, dict):
        unknown = set(value) - {c["name"] for c in param["components"]}
        if unknown:
            raise KeyError(f"no component(s) {sorted(unknown)} in {param['name']}")
        return tuple(_from_python(c, value.get(c["name"], _zero(c))) for c in param["components"])
    return value


@dataclass(frozen=True)
class Event:
    """A decoded log: the emitting contract's ABI name, the event name and its arguments by name."""

    contract: str
    name: str
    args: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


class ContractAbi:
    def __init__(self, name: str, address: bytes) -> None:
        self.name = name
        self.address = address
        self.raw: list[dict[str, Any]] = json.loads((ABI_DIR / f"{name}.json").read_text())
        self.functions: dict[str, dict[str, Any]] = {}
        self.events: dict[bytes, dict[str, Any]] = {}
        for entry in self.raw:
            if entry["type"] == "function":
                if entry["name"] in self.functions:
                    raise ValueError(f"{name}.{entry['name']} is overloaded; the harness names functions uniquely")
                self.functions[entry["name"]] = entry
            elif entry["type"] == "event":
                signature = f"{entry['name']}({','.join(abi_type(p) for p in entry['inputs'])})"
                self.events[keccak(signature.encode())] = entry

    def function(self, name: str) -> dict[str, Any]:
        try:
            return self.functions[name]
        except KeyError:
            raise KeyError(f"{self.name} has no function {name!r} in its ABI") from None

    def signature(self, name: str) -> str:
        fn = self.function(name)
        return f"{name}({','.join(abi_type(p) for p in fn['inputs'])})"

    def selector(self, name: str) -> bytes:
        return keccak(self.signature(name).encode())[:4]

    def encode_call(self, name: str, *args: Any) -> bytes:
        fn = self.function(name)
        if len(args) != len(fn["inputs"]):
            raise TypeError(f"{self.name}.{name} takes {len(fn['inputs'])} arguments, got {len(args)}")
        values = [_from_python(p, a) for p, a in zip(fn["inputs"], args, strict=True)]
        return self.selector(name) + encode([abi_type(p) for p in fn["inputs"]], values)

    def decode_output(self, name: str, data: bytes) -> Any:
        """A single output as itself, several as a dict by output name."""
        outputs = self.function(name)["outputs"]
        values = decode([abi_type(p) for p in outputs], data)
        converted = [_to_python(p, v) for p, v in zip(outputs, values, strict=True)]
        if len(outputs) == 1:
            return converted[0]
        return {p["name"]: v for p, v in zip(outputs, converted, strict=True)}

    def event_topic(self, name: str) -> bytes:
        for topic, entry in self.events.items():
            if entry["name"] == name:
                return topic
        raise KeyError(f"{self.name} has no event {name!r} in its ABI")

    def event_inputs(self, name: str) -> list[dict[str, Any]]:
        return self.events[self.event_topic(name)]["inputs"]

    def decode_log(self, topics: list[bytes], data: bytes) -> Event:
        entry = self.events[topics[0]]
        indexed = [p for p in entry["inputs"] if p["indexed"]]
        plain = [p for p in entry["inputs"] if not p["indexed"]]
        if len(topics) != 1 + len(indexed):
            raise ValueError(f"{self.name}.{entry['name']}: {len(topics)} topics for {len(indexed)} indexed inputs")
        values: dict[str, Any] = {}
        for param, topic in zip(indexed, topics[1:], strict=True):
            values[param["name"]] = _to_python(param, decode([abi_type(param)], topic)[0])
        for param, value in zip(plain, decode([abi_type(p) for p in plain], data), strict=True):
            values[param["name"]] = _to_python(param, value)
        ordered = {p["name"]: values[p["name"]] for p in entry["inputs"]}
        return Event(self.name, entry["name"], ordered)


STAKE_ABI = ContractAbi("Stake", STAKE)
TASK_ABI = ContractAbi("Task", TASK)
BID_ABI = ContractAbi("Bid", BID)
SLASHING_ABI = ContractAbi("Slashing", SLASHING)
NATIVE = {c.address: c for c in (STAKE_ABI, TASK_ABI, BID_ABI, SLASHING_ABI)}


def revert_reason(output: bytes) -> str | None:
    if output[:4] != _ERROR_SELECTOR:
        return None
    return decode(["string"], output[4:])[0]


def topic_bytes(topic: int | bytes) -> bytes:
    return topic if isinstance(topic, bytes) else topic.to_bytes(32, "big")


def decode_logs(logs: Iterable[tuple[bytes, list[bytes], bytes]]) -> list[Event]:
    """Events of the native contracts among (address, topics, data) triples; other logs are skipped."""
    out = []
    for address, topics, data in logs:
        contract = NATIVE.get(address)
        if contract is not None and topics and topics[0] in contract.events:
            out.append(contract.decode_log(topics, data))
    return out


# -- results --


@dataclass(frozen=True)
class TxResult:
    tx: Any
    receipt: Any
    gas_used: int  # this transaction's own gas (the receipt's is cumulative)
    base_fee: int
    output: bytes
    reason: str | None  # the Error(string) reason when it reverted
    header: Any  # of the block that holds it

    @property
    def ok(self) -> bool:
        return self.receipt.state_root == SUCCESS

    @property
    def fee(self) -> int:
        """What the sender paid: gas × min(max fee, base fee + tip); with the default tip 0 that is
        gas × base fee, all burned."""
        price = min(self.tx.max_fee_per_gas, self.base_fee + self.tx.max_priority_fee_per_gas)
        return self.gas_used * price

    @property
    def logs(self) -> list[tuple[bytes, list[bytes], bytes]]:
        return [(log.address, [topic_bytes(t) for t in log.topics], log.data) for log in self.receipt.logs]

    @property
    def events(self) -> list[Event]:
        return decode_logs(self.logs)


@dataclass(frozen=True)
class BlockResult:
    executed: ExecutedBlock
    txs: list[TxResult]

    @property
    def header(self) -> Any:
        return self.executed.header

    @property
    def number(self) -> int:
        return self.executed.header.block_number

    @property
    def system_logs(self) -> list[tuple[bytes, list[bytes], bytes]]:
        return [(address, [topic_bytes(t) for t in topics], data) for address, topics, data in self.executed.system_logs]

    @property
    def system_events(self) -> list[Event]:
        """Events of the start-of-block system call, in order."""
        return decode_logs(self.system_logs)


# -- the harness --


@dataclass
class _Outcome:
    output: bytes
    is_error: bool


@dataclass
class Harness:
    """Drives one `Chain`: `block(...)` seals the given transactions at a chosen time.

    Blocks default to one second after the head and a mix hash of keccak("mix" ‖ number), distinct per
    block; senders pay tip 0 unless `max_priority_fee_per_gas` says otherwise, and a transaction's cost
    is exactly `TxResult.fee`. Callbacks in `after_block` run after every block (invariant checks).
    """

    chain: Any
    coinbase: bytes = ZERO_ADDRESS
    max_fee_per_gas: int = 10 * GWEI
    max_priority_fee_per_gas: int = 0
    after_block: list[Callable[[BlockResult], None]] = field(default_factory=list)
    blocks: list[BlockResult] = field(default_factory=list)
    _unsealed: dict[bytes, int] = field(default_factory=dict)
    _outcomes: dict[bytes, _Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Record each transaction's computation where the state applies it, whichever VM-level path
        # block building takes; eth_call's spoofed messages are left out.
        outcomes = self._outcomes
        vm_class = self.chain.execution.vm_class
        base_state = vm_class._state_class

        class RecordingState(base_state):  # type: ignore[misc, valid-type]
            def apply_transaction(self, transaction: Any) -> Any:
                computation = super().apply_transaction(transaction)
                if not isinstance(transaction, SpoofTransaction):
                    output = computation.output
                    if computation.is_error and not output and computation.error.args:
                        first = computation.error.args[0]
                        output = first if isinstance(first, bytes) else b""
                    outcomes[transaction.hash] = _Outcome(output, computation.is_error)
                return computation

        RecordingState.__name__ = base_state.__name__
        self.chain.execution.vm_class = vm_class.configure(__name__=vm_class.__name__, _state_class=RecordingState)

    # -- time --

    @property
    def now(self) -> int:
        """The head's timestamp."""
        return self.chain.head.timestamp

    @staticmethod
    def mix_for(number: int) -> bytes:
        return keccak(b"mix" + number.to_bytes(32, "big"))

    # -- transactions --

    def nonce_of(self, address: bytes) -> int:
        return self.chain.account(self.chain.head, address)[0] + self._unsealed.get(address, 0)

    def raw_tx(self, account: Any, to: bytes | None, data: bytes = b"", value: int = 0, gas: int = 2_000_000) -> Any:
        """A signed EIP-1559 transaction with the account's next nonce (counting unsealed ones); `to`
        None or empty creates a contract."""
        nonce = self.nonce_of(account.address)
        self._unsealed[account.address] = self._unsealed.get(account.address, 0) + 1
        return sign_tx(
            account, nonce, to=to or None, value=value, data=data, gas=gas, tip=self.max_priority_fee_per_gas,
            max_fee=self.max_fee_per_gas, chain_id=self.chain.chain_id,
        ).decoded

    def tx(self, account: Any, contract: ContractAbi, function: str, *args: Any, value: int = 0,
           gas: int = 2_000_000) -> Any:
        return self.raw_tx(account, contract.address, contract.encode_call(function, *args), value, gas)

    def transfer(self, account: Any, to: bytes, value: int) -> Any:
        return self.raw_tx(account, to, b"", value, 21_000)

    # -- blocks --

    def block(self, *txs: Any, at: int | None = None, dt: int = 1, mix_hash: bytes | None = None,
              settlement: tuple[tuple[bytes, int], ...] = ()) -> BlockResult:
        """Seal `txs` (all must be includable) at timestamp `at`, or `dt` seconds after the head, with
        the consensus `settlement` its system call applies to Stake."""
        head = self.chain.head
        number = head.block_number + 1
        attrs = BlockAttributes(
            timestamp=head.timestamp + dt if at is None else at,
            coinbase=self.coinbase,
            mix_hash=self.mix_for(number) if mix_hash is None else mix_hash,
            settlement=settlement,
        )
        self._unsealed.clear()
        executed = self.chain.build_block(attrs, list(txs))
        if executed.excluded:
            raise AssertionError(f"transactions left out of block {number}: {[r for _, r in executed.excluded]}")
        results = []
        previous = 0
        for tx, receipt in zip(executed.block.transactions, executed.receipts, strict=True):
            outcome = self._outcomes.pop(tx.hash, None)
            if outcome is None:
                raise AssertionError(f"no recorded outcome for transaction 0x{tx.hash.hex()}: the harness's hook was bypassed")
            reason = revert_reason(outcome.output) if outcome.is_error else None
            results.append(TxResult(
                tx, receipt, receipt.gas_used - previous, executed.header.base_fee_per_gas, outcome.output, reason,
                executed.header,
            ))
            previous = receipt.gas_used
        result = BlockResult(executed, results)
        self.blocks.append(result)
        for check in self.after_block:
            check(result)
        return result

    def send(self, account: Any, contract: ContractAbi, function: str, *args: Any, value: int = 0,
             gas: int = 2_000_000, at: int | None = None, dt: int = 1) -> TxResult:
        """One transaction in a block of its own."""
        [result] = self.block(self.tx(account, contract, function, *args, value=value, gas=gas), at=at, dt=dt).txs
        return result

    def ok(self, account: Any, contract: ContractAbi, function: str, *args: Any, **options: Any) -> TxResult:
        """`send`, asserting success."""
        result = self.send(account, contract, function, *args, **options)
        assert result.ok, f"{contract.name}.{function} reverted: {result.reason}"
        return result

    # -- reads --

    def call(self, to: bytes, data: bytes, sender: bytes = ZERO_ADDRESS, value: int = 0) -> bytes:
        """Raw return data of a call on the head's state, as eth_call; raises ExecutionReverted."""
        request = CallRequest(sender=sender, to=to, value=value, data=data)
        return call(self.chain.execution, self.chain.head, request)

    def view(self, contract: ContractAbi, function: str, *args: Any, sender: bytes = ZERO_ADDRESS) -> Any:
        out = self.call(contract.address, contract.encode_call(function, *args), sender)
        return contract.decode_output(function, out)

    def view_reverts(self, contract: ContractAbi, function: str, *args: Any, sender: bytes = ZERO_ADDRESS) -> str:
        """The reason a call (run on the head's state, as eth_call) reverts with."""
        try:
            self.call(contract.address, contract.encode_call(function, *args), sender)
        except ExecutionReverted as exc:
            return exc.reason
        raise AssertionError(f"{contract.name}.{function} did not revert")

    def balance(self, address: bytes) -> int:
        return self.chain.account(self.chain.head, address)[1]

    # -- common set-ups --

    def make_providers(self, accounts: Iterable[Any], stake: int, memory_mib: int = 8_000,
                       score: int = 10, device_kind: int = 0) -> BlockResult:
        """Stake, register resources and take the provider role, all accounts in one block."""
        txs = []
        for account in accounts:
            txs += [
                self.tx(account, STAKE_ABI, "stake", value=stake),
                self.tx(account, STAKE_ABI, "registerResources", device_kind, memory_mib, score, ""),
                self.tx(account, STAKE_ABI, "setRoles", Role.PROVIDER),
            ]
        block = self.block(*txs)
        failed = [r.reason for r in block.txs if not r.ok]
        assert not failed, failed
        return block

    # -- money invariants (DESIGN.md §3) --

    def stake_liabilities(self, accounts: Iterable[Any]) -> int:
        """Σ staked + Σ unbonding over `accounts` (every account that ever staked)."""
        total = 0
        for account in accounts:
            entry = self.view(STAKE_ABI, "stakeOf", account.address)
            total += entry["staked"] + entry["unbonding"]
        return total

    def task_liabilities(self) -> int:
        """Σ escrow + deposit over every task (a settled or cancelled task holds none)."""
        count = self.view(TASK_ABI, "taskCount")
        total = 0
        for task_id in range(1, count + 1):
            task = self.view(TASK_ABI, "getTask", task_id)
            total += task["escrow"] + task["deposit"]
        return total
