"""The upload rules (docs/rpc.md, "Blobs"): a signature over (chain id, hash, size) by a staked or funded
account, a quota per account and a node-wide cap on blobs no task references, expiry; and the ledger
that keeps them across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ogpu_node.blobs import (
    BlobKeeper,
    BlobLedger,
    BlobStore,
    UploadGate,
    UploadLimits,
    UploadRefused,
    charge_of,
    merkle_root,
)
from ogpu_node.blobs.ledger import OTHER, PRESCRIPTION
from ogpu_node.crypto import Keypair
from ogpu_node.crypto.blob_auth import sign_upload
from tests.blobput import DEV_CHAIN_ID

FUNDED = Keypair.from_private_key(b"\x01" * 32)
STAKED = Keypair.from_private_key(b"\x02" * 32)  # no balance at all, but a stake
POOR = Keypair.from_private_key(b"\x03" * 32)
STANDING = {FUNDED.address: (10**18, 0), STAKED.address: (0, 5), POOR.address: (10**18 - 1, 0)}
KIB4 = 4096
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def gate(tmp_path):
    def make(**limits) -> UploadGate:
        store = BlobStore(tmp_path / "blobs", min_free_bytes=0)
        ledger = BlobLedger(tmp_path / "blobs" / "ledger")
        return UploadGate(store, ledger, DEV_CHAIN_ID, lambda a: STANDING.get(a, (0, 0)), UploadLimits(**limits))

    return make


def upload(gate: UploadGate, data: bytes, key: Keypair = FUNDED) -> bool:
    """The whole upload as the HTTP route does it: admit, write, commit; whether a file was created."""
    ticket = gate.admit(merkle_root(data), len(data), sign_upload(key, DEV_CHAIN_ID, merkle_root(data), len(data)))
    try:
        with gate.store.writer(merkle_root(data)) as writer:
            writer.write(data)
            _, _, created = gate.commit(writer, ticket)
        gate.stored(merkle_root(data)) if created else None
        return created
    finally:
        gate.release(ticket)


def refusal(fn, *args) -> UploadRefused:
    with pytest.raises(UploadRefused) as info:
        fn(*args)
    return info.value


def test_only_signed_uploads_by_staked_or_funded_accounts_are_admitted(gate):
    g = gate()
    data = b"a" * 100
    h = merkle_root(data)
    assert refusal(g.admit, h, 100, None).status == 401
    assert refusal(g.admit, h, 100, "Bearer 0x00").status == 401
    assert "not hex" in str(refusal(g.admit, h, 100, "OGPU-Blob 0xzz"))
    assert refusal(g.admit, h, 100, "OGPU-Blob 0x" + "00" * 65).status == 401
    poor = refusal(g.admit, h, 100, sign_upload(POOR, DEV_CHAIN_ID, h, 100))
    assert poor.status == 403 and poor.details["balance"] == 10**18 - 1
    assert f"account 0x{POOR.address.hex()} may not upload blobs" in str(poor)
    # the signature binds the size and the chain: another size or chain recovers someone unfunded
    assert refusal(g.admit, h, 101, sign_upload(FUNDED, DEV_CHAIN_ID, h, 100)).status == 403
    assert refusal(g.admit, h, 100, sign_upload(FUNDED, DEV_CHAIN_ID + 1, h, 100)).status == 403
    assert upload(g, data, STAKED) and upload(g, b"b" * 10, FUNDED)
    assert g.store.read(h) == data


def test_quota_per_account_and_node_cap_count_pending_bytes_rounded_to_4_kib(gate):
    g = gate(quota=3 * KIB4, pending_max=4 * KIB4)
    assert charge_of(0) == charge_of(1) == KIB4 and charge_of(KIB4 + 1) == 2 * KIB4
    for i in range(3):
        assert upload(g, bytes([i]))  # one byte each, charged 4 KiB
    assert g.ledger.pending_of(FUNDED.address) == 3 * KIB4
    over = refusal(upload, g, b"x")
    assert over.status == 429 and over.details == {
        "account": "0x" + FUNDED.address.hex(), "pending": 3 * KIB4, "quota": 3 * KIB4}
    assert not upload(g, bytes([0]))  # stored already: admitted, costs nothing
    assert upload(g, b"y", STAKED)
    node_full = refusal(upload, g, b"z", STAKED)
    assert node_full.status == 507 and node_full.details["pending_max"] == 4 * KIB4
    assert g.ledger.pending_total == 4 * KIB4  # refusals and failed uploads hold nothing


def test_a_failed_upload_gives_its_reservation_back(gate):
    g = gate(quota=KIB4)
    data = b"q" * 10
    ticket = g.admit(merkle_root(data), 10, sign_upload(FUNDED, DEV_CHAIN_ID, merkle_root(data), 10))
    assert refusal(g.admit, merkle_root(b"r"), 1, sign_upload(FUNDED, DEV_CHAIN_ID, merkle_root(b"r"), 1)).status == 429
    g.release(ticket)  # the body never came
    g.release(ticket)  # idempotent
    assert g.ledger.pending_of(FUNDED.address) == 0
    assert upload(g, data)


def test_references_free_quota_and_survive_restarts(gate, tmp_path):
    g = gate(quota=2 * KIB4)
    dataset, weights = b"d" * 5000, b"w" * 10
    doc = json.loads((ROOT / "examples" / "mlp-exact.json").read_text())
    doc["D"]["blob"] = "0x" + merkle_root(dataset).hex()
    prescription = json.dumps(doc).encode()
    assert upload(g, dataset)  # 2 units: the quota is used up
    assert refusal(upload, g, weights).status == 429
    # a block references the prescription before it reaches this node; its upload costs nothing and
    # references the dataset it names
    assert g.ledger.reference([(merkle_root(prescription), PRESCRIPTION)], scanned=(7, b"\7" * 32)) == [merkle_root(prescription)]
    assert upload(g, prescription)
    assert g.ledger.kind(merkle_root(dataset)) == OTHER
    assert g.ledger.pending_of(FUNDED.address) == 0
    assert upload(g, weights)
    g.ledger.close()
    reopened = BlobLedger(tmp_path / "blobs" / "ledger")
    assert reopened.scanned == (7, b"\7" * 32)
    assert reopened.pending_of(FUNDED.address) == KIB4 == reopened.pending_total
    assert [p.blob_hash for p in reopened.expired(uploaded_before=2**40)] == [merkle_root(weights)]


def test_expiry_deletes_only_blobs_no_block_referenced(gate, chain):
    g = gate(ttl_s=60.0)
    assert upload(g, b"kept") and upload(g, b"dropped")
    g.ledger.reference([(merkle_root(b"kept"), OTHER)])
    keeper = BlobKeeper(chain, g.store, g.ledger, ttl_s=60.0)
    uploaded = max(p.uploaded_at for p in g.ledger.expired(uploaded_before=2**40))
    assert keeper.sweep(now=uploaded + 30) == []  # not yet
    assert keeper.sweep(now=uploaded + 61) == [merkle_root(b"dropped")]
    assert g.store.has(merkle_root(b"kept")) and not g.store.has(merkle_root(b"dropped"))
    assert g.ledger.pending_total == 0
    assert g.ledger.scanned == (chain.head.block_number, chain.head.hash)  # the sweep caught up first
