"""Blob uploads with a progress callback, against a local HTTP server standing in for the node's blob
endpoint: the file streams whole, with its Content-Length, signed by the client's key, and the callback
sees every byte."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ogpu_node.apps.client import BlobNotFound, Client, KeyRequired, UploadRefused
from ogpu_node.crypto import derive_dev_accounts
from ogpu_node.crypto.blob_auth import upload_signer
from ogpu_node.types.merkle import CHUNK_SIZE, merkle_root

CHAIN_ID = 1337
KEY = derive_dev_accounts(1)[0]


class BlobNode(BaseHTTPRequestHandler):
    stored: dict[str, bytes] = {}

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        name = self.path.removeprefix("/blobs/")
        if name != "0x" + merkle_root(body).hex():
            return self._answer(400, {"error": "hash mismatch"})
        signer = upload_signer(self.headers["Authorization"], CHAIN_ID, merkle_root(body), len(body))
        if signer != KEY.address:
            return self._answer(401, {"error": "bad upload signature"})
        self.stored[name] = body
        self._answer(201, {"hash": name, "size": len(body)})

    def do_POST(self) -> None:  # noqa: N802 (eth_chainId, which the client signs uploads with)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert request["method"] == "eth_chainId"
        self._answer(200, {"jsonrpc": "2.0", "id": request["id"], "result": hex(CHAIN_ID)})

    def do_GET(self) -> None:  # noqa: N802
        self._answer(404, {"error": "not found"})

    def _answer(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BlobNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_upload_blob_reports_progress_and_streams_the_whole_file(node_url, tmp_path):
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 5)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    seen: list[int] = []
    blob_hash, size = Client(node_url, KEY.private_key).upload_blob(path, progress=seen.append)
    assert (blob_hash, size) == (merkle_root(data), len(data))
    assert BlobNode.stored["0x" + blob_hash.hex()] == data
    assert seen and seen == sorted(seen) and seen[-1] == len(data)


def test_refusals_are_typed(node_url, tmp_path):
    with pytest.raises(KeyRequired, match="a key is needed to upload blobs"):
        Client(node_url).upload_bytes("x", b"y")
    client = Client(node_url, KEY.private_key)
    with pytest.raises(BlobNotFound, match=f"blob 0x{'ab' * 32} is not on the node at {node_url}"):
        client.fetch_blob(b"\xab" * 32)
    with pytest.raises(UploadRefused, match=r"upload of x refused \(400\): hash mismatch"):
        client.blobs._check_upload("x", b"\0" * 32, 1, client.blobs._put(b"\0" * 32, "", b"y"))
