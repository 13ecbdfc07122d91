"""Blobs over HTTP beside the JSON-RPC (PUT/GET/HEAD /blobs/<hash>): a real node process, plus an
in-process server for the size cap (the node's cap is 1 GiB)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import time
from urllib.parse import urlparse

import pytest
import trio

from ogpu_node.blobs import CHUNK_SIZE, BlobStore, merkle_root
from ogpu_node.rpc.server import HttpServer

DATA = bytes((i * 7 + 3) % 256 for i in range(3 * CHUNK_SIZE + 1234))  # four chunks, the last short
DATA_HASH = "0x" + merkle_root(DATA).hex()


def connect(url: str) -> http.client.HTTPConnection:
    parsed = urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)


def request(conn, method, path, body=None, headers=None, chunked=False):
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def pieces(data: bytes, size: int = 100_000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def rpc(conn, method, params=()):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    status, _, reply = request(conn, "POST", "/", body, {"content-type": "application/json"})
    assert status == 200
    return json.loads(reply)["result"]


@pytest.mark.slow
def test_blob_round_trip_and_rpc_on_one_connection(dev_node):
    conn = connect(dev_node.http_url)
    assert rpc(conn, "eth_chainId") == "0x539"

    # unknown blob
    assert request(conn, "GET", f"/blobs/{DATA_HASH}")[0] == 404
    status, headers, body = request(conn, "HEAD", f"/blobs/{DATA_HASH}")
    assert (status, body) == (404, b"")

    # PUT with the hash, streamed chunked: created, then idempotent
    status, headers, body = request(conn, "PUT", f"/blobs/{DATA_HASH}", pieces(DATA), chunked=True)
    assert status == 201, body
    assert json.loads(body) == {"hash": DATA_HASH, "size": len(DATA)}
    status, _, body = request(conn, "PUT", f"/blobs/{DATA_HASH}", DATA)  # Content-Length
    assert status == 200 and json.loads(body)["hash"] == DATA_HASH

    # GET streams it back with its length; HEAD gives the size only
    status, headers, body = request(conn, "GET", f"/blobs/{DATA_HASH}")
    assert status == 200 and body == DATA
    assert int(headers["content-length"]) == len(DATA)
    assert headers["content-type"] == "application/octet-stream"
    status, headers, body = request(conn, "HEAD", f"/blobs/{DATA_HASH.upper().replace('0X', '0x')}")
    assert (status, body, int(headers["content-length"])) == (200, b"", len(DATA))

    # PUT without a hash: the node names the blob
    other = DATA[::-1]
    status, headers, body = request(conn, "PUT", "/blobs", other)
    assert status == 201
    reply = json.loads(body)
    assert reply == {"hash": "0x" + merkle_root(other).hex(), "size": len(other)}
    assert headers["location"] == "/blobs/" + reply["hash"]
    assert request(conn, "GET", f"/blobs/{reply['hash']}")[2] == other

    # the JSON-RPC still answers on this same keep-alive connection
    assert rpc(conn, "eth_blockNumber") == "0x0"
    conn.close()


@pytest.mark.slow
def test_bad_uploads_rejected(dev_node):
    conn = connect(dev_node.http_url)
    for bad_body in (DATA[:-1], DATA[:-1] + b"\x00"):  # truncated, altered
        status, _, body = request(conn, "PUT", f"/blobs/{DATA_HASH}", bad_body)
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
        sock.sendall(
            f"PUT /blobs/{DATA_HASH} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(DATA)}\r\n\r\n".encode()
            + DATA[: len(DATA) // 2]
        )
    conn = connect(dev_node.http_url)
    assert request(conn, "HEAD", f"/blobs/{DATA_HASH}")[0] == 404
    blobs_dir = dev_node.datadir / "blobs"
    leftovers = [p for p in blobs_dir.rglob("*") if p.is_file()]
    for _ in range(50):  # the server notices the disconnect asynchronously
        if not leftovers:
            break
        time.sleep(0.05)
        leftovers = [p for p in blobs_dir.rglob("*") if p.is_file()]
    assert leftovers == []


async def test_size_cap_in_process(tmp_path):
    store = BlobStore(tmp_path / "blobs", max_bytes=1000)

    async def handler(body, session):
        return b'{"jsonrpc":"2.0","id":1,"result":"ok"}'

    server = HttpServer(handler, "127.0.0.1", 0, blob_routes=store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)

        def client() -> None:
            url = f"http://127.0.0.1:{port}"
            conn = connect(url)
            assert request(conn, "PUT", "/blobs", b"x" * 1000)[0] == 201  # the cap itself fits
            status, _, body = request(conn, "PUT", "/blobs", b"x" * 1001)  # declared length
            assert status == 413 and json.loads(body)["max_bytes"] == 1000
            conn = connect(url)
            status, _, body = request(conn, "PUT", "/blobs", pieces(b"y" * 5000, 300), chunked=True)
            assert status == 413
            conn = connect(url)
            assert request(conn, "POST", "/", b"{}")[2] == b'{"jsonrpc":"2.0","id":1,"result":"ok"}'
            assert request(conn, "GET", "/")[0] == 200  # health check unchanged

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == [merkle_root(b"x" * 1000).hex()]


async def test_storage_failure_is_500_and_server_goes_on(tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "blobs")

    def disk_full(expected_hash=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "writer", disk_full)

    async def handler(body, session):
        return b'{"ok":true}'

    server = HttpServer(handler, "127.0.0.1", 0, blob_routes=store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)

        def client() -> None:
            status, _, body = request(connect(f"http://127.0.0.1:{port}"), "PUT", "/blobs", b"abc")
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

    server = HttpServer(handler, "127.0.0.1", 0, blob_routes=store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        url = f"http://127.0.0.1:{port}"

        def client() -> None:
            store.min_free_bytes = shutil.disk_usage(tmp_path).free + (1 << 40)  # the disk is "full"
            status, _, body = request(connect(url), "PUT", "/blobs", b"abc")
            assert status == 507 and json.loads(body)["min_free"] == store.min_free_bytes
            assert request(connect(url), "GET", f"/blobs/0x{kept.hex()}")[2] == b"kept"
            assert request(connect(url), "POST", "/", b"{}")[2] == b'{"ok":true}'
            store.min_free_bytes = 0  # space returns
            assert request(connect(url), "PUT", "/blobs", b"abc")[0] == 201

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert sorted(p.name for p in store.root.rglob("*") if p.is_file()) == sorted(
        [kept.hex(), merkle_root(b"abc").hex()])
