"""Blobs over HTTP beside the JSON-RPC (PUT/GET/HEAD /blobs/<hash>): a real node process, plus an
in-process server for the size cap (the node's cap is 1 GiB). Uploads are signed (tests/blobput.py)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import trio

from ogpu_node.blobs import CHUNK_SIZE, BlobLedger, BlobStore, UploadGate, merkle_root
from ogpu_node.crypto.blob_auth import sign_upload
from ogpu_node.rpc.blobs_http import BlobRoutes
from ogpu_node.rpc.server import HttpServer
from tests.blobput import DEV_CHAIN_ID, FUNDED, blob_path, upload_headers

DATA = bytes((i * 7 + 3) % 256 for i in range(3 * CHUNK_SIZE + 1234))  # four chunks, the last short
DATA_HASH = "0x" + merkle_root(DATA).hex()


def connect(url: str) -> http.client.HTTPConnection:
    parsed = urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)


def request(conn, method, path, body=None, headers=None, chunked=False):
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def put(conn, data: bytes, **headers: str):
    return request(conn, "PUT", blob_path(data), data, upload_headers(data, **headers))


def pieces(data: bytes, size: int = 100_000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def rpc(conn, method, params=()):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    status, _, reply = request(conn, "POST", "/", body, {"content-type": "application/json"})
    assert status == 200
    return json.loads(reply)["result"]


def bare_server(store: BlobStore, tmp_path, handler) -> HttpServer:
    """An HTTP server with blob routes over ``store``, every uploader funded (the rules are tested in
    test_blob_uploads.py)."""
    gate = UploadGate(store, BlobLedger(tmp_path / "ledger"), DEV_CHAIN_ID, lambda address: (10**18, 0))
    return HttpServer(handler, "127.0.0.1", 0, blobs=BlobRoutes(gate, 5 << 20, 120.0))


@pytest.mark.slow
def test_blob_round_trip_and_rpc_on_one_connection(dev_node):
    conn = connect(dev_node.http_url)
    assert rpc(conn, "eth_chainId") == "0x539"

    # unknown blob
    assert request(conn, "GET", f"/blobs/{DATA_HASH}")[0] == 404
    status, headers, body = request(conn, "HEAD", f"/blobs/{DATA_HASH}")
    assert (status, body) == (404, b"")

    # a signed PUT declares its length: chunked is refused before any of it is read
    status, _, body = request(conn, "PUT", f"/blobs/{DATA_HASH}", pieces(DATA), upload_headers(DATA), chunked=True)
    assert status == 411 and "Content-Length" in json.loads(body)["error"]
    conn = connect(dev_node.http_url)
    # created, then idempotent
    status, headers, body = put(conn, DATA)
    assert status == 201, body
    assert json.loads(body) == {"hash": DATA_HASH, "size": len(DATA)}
    assert headers["location"] == f"/blobs/{DATA_HASH}"
    status, _, body = put(conn, DATA)
    assert status == 200 and json.loads(body)["hash"] == DATA_HASH

    # GET streams it back with its length; HEAD gives the size only
    status, headers, body = request(conn, "GET", f"/blobs/{DATA_HASH}")
    assert status == 200 and body == DATA
    assert int(headers["content-length"]) == len(DATA)
    assert headers["content-type"] == "application/octet-stream"
    status, headers, body = request(conn, "HEAD", f"/blobs/{DATA_HASH.upper().replace('0X', '0x')}")
    assert (status, body, int(headers["content-length"])) == (200, b"", len(DATA))

    # the JSON-RPC still answers on this same keep-alive connection
    assert rpc(conn, "eth_blockNumber") == "0x0"

    # PUT without a hash: refused, as the signature names the blob
    other = DATA[::-1]
    status, _, body = request(conn, "PUT", "/blobs", other, upload_headers(other))
    assert status == 400 and "PUT /blobs/0x<hash>" in json.loads(body)["error"]
    conn.close()


@pytest.mark.slow
def test_bad_uploads_rejected(dev_node):
    conn = connect(dev_node.http_url)
    for bad_body in (DATA[:-1], DATA[:-1] + b"\x00"):  # truncated, altered
        signed = {"Authorization": sign_upload(FUNDED, DEV_CHAIN_ID, merkle_root(DATA), len(bad_body))}
        status, _, body = request(conn, "PUT", f"/blobs/{DATA_HASH}", bad_body, signed)
        assert status == 400
        error = json.loads(body)
        assert error["error"] == "hash mismatch"
        assert error["expected"] == DATA_HASH and error["actual"] == "0x" + merkle_root(bad_body).hex()
    # malformed hashes and unknown paths
    for path, code in (("/blobs/0x1234", 400), ("/blobs/xyz", 400), ("/blobs/0x" + "00" * 32 + "/more", 404)):
        status, _, body = request(conn, "GET", path)
        assert status == code and "error" in json.loads(body)
    assert request(conn, "DELETE", f"/blobs/{DATA_HASH}")[0] == 405
    conn = connect(dev_node.http_url)  # 405 on an unread body may close the connection
    assert request(conn, "HEAD", f"/blobs/{DATA_HASH}")[0] == 404
    assert rpc(conn, "eth_chainId") == "0x539"

    # a client that declares the length and then disconnects halfway stores nothing
    parsed = urlparse(dev_node.http_url)
    with socket.create_connection((parsed.hostname, parsed.port)) as sock:
        auth = upload_headers(DATA)["Authorization"]
        sock.sendall(
            f"PUT /blobs/{DATA_HASH} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n"
            f"content-length: {len(DATA)}\r\n\r\n".encode()
            + DATA[: len(DATA) // 2]
        )
    conn = connect(dev_node.http_url)
    assert request(conn, "HEAD", f"/blobs/{DATA_HASH}")[0] == 404
    blobs_dir = dev_node.datadir / "blobs"

    def leftovers() -> list:
        return [p for p in blobs_dir.rglob("*") if p.is_file() and "ledger" not in p.parts]

    for _ in range(50):  # the server notices the disconnect asynchronously
        if not leftovers():
            break
        time.sleep(0.05)
    assert leftovers() == []


async def test_size_cap_in_process(tmp_path):
    store = BlobStore(tmp_path / "blobs", max_bytes=1000)

    async def handler(body, session):
        return b'{"jsonrpc":"2.0","id":1,"result":"ok"}'

    server = bare_server(store, tmp_path, handler)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)

        def client() -> None:
            url = f"http://127.0.0.1:{port}"
            conn = connect(url)
            assert put(conn, b"x" * 1000)[0] == 201  # the cap itself fits
            status, _, body = put(conn, b"x" * 1001)  # declared length
            assert status == 413 and json.loads(body)["max_bytes"] == 1000
            conn = connect(url)
            assert request(conn, "POST", "/", b"{}")[2] == b'{"jsonrpc":"2.0","id":1,"result":"ok"}'
            assert request(conn, "GET", "/")[0] == 200  # health check unchanged

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert stored_files(store) == [merkle_root(b"x" * 1000).hex()]


async def test_storage_failure_is_500_and_server_goes_on(tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "blobs")

    def disk_full(expected_hash=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "writer", disk_full)

    async def handler(body, session):
        return b'{"ok":true}'

    server = bare_server(store, tmp_path, handler)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)

        def client() -> None:
            status, _, body = put(connect(f"http://127.0.0.1:{port}"), b"abc")
            assert status == 500 and json.loads(body) == {"error": "blob storage failed"}
            assert request(connect(f"http://127.0.0.1:{port}"), "POST", "/", b"{}")[2] == b'{"ok":true}'

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()


async def test_uploads_below_the_free_disk_floor_are_refused_reads_go_on(tmp_path):
    """Rule: an upload that would leave less free disk than --blob.min-free gets 507 and stores nothing;
    stored blobs and RPC are still served; uploads resume once there is room again."""
    store = BlobStore(tmp_path / "blobs", min_free_bytes=0)
    kept, _ = store.put(b"kept")

    async def handler(body, session):
        return b'{"ok":true}'

    server = bare_server(store, tmp_path, handler)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        url = f"http://127.0.0.1:{port}"

        def client() -> None:
            store.min_free_bytes = shutil.disk_usage(tmp_path).free + (1 << 40)  # the disk is "full"
            status, _, body = put(connect(url), b"abc")
            assert status == 507 and json.loads(body)["min_free"] == store.min_free_bytes
            assert request(connect(url), "GET", f"/blobs/0x{kept.hex()}")[2] == b"kept"
            assert request(connect(url), "POST", "/", b"{}")[2] == b'{"ok":true}'
            store.min_free_bytes = 0  # space returns
            assert put(connect(url), b"abc")[0] == 201

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert stored_files(store) == sorted([kept.hex(), merkle_root(b"abc").hex()])


def stored_files(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*") if p.is_file() and "ledger" not in p.parts)


def wait_until(what: str, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_uploads_are_signed_charged_and_freed_when_a_task_references_them(node_factory):
    """Rule: an anonymous or unfunded upload is refused; a funded account's pending bytes count against
    its quota until a block references them: the prescription of a submitted task, and the dataset that
    prescription names."""
    from ogpu_node.apps.client import Client, UploadRefused
    from ogpu_node.types.prescription import Prescription, prescription_hash, to_terms
    from ogpu_node.types.protocol import TaskKind
    from tests.blobput import UNFUNDED

    node = node_factory("--blob.quota", str(16 * 4096))
    conn = connect(node.http_url)
    status, _, body = request(conn, "PUT", blob_path(b"anon"), b"anon", {"Content-Type": "application/octet-stream"})
    assert status == 401 and "must be signed" in json.loads(body)["error"]
    status, _, body = put(connect(node.http_url), b"poor", key=UNFUNDED)
    assert status == 403 and json.loads(body) == {
        "error": f"account 0x{UNFUNDED.address.hex()} may not upload blobs: it has no stake and holds 0 wei, "
                 f"less than the {10**18} wei uploads need",
        "account": "0x" + UNFUNDED.address.hex(), "balance": 0, "min_balance": 10**18}
    assert request(connect(node.http_url), "HEAD", blob_path(b"poor"))[0] == 404

    client = Client(node.http_url, FUNDED.private_key)
    dataset = bytes(range(256)) * 160  # 40,960 bytes: 10 units of the 16
    doc = json.loads((Path(__file__).parents[2] / "examples" / "mlp-exact.json").read_text())
    doc["D"]["blob"] = "0x" + client.upload_bytes("dataset", dataset)[0].hex()
    p = Prescription.from_json(doc)
    client.upload_bytes("prescription", p.canonical_json())  # 1 unit
    extra = b"e" * 6 * 4096
    with pytest.raises(UploadRefused, match=r"refused \(429\): upload quota of .* exceeded: 45056 bytes"):
        client.upload_bytes("extra", extra)

    call = client.task.functions.submitTask(prescription_hash(p), int(TaskKind.BATCH), to_terms(p))
    client.send("submitTask", call, value=p.I.max_payment + client.minimum_deposit(p))

    def extra_fits() -> bool:
        try:
            client.upload_bytes("extra", extra)
        except UploadRefused:
            return False
        return True

    wait_until("the referenced blobs to leave the quota", extra_fits)
    assert client.fetch_blob(merkle_root(dataset)) == dataset


@pytest.mark.slow
def test_blobs_no_task_references_expire(node_factory):
    from ogpu_node.apps.client import Client

    node = node_factory("--blob.ttl", "1s", "--blob.quota", "4096")
    client = Client(node.http_url, FUNDED.private_key)
    first, _ = client.upload_bytes("first", b"first")
    assert request(connect(node.http_url), "HEAD", f"/blobs/0x{first.hex()}")[0] == 200
    wait_until("the blob to expire",
               lambda: request(connect(node.http_url), "HEAD", f"/blobs/0x{first.hex()}")[0] == 404)
    client.upload_bytes("second", b"second")  # the expired blob's quota is free again
    assert "expired 1 blobs no task referenced within 1 s" in node.log()
