"""A provider fed every malformed task document keeps bidding (issue 10, "Must show").

One trio run holds a dev node (`ogpu_node.node.Node`, on 127.0.0.1) and the provider service
(`Provider.run`); a client (`Client`, signed uploads) submits one task per document of the corpus in
tests/malformed_documents.py — prescriptions that are not JSON, nest 100,000 deep, exceed 1 MiB or
have the wrong schema, ranges or model; datasets and initial weights that are truncated, lie in
their safetensors header, nest 100,000 deep, have the wrong tensors, shapes or dtypes, are missing,
or do not hash to their name — and then one good task. The provider must log each bad task once
with its id and skip it, bid on the good one, and still be running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import trio

from ogpu_node.apps.client import Client
from ogpu_node.apps.provider import Provider, ProviderConfig
from ogpu_node.config import DEV_GENESIS, load_genesis
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.node.node import Node, NodeConfig
from ogpu_node.types.merkle import merkle_root
from ogpu_node.types.prescription import Prescription, to_terms
from ogpu_node.types.protocol import TaskKind
from tests.malformed_documents import (
    GOOD,
    bad_datasets,
    bad_prescriptions,
    bad_weights,
    edit,
    good_dataset,
)

pytestmark = pytest.mark.timeout(300)
MAX_PAYMENT = 10**16


def hexhash(data: bytes) -> str:
    return "0x" + merkle_root(data).hex()


class Submitter:
    """The client side: each document uploaded with the client's signature, each task submitted
    with the good prescription's terms (the chain never reads the document itself)."""

    def __init__(self, client: Client, node: Node) -> None:
        self.client, self.node = client, node
        good = Prescription.from_json(edit(GOOD, "I.max_payment", str(MAX_PAYMENT)))
        self.terms = to_terms(good)
        self.value = MAX_PAYMENT + client.minimum_deposit(good)
        self.dataset = self.upload(good_dataset())

    def upload(self, data: bytes) -> str:
        return "0x" + self.client.upload_bytes("a document", data)[0].hex()

    def submit(self, prescription: bytes) -> int:
        blob = self.client.upload_bytes("the prescription", prescription)[0]
        call = self.client.task.functions.submitTask(blob, int(TaskKind.BATCH), self.terms)
        receipt = self.client.send("submitTask", call, value=self.value)
        return int(self.client.task.events.TaskSubmitted().process_receipt(receipt)[0]["args"]["taskId"])

    def doc(self, **fields: Any) -> dict[str, Any]:
        doc = edit(edit(GOOD, "I.max_payment", str(MAX_PAYMENT)), "D.blob", self.dataset)
        for path, value in fields.items():
            doc = edit(doc, path.replace("__", "."), value)
        return doc

    def submit_doc(self, **fields: Any) -> int:
        return self.submit(json.dumps(self.doc(**fields)).encode())

    def submit_bad(self) -> dict[str, int]:
        """Every bad document as a task of its own, several submissions at once (the client's
        transactions are safe from several threads), so that blocks carry several."""
        jobs: dict[str, Callable[[], int]] = {
            f"prescription {name}": partial(self.submit, data) for name, data in bad_prescriptions(self.doc()).items()
        }
        for name, data in bad_datasets().items():
            jobs[f"dataset {name}"] = lambda data=data: self.submit_doc(D__blob=self.upload(data))
        for name, data in bad_weights().items():
            jobs[f"weights {name}"] = lambda data=data: self.submit_doc(M__initial_weights=self.upload(data))
        never_uploaded = hexhash(b"never uploaded")
        jobs["dataset missing"] = partial(self.submit_doc, D__blob=never_uploaded)
        jobs["weights missing"] = partial(self.submit_doc, M__initial_weights=never_uploaded)
        jobs["prescription missing"] = self._submit_missing_prescription
        jobs["dataset not hashing to its name"] = lambda: self.submit_doc(D__blob=self._corrupted(good_dataset()[::-1]))
        with ThreadPoolExecutor(8) as pool:
            futures = {name: pool.submit(job) for name, job in jobs.items()}
            return {name: future.result() for name, future in futures.items()}

    def submit_costly_floor(self) -> int:
        """The good documents, on a task whose on-chain maxPayment makes its collateral floor (a quarter
        of it) larger than the provider's whole stake: no bid can lock that."""
        max_payment = 1_000 * 10**18
        terms = (max_payment, *self.terms[1:])
        blob = self.client.upload_bytes("the prescription", json.dumps(self.doc()).encode())[0]
        call = self.client.task.functions.submitTask(blob, int(TaskKind.BATCH), terms)
        receipt = self.client.send("submitTask", call, value=max_payment + self.client.views.minimum_deposit(max_payment))
        return int(self.client.task.events.TaskSubmitted().process_receipt(receipt)[0]["args"]["taskId"])

    def _submit_missing_prescription(self) -> int:
        call = self.client.task.functions.submitTask(merkle_root(b"no such prescription"), int(TaskKind.BATCH),
                                                     self.terms)
        receipt = self.client.send("submitTask", call, value=self.value)
        return int(self.client.task.events.TaskSubmitted().process_receipt(receipt)[0]["args"]["taskId"])

    def _corrupted(self, data: bytes) -> str:
        """Upload ``data``, then change one byte of the node's copy: the node serves bytes that do not
        hash to the name the prescription gives."""
        blob = self.upload(data)
        path = self.node.blobs.path_of(bytes.fromhex(blob[2:]))
        stored = bytearray(path.read_bytes())
        stored[-1] ^= 0xFF
        path.write_bytes(bytes(stored))
        return blob


async def test_a_provider_skips_every_malformed_task_and_bids_on_a_good_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ogpu.provider")
    accounts = derive_dev_accounts(3)
    provider_key, client_key = accounts[1].private_key, accounts[2].private_key
    config = NodeConfig(datadir=tmp_path / "node", genesis=load_genesis(DEV_GENESIS), signer=accounts[0],
                        http_port=0, ws_port=None, durable=False)
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config).run)
        url = f"http://127.0.0.1:{node.http_port}"
        provider = Provider(ProviderConfig(rpc_url=url, private_key=provider_key, datadir=tmp_path / "provider",
                                           poll_s=0.1))
        ended = trio.Event()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await provider.run(task_status=task_status)
            finally:
                ended.set()

        await nursery.start(serve)
        client = Client(url, client_key)
        submitter = await trio.to_thread.run_sync(Submitter, client, node)
        bad = await trio.to_thread.run_sync(submitter.submit_bad)
        good = await trio.to_thread.run_sync(submitter.submit_doc)

        def lines(task_id: int) -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "ogpu.provider"
                    and r.getMessage().startswith(f"task {task_id}:")]

        def bid_logged() -> bool:  # the service logs its bid once the receipt is in
            return any(r.getMessage().startswith(f"task {good}: bid ") for r in lines(good))

        with trio.fail_after(120):
            while not (all(lines(t) for t in bad.values()) and bid_logged()):
                assert not ended.is_set(), "the provider service ended"
                await trio.sleep(0.2)
        provider.core.max_jobs += 1  # a slot for the next task beside the good one's pending bid
        costly = await trio.to_thread.run_sync(submitter.submit_costly_floor)
        with trio.fail_after(60):
            while not lines(costly):
                await trio.sleep(0.2)
        assert not ended.is_set()
        assert provider.chain.address in (await trio.to_thread.run_sync(client.views.bids, good)).providers
        assert provider.core is not None and provider.core.bids == {good: provider.core.bids[good]}
        nursery.cancel_scope.cancel()

    # Each bad task: one warning naming the task and why it was skipped — or, for a dataset the anomaly
    # agents flag (docs/tasks.md, "Anomaly agents"), a warning per flag, then "not bidding"; no bid.
    flagged = 0
    for name, task_id in bad.items():
        logged = lines(task_id)
        messages = [r.getMessage() for r in logged]
        *flags, last = logged
        assert "not bidding: " in last.getMessage(), (name, messages)
        if flags:
            flagged += 1
            assert name.startswith("dataset"), (name, messages)
            assert all(r.levelno == logging.WARNING and f"task {task_id}: anomaly: dataset " in r.getMessage()
                       for r in flags), (name, messages)
            assert last.getMessage().endswith(f"{len(flags)} anomaly flag(s)"), (name, messages)
        else:
            assert last.levelno == logging.WARNING, (name, messages)
    assert flagged > 0
    [refused] = lines(costly)
    assert "not bidding: its collateral of 250000000000000000000 wei exceeds this provider's free stake" in (
        refused.getMessage())
    assert not [r for r in caplog.records if r.name == "ogpu.provider" and r.exc_info], "an unexpected exception"
    assert len(bad) == len(set(bad.values())) > 70
